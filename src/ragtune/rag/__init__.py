"""The RAG chain: retrieve -> augment -> generate, each step visible in the ``Answer``."""

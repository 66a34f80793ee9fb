"""Evaluation: datasets (BEIR), retrieval metrics and the evaluation runs built on them."""

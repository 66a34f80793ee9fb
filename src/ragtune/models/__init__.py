"""Models on the ground floor, below both ``generate/`` (which serves them) and ``train/``
(which makes them): the bundled models (``bundled``), base models as Hugging Face folders
(``base``: GGUF conversion, identity) and the registry of fine-tuned models (``registry``)."""

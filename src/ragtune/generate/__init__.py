"""Generators behind one small interface: chat messages in, text (or a stream of text) out,
with token counts and timings.

``get_generator(cfg)`` picks the backend named in ``[generate] backend``:
``llamacpp`` (any GGUF through llama-cpp-python; default: the bundled SmolLM2-135M-Instruct),
``transformers`` (a Hugging Face folder or a GGUF loaded by transformers, plus a PEFT adapter),
``openai`` (any OpenAI-compatible HTTP endpoint). Each backend is one module; its heavy imports
stay inside it.

A fine-tuned model registered in the workspace (``ragtune.models.registry``) is named like any
other: ``[generate] model = NAME`` or ``ragtune ask --model NAME``. It is always served by the
transformers backend (its base folder + LoRA adapter, or its full model folder), also when
``backend = "llamacpp"`` (the default): llama.cpp cannot read a PEFT adapter, and the switch is
visible, not silent: the generator is named ``transformers:NAME``, which answers and runs record.
With ``backend = "openai"`` the name is the endpoint's and is passed on unchanged.
"""

from __future__ import annotations

import time
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from ragtune.config import GenerateBackend
from ragtune.errors import ConfigError, GeneratorError
from ragtune.models.bundled import MODELS
from ragtune.models.registry import registered, resolve

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens: temperature 0 = greedy; ``seed`` makes sampling reproducible."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @classmethod
    def of(cls, cfg, temperature: float | None = None, seed: int | None = None) -> "Sampling":
        """[generate]'s settings (``cfg``; None = the defaults), with a call's own temperature or seed where given."""
        cfg = cfg or cls()
        return cls(cfg.temperature if temperature is None else temperature, cfg.top_p, cfg.seed if seed is None else seed)


@dataclass
class Generation:
    text: str
    prompt: str  # exactly what the model saw: the chat template applied where the backend exposes it
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float | None
    total_s: float
    tool_calls: list[dict] | None = None  # native tool calling (``call_tools``): the calls, as the endpoint sent them


class Generator:
    """Base class: backends implement ``format`` (messages -> prompt text), ``count_tokens``
    and ``_stream`` (yield text pieces; set ``self._usage`` = (prompt, completion) tokens).
    ``cfg`` is the [generate] config; ``sampling`` (else [generate]'s) is per call. ``schema``, a
    JSON schema the reply must follow (an agent's actions): a backend with ``constrained = True``
    (llama.cpp: a grammar) can only write text that fits it; the others are asked to (openai:
    ``response_format``) or not at all (transformers), and their replies must be checked."""

    name = "generator"
    cfg = None
    context_size = 2048
    max_tokens = 256
    constrained = False
    native_tools = False  # True: ``call_tools(messages, tools)`` uses the endpoint's own tool calling

    def format(self, messages: Messages) -> str:
        return "\n\n".join(f"<{m['role']}>\n{m['content']}" for m in messages)

    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1  # rough: ~4 characters per token when no tokenizer is at hand

    def _stream(self, messages: Messages, max_tokens: int, sampling: Sampling, schema: dict | None = None) -> Iterator[str]:
        raise NotImplementedError

    def stream(self, messages: Messages, max_tokens: int | None = None, sampling: Sampling | None = None,
               schema: dict | None = None) -> Iterator[str]:
        """Yield the answer piece by piece; afterwards ``self.last`` holds the whole ``Generation``."""
        self._usage = (0, 0)
        t0 = time.perf_counter()
        first, parts = None, []
        for piece in self._stream(messages, max_tokens or self.max_tokens, sampling or Sampling.of(self.cfg), schema):
            if first is None:
                first = time.perf_counter() - t0
            parts.append(piece)
            yield piece
        total = time.perf_counter() - t0
        prompt_tokens, completion_tokens = self._usage
        self.last = Generation("".join(parts), self.format(messages), prompt_tokens, completion_tokens, first, total)

    def generate(self, messages: Messages, max_tokens: int | None = None, sampling: Sampling | None = None,
                 schema: dict | None = None) -> Generation:
        for _ in self.stream(messages, max_tokens, sampling, schema):
            pass
        return self.last


BACKENDS: tuple[str, ...] = typing.get_args(GenerateBackend)


def model_path(model: str, root: Path | None = None, key: str = "model") -> Path:
    """A registry name or a path (relative to the workspace) to an existing model file or folder;
    for the name of a model registered in the workspace, its folder (``.ragtune/models/NAME``)."""
    if key == "model" and root is not None and (registered := _registered(model, root)) is not None:
        return registered
    if model in MODELS:
        path = MODELS[model]()
    else:
        path = Path(model).expanduser()
        if not path.is_absolute() and root is not None:
            path = root / path
    if not path.exists():
        raise GeneratorError(f"{key} not found: {path}; set [generate] {key} to an existing path"
                             + (f" or one of: {', '.join(MODELS)}" if key == "model" else ""))
    return path


def generator_sha256(cfg, root: Path) -> str | None:
    """The weights' sha256 of the model a ``GenerateConfig`` names (a registered model's recorded one);
    None for a remote model or a folder layout that cannot be hashed."""
    from ragtune.files import weights_sha256
    from ragtune.models.registry import model_sha256

    if cfg.backend == "openai" and cfg.model not in MODELS:
        return None  # a remote model: its name is all we know
    path = model_path(cfg.model, root)  # a missing model is an error, not an unknown hash
    try:
        if registered(root, cfg.model):
            return model_sha256(root, cfg.model)
        return weights_sha256(path)
    except Exception:  # noqa: BLE001 - a folder layout we cannot hash is recorded as unknown, not fatal
        return None


def get_generator(cfg, root: Path | None = None) -> Generator:
    """The generator for a ``GenerateConfig`` (cached per process: loading a model takes time).
    With ``root``, a registered model's name in ``model`` is served by transformers (see above)."""
    from dataclasses import astuple

    registered = _registered(cfg.model, root) if cfg.backend != "openai" else None
    card = registered / "card.json" if registered else None
    stamp = card.stat().st_mtime_ns if card and card.exists() else None  # registered again under the name: reload
    return _cached(astuple(cfg), str(root) if root else None, registered is not None, stamp)


def _registered(model: str, root: Path | str | None) -> Path | None:
    return registered(Path(root), model) if root is not None else None


@lru_cache(maxsize=2)
def _cached(values: tuple, root: str | None, registered: bool = False, stamp: int | None = None) -> Generator:
    from ragtune.config import GenerateConfig, cpu_threads

    cfg = GenerateConfig(*values)
    threads = cpu_threads(cfg.threads)
    if registered:
        return _registered_generator(cfg, Path(root), threads)  # type: ignore[arg-type]
    if cfg.backend == "llamacpp":
        from ragtune.generate.llamacpp import LlamaCppGenerator

        return LlamaCppGenerator(model_path(cfg.model, Path(root) if root else None), cfg, threads)
    if cfg.backend == "transformers":
        from ragtune.generate.transformers import TransformersGenerator

        where = Path(root) if root else None
        adapter = model_path(cfg.adapter, where, key="adapter") if cfg.adapter else None
        return TransformersGenerator(model_path(cfg.model, where), cfg, threads, adapter)
    if cfg.backend == "openai":
        from ragtune.generate.openai import OpenAIGenerator

        return OpenAIGenerator(cfg)
    raise GeneratorError(f"unknown generator {cfg.backend!r}; choose one of: {', '.join(BACKENDS)}")


def _registered_generator(cfg, root: Path, threads: int) -> Generator:
    """A registered model through transformers: base + adapter, or the full fine-tuned model."""
    from ragtune.generate.transformers import TransformersGenerator

    if cfg.adapter:
        raise ConfigError(f"[generate] adapter = {cfg.adapter!r} cannot be combined with the registered model "
                          f"{cfg.model!r}, which brings its own; set adapter = \"\"")
    from ragtune.models.registry import load_card

    if load_card(root, cfg.model).task == "reward":
        raise ConfigError(f"{cfg.model!r} is a reward model: it scores answers, it does not write them; "
                          f"use it with `ragtune eval reward --model {cfg.model}` or `ragtune score --model {cfg.model}`, "
                          "and give --model a generator")
    parts = resolve(root, cfg.model)
    return TransformersGenerator(parts.base, cfg, threads, parts.adapter, tokenizer=parts.tokenizer,
                                 name=f"transformers:{cfg.model}")

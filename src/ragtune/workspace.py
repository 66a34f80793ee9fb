"""A workspace is a folder with ``ragtune.toml`` and a ``.ragtune/`` state folder holding the
index, the embedding cache and (later) models, runs and feedback.

``Workspace`` is the Python API and a façade: it assembles components (store, embedder,
``Retriever``, generator, ``Chain``) from ``ragtune.toml`` and hands them to code that knows no
workspace. Every CLI command is a thin call into it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from ragtune.config import CONFIG_FILE, STATE_DIR, Config, render_toml
from ragtune.errors import WorkspaceError
from ragtune.files import write_json
from ragtune.types import Hit, IndexStats, IngestReport


def find_root(start: str | Path | None = None) -> Path:
    """The workspace folder: ``start`` (or $RAGTUNE_WORKSPACE, or the current folder) or a parent of it."""
    explicit = start is not None or "RAGTUNE_WORKSPACE" in os.environ
    here = Path(start if start is not None else os.environ.get("RAGTUNE_WORKSPACE", ".")).expanduser().resolve()
    candidates = [here] if explicit else [here, *here.parents]
    for folder in candidates:
        if (folder / CONFIG_FILE).is_file():
            return folder
    where = f"in {here}" if explicit else f"in {here} or its parents"
    raise WorkspaceError(f"no ragtune workspace {where} (no {CONFIG_FILE}): run `ragtune init` there first, or pass --workspace DIR")


class Workspace:
    """``Workspace(path)`` opens an existing workspace; ``Workspace.init(path)`` creates one."""

    def __init__(self, root: str | Path | None = None, config: Config | None = None) -> None:
        self.root = find_root(root)
        self.config = config or Config.load(self.root / CONFIG_FILE)
        self._store = None
        self._cache = None

    def with_config(self, config: Config) -> "Workspace":
        """The same workspace under other settings, sharing the opened store (when ``[store]`` is
        the same) and the embedding cache."""
        other = Workspace(self.root, config)
        if config.store == self.config.store:
            other._store = self._store
        other._cache = self._cache
        return other

    @classmethod
    def init(cls, folder: str | Path = ".", force: bool = False) -> "Workspace":
        folder = Path(folder).expanduser().resolve()
        config_path = folder / CONFIG_FILE
        if config_path.exists() and not force:
            raise WorkspaceError(f"{config_path} already exists; use --force to overwrite it with the defaults")
        (folder / STATE_DIR).mkdir(parents=True, exist_ok=True)
        config_path.write_text(render_toml(), encoding="utf-8")
        return cls(folder)

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    # -- components (built on first use: constructing a Workspace is cheap) ------------------
    @property
    def store(self):
        if self._store is None:
            from ragtune.store import open_store

            self._store = open_store(self.config.store, self.root / self.config.store.path)
        return self._store

    @property
    def embedder(self):
        from ragtune.embed import get_embedder

        e = self.config.embed
        return get_embedder(e.model, e.backend, e.batch_size, e.threads)

    @property
    def cache(self):
        if self._cache is None:
            from ragtune.embed.cache import EmbeddingCache

            self._cache = EmbeddingCache(self.state_dir / "cache" / "embeddings.sqlite")
        return self._cache

    # -- verbs -------------------------------------------------------------------------------
    def ingest(self, paths: Iterable[str | Path] | None = None, progress=None) -> IngestReport:
        """Index ``paths`` (files or folders); with no paths, refresh every folder/file ingested before."""
        from ragtune.ingest.pipeline import ingest

        roots = self._roots()
        paths = [Path(p).expanduser().resolve() for p in paths] if paths else [Path(p) for p in roots]
        if not paths:
            raise WorkspaceError("nothing to ingest: give files or folders, e.g. `ragtune ingest docs/`")
        with self._ingest_engine() as engine:
            report = ingest(paths, store=self.store, embedder=self.embedder, cache=self.cache,
                            cfg=self.config.ingest, root=self.root, progress=progress, engine=engine)
        self._save_roots(roots + [str(p) for p in paths if p.exists() and str(p) not in roots])
        return report

    def _ingest_engine(self):
        """[ingest] engine as a context manager: None (the pipeline's local engine) or a ``RayEngine``."""
        from contextlib import nullcontext

        cfg = self.config.ingest
        if cfg.engine == "local":
            return nullcontext()
        from ragtune.ingest.ray_engine import RayEngine

        return RayEngine(self.embedder, cfg.ray_address, cfg.ray_actors, self.config.embed.threads)

    @property
    def retriever(self):
        """A ``Retriever`` over this workspace's index with its [retrieve] settings."""
        from ragtune.retrieve import Retriever

        return Retriever(self.store, self.embedder, self.config.retrieve)

    def search(self, query: str, k: int | None = None, mode: str | None = None,
               filters: list[str] | dict[str, str] | None = None, similarity: bool = False) -> list[Hit]:
        """Ranked chunks for ``query``; ``k``/``mode`` default to [retrieve] in ragtune.toml.
        ``similarity``: every hit gets its cosine similarity to the query (dense hits always do)."""
        return self.retriever.search(query, k=k, mode=mode, filters=filters, similarity=similarity)

    @property
    def generator(self):
        from ragtune.generate import get_generator

        return get_generator(self.config.generate, self.root)

    def chain(self, retriever=None):
        """The RAG ``Chain`` under the current settings (``retriever``: another one, e.g. a sweep's)."""
        import time

        from ragtune.rag.chain import Chain
        from ragtune.rag.prompt import load_template

        t = time.perf_counter()
        generator = self.generator  # loaded once per process; reported apart from the answer's own time
        load_s = time.perf_counter() - t
        return Chain(retriever or self.retriever, generator, self.config.rag,
                     load_template(self.config.rag.template, self.root), load_s=load_s)

    def ask(self, question: str, k: int | None = None, mode: str | None = None,
            filters: list[str] | dict[str, str] | None = None, history: list[dict[str, str]] | None = None):
        """Retrieve, augment, generate: an ``Answer`` with citations, the exact prompt, usage and timings."""
        from ragtune.rag.chain import require_question

        require_question(question)  # before any model is loaded
        return self.chain().ask(question, k=k, mode=mode, filters=filters, history=history)

    def stream(self, question: str, k: int | None = None, mode: str | None = None,
               filters: list[str] | dict[str, str] | None = None, history: list[dict[str, str]] | None = None):
        """Like ``ask`` but iterate for text as it is generated; ``.answer`` is set at the end."""
        from ragtune.rag.chain import require_question

        require_question(question)
        return self.chain().stream(question, k=k, mode=mode, filters=filters, history=history)

    def agent(self):
        """The tool-using ``Agent`` under [agent] (``.run(question)`` -> an ``Answer`` with its steps). Its
        tools are checked here: a bad tool module, or search/read without an index, is one clear error."""
        from functools import partial

        from ragtune.agent.loop import Agent
        from ragtune.agent.tools import Sources, toolbox

        cfg = self.config.agent
        needs_index = {"search", "read"} & set(cfg.builtins)
        if needs_index and not self.store.exists():
            raise WorkspaceError(f"the {' and '.join(sorted(needs_index))} tools need an index: run `ragtune ingest PATH` "
                                 "first, or leave them out of [agent] builtins")
        parts = {"retriever": self.retriever, "store": self.store} if needs_index else {}
        make_tools = partial(toolbox, cfg.builtins, cfg.tools, k=cfg.k, **parts)
        make_tools(sources=Sources())  # fail at start-up, not at the first question
        return Agent(self.generator, lambda sources: make_tools(sources=sources), cfg.max_steps, cfg.max_tokens,
                     native=cfg.calls == "native")

    def stats(self) -> IndexStats:
        return self.store.stats()

    def rebuild(self, progress=None) -> IngestReport:
        """Drop the index and ingest everything again with the current settings (embeddings come from the cache)."""
        if not self._roots():
            raise WorkspaceError("no ingested paths are recorded: run `ragtune ingest PATH`")
        self.store.drop()
        return self.ingest(None, progress)

    def _roots(self) -> list[str]:
        try:
            return json.loads((self.state_dir / "roots.json").read_text())
        except (OSError, ValueError):
            return []

    def _save_roots(self, roots: list[str]) -> None:
        path = self.state_dir / "roots.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, roots)

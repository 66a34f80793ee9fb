"""Bring the index up to date with a set of files: add new ones, replace changed ones, remove
deleted ones, leave unchanged ones alone.

A file's key is the hash of its bytes and of every setting that shapes its chunks; an unchanged
key means nothing to do. Files are loaded and chunked, then committed in batches (whole files
only), each batch one atomic store commit. Embeddings go through the cache first, so a rerun
after a crash neither duplicates chunks nor re-embeds text.

Loading, chunking and embedding run on an engine: ``LocalEngine`` in this process, or
``RayEngine`` (``ray_engine.py``) on a Ray cluster's workers. This module alone decides which
files are loaded, which texts go into which embedding call and what is committed when, so both
engines store the same chunks and vectors.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np

from ragtune.config import IngestConfig
from ragtune.embed.cache import EmbeddingCache, text_key
from ragtune.errors import LoadError
from ragtune.ingest.chunker import chunk_document
from ragtune.ingest.loaders import file_type, load_file
from ragtune.progress import Progress, Quiet
from ragtune.types import Chunk, IngestReport, Problem

LOADER_VERSION = 1  # bump when loaders or the chunker change what they produce
EMBED_STEP = 256  # most texts per embedding call (and cache write)
ENGINE_SETTINGS = ("engine", "ray_address", "ray_actors")  # where the work runs, not what it produces


@dataclass
class SourceFile:
    """A file to (re)ingest: where it is, its name in the index and its key."""

    path: Path
    source: str
    key: str


@dataclass
class Prepared:
    """One file loaded and chunked; ``chunks`` is None when it could not be loaded (``problems`` say why)."""

    file: SourceFile
    chunks: list[Chunk] | None
    problems: list[Problem]


class Pending(Protocol):
    """Vectors on their way: one array per embedding call asked for."""

    def ready(self) -> bool: ...
    def result(self) -> list[np.ndarray]: ...


class Engine(Protocol):
    """Where loading, chunking and embedding run. ``prepare`` yields the files in the order given;
    ``capacity``: embedding calls that may be outstanding before the oldest batch is waited for;
    ``description``: where it ran, for the report."""

    capacity: int
    description: str

    def prepare(self, files: list[SourceFile], cfg: IngestConfig, tokenizer, max_tokens: int) -> Iterator[Prepared]: ...
    def embed(self, calls: list[list[str]]) -> Pending: ...


@dataclass
class _Done:
    vectors: list[np.ndarray]

    def ready(self) -> bool:
        return True

    def result(self) -> list[np.ndarray]:
        return self.vectors


class LocalEngine:
    """Everything in this process, one file after another; each batch is committed before the next."""

    capacity = 0
    description = "local"

    def __init__(self, embedder) -> None:
        self.embedder = embedder

    def prepare(self, files: list[SourceFile], cfg: IngestConfig, tokenizer, max_tokens: int) -> Iterator[Prepared]:
        return (prepare(f, cfg, tokenizer, max_tokens) for f in files)

    def embed(self, calls: list[list[str]]) -> Pending:
        return _Done([self.embedder.embed(texts) for texts in calls])


def ingest(paths: Iterable[Path], *, store, embedder, cache: EmbeddingCache | None, cfg: IngestConfig,
           root: Path, progress: Progress | None = None, engine: Engine | None = None) -> IngestReport:
    progress = progress or Quiet()
    engine = engine or LocalEngine(embedder)
    cache = cache or EmbeddingCache(Path(":memory:"))  # no cache kept: one for this run's own vectors
    report = IngestReport()
    t0 = time.perf_counter()
    store.ensure(embedder.name, embedder.model_id, embedder.dim)
    files, folders = _discover(list(paths), cfg, root, report)
    known = store.file_keys()
    todo = _changed(files, known, _settings_key(cfg), report)
    gone = sorted(s for s in known if any(_under(s, f) for f in folders) and s not in {src for _, src in files})
    if gone:
        report.index_version = store.delete_sources(gone)
        report.removed = gone
    progress.start(len(todo))
    prepared = engine.prepare(todo, cfg, embedder.tokenizer, min(cfg.chunk_tokens, embedder.max_tokens))
    vectors = _Vectors(engine, cache, embedder.model_id, embedder.dim)
    waiting: deque[_Batch] = deque()
    for batch in _batches(prepared, cfg.commit_chunks, known, report, progress):
        waiting.append(vectors.submit(batch))
        # commit in order: the oldest batch as soon as its vectors are in, or when too much is outstanding
        while waiting and (waiting[0].pending.ready() or sum(len(b.calls) for b in waiting) > engine.capacity):
            _commit(waiting.popleft(), vectors, store, known, report, progress)
    while waiting:
        _commit(waiting.popleft(), vectors, store, known, report, progress)
    if report.added or report.updated or report.removed:
        report.index_version = store.finalize()
    report.seconds = time.perf_counter() - t0
    report.engine = engine.description
    return report


def _changed(files: list[tuple[Path, str]], known: dict[str, str], settings: str, report: IngestReport) -> list[SourceFile]:
    """The files whose key differs from the committed one (new or changed); the rest are unchanged."""
    todo = []
    for path, source in files:
        try:
            key = _file_key(path, settings)
        except OSError as e:
            report.problems.append(Problem(source, f"cannot be read: {e.strerror or e}"))
            continue
        if known.get(source) == key:
            report.unchanged.append(source)
        else:
            todo.append(SourceFile(path, source, key))
    return todo


def _discover(paths: list[Path], cfg: IngestConfig, root: Path, report: IngestReport) -> tuple[list[tuple[Path, str]], list[str]]:
    """(files with their source names, source prefixes of the folders given)."""
    files: dict[str, Path] = {}
    folders: list[str] = []
    for path in paths:
        if not path.exists():
            report.problems.append(Problem(str(path), "no such file or directory"))
        elif path.is_dir():
            folders.append(source_name(path, root))
            for p in sorted(path.rglob("*")):
                rel = p.relative_to(path).as_posix()
                if p.is_file() and _selected(rel, p, cfg):
                    files[source_name(p, root)] = p
        elif file_type(path) is None:
            report.problems.append(Problem(source_name(path, root), f"unsupported file type '{path.suffix}'"))
        else:
            files[source_name(path, root)] = path
    return [(p, s) for s, p in files.items()], folders


def source_name(path: Path, root: Path) -> str:
    """How a file is named in the index: relative to the workspace folder when it is inside it or
    near it (at most two levels up, e.g. ``../docs/a.md`` for docs beside the workspace), else absolute."""
    path = path.resolve()
    rel = Path(os.path.relpath(path, root.resolve()))
    if rel.parts[:3] != ("..", "..", ".."):
        return rel.as_posix()
    return path.as_posix()


def _under(source: str, folder: str) -> bool:
    if folder == ".":  # the workspace folder itself: everything named relative to it without '..'
        return not source.startswith(("../", "/"))
    return source.startswith(folder.rstrip("/") + "/")


def _match(rel: str, pattern: str) -> bool:
    return fnmatch.fnmatch(rel, pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(rel, pattern[3:]))


def _selected(rel: str, path: Path, cfg: IngestConfig) -> bool:
    if any(_match(rel, pat) for pat in cfg.exclude):
        return False
    if cfg.include:
        return any(_match(rel, pat) for pat in cfg.include)
    return file_type(path) is not None


def _settings_key(cfg: IngestConfig) -> str:
    ignored = ("include", "exclude", "max_file_mb", "commit_chunks", *ENGINE_SETTINGS)
    shaping = {k: v for k, v in asdict(cfg).items() if k not in ignored}
    return json.dumps({"loader": LOADER_VERSION, **shaping}, sort_keys=True)


def _file_key(path: Path, settings: str) -> str:
    h = hashlib.sha256(settings.encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def prepare(f: SourceFile, cfg: IngestConfig, tokenizer, max_tokens: int) -> Prepared:
    """Load and chunk one file (a stage: runs wherever the engine puts it)."""
    try:
        loaded = load_file(f.path, f.source, cfg)
    except LoadError as e:
        return Prepared(f, None, [Problem(f.source, str(e))])
    chunks = [c for doc in loaded.documents for c in chunk_document(doc, tokenizer, max_tokens, cfg.chunk_overlap)]
    return Prepared(f, chunks, [Problem(f.source, w, "warning") for w in loaded.warnings])


def _batches(prepared: Iterable[Prepared], commit_chunks: int, known: dict[str, str], report: IngestReport,
             progress: Progress) -> Iterator[list[Prepared]]:
    """Loaded files in commit batches of whole files (at least ``commit_chunks`` chunks, but the last)."""
    batch: list[Prepared] = []
    size = 0
    for p in prepared:
        report.problems += p.problems
        progress.file_done(p.file.source, len(p.chunks or []))
        if p.chunks is None:
            continue
        (report.updated if p.file.source in known else report.added).append(p.file.source)
        batch.append(p)
        size += len(p.chunks)
        if size >= commit_chunks:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@dataclass
class _Batch:
    files: list[Prepared]
    keys: list[bytes]  # cache key of each chunk's text, in order
    calls: list[list[bytes]]  # the keys this batch embeds, one list per embedding call
    pending: Pending


class _Vectors:
    """A batch's texts in steps of ``EMBED_STEP``; one embedding call per step for its texts that are
    neither cached nor already on their way for an earlier batch. The calls are the same whatever the
    engine and however many batches are outstanding, so the vectors are too (int8 models quantise
    each call's activations as a whole: the same text in another call gets a slightly other vector)."""

    def __init__(self, engine: Engine, cache: EmbeddingCache, model_id: str, dim: int) -> None:
        self.engine, self.cache, self.model_id, self.dim = engine, cache, model_id, dim
        self.asked: set[bytes] = set()  # keys embedded, or being embedded, by this run

    def submit(self, files: list[Prepared]) -> _Batch:
        texts = [c.embed_text for p in files for c in p.chunks or []]
        keys = [text_key(t) for t in texts]
        cached = self.cache.get(self.model_id, list(set(keys)))
        calls: list[dict[bytes, str]] = []
        for i in range(0, len(texts), EMBED_STEP):
            call = {k: t for k, t in zip(keys[i:i + EMBED_STEP], texts[i:i + EMBED_STEP]) if k not in cached and k not in self.asked}
            self.asked.update(call)
            if call:
                calls.append(call)
        return _Batch(files, keys, [list(c) for c in calls], self.engine.embed([list(c.values()) for c in calls]))

    def collect(self, batch: _Batch) -> tuple[np.ndarray, int]:
        """The batch's vectors, in chunk order, and how many it computed; those go to the cache first."""
        fresh = {k: v for keys, vectors in zip(batch.calls, batch.pending.result()) for k, v in zip(keys, vectors)}
        self.cache.put(self.model_id, fresh)
        found = {**self.cache.get(self.model_id, list(set(batch.keys) - fresh.keys())), **fresh}
        vectors = np.stack([found[k] for k in batch.keys]) if batch.keys else np.zeros((0, self.dim), np.float32)
        return vectors, len(fresh)


def _commit(batch: _Batch, vectors: _Vectors, store, known: dict[str, str], report: IngestReport, progress: Progress) -> None:
    matrix, computed = vectors.collect(batch)
    report.chunks_embedded += computed
    progress.embedded(len(batch.keys))
    files = [(p.file.source, p.file.key, p.chunks) for p in batch.files]
    replaced = {p.file.source for p in batch.files if p.file.source in known}
    report.index_version = store.commit(files, matrix, replaced)
    report.chunks_written += len(batch.keys)

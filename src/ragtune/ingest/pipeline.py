"""Bring the index up to date with a set of files: add new ones, replace changed ones, remove
deleted ones, leave unchanged ones alone.

A file's key is the hash of its bytes and of every setting that shapes its chunks; an unchanged
key means nothing to do. Files are loaded and chunked, then committed in batches (whole files
only), each batch one atomic store commit. Embeddings go through the cache first, so a rerun
after a crash neither duplicates chunks nor re-embeds text.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from ragtune.config import IngestConfig
from ragtune.embed.cache import EmbeddingCache, embed_cached
from ragtune.errors import LoadError
from ragtune.ingest.chunker import chunk_document
from ragtune.ingest.loaders import file_type, load_file
from ragtune.progress import Progress, Quiet
from ragtune.types import Chunk, IngestReport, Problem

LOADER_VERSION = 1  # bump when loaders or the chunker change what they produce
EMBED_STEP = 256  # texts per embedding call (and cache write)


@dataclass
class _File:
    path: Path
    source: str
    key: str


def ingest(paths: Iterable[Path], *, store, embedder, cache: EmbeddingCache | None, cfg: IngestConfig,
           root: Path, progress: Progress | None = None) -> IngestReport:
    progress = progress or Quiet()
    report = IngestReport()
    t0 = time.perf_counter()
    store.ensure(embedder.name, embedder.model_id, embedder.dim)
    files, folders = _discover(list(paths), cfg, root, report)
    known = store.file_keys()
    settings = _settings_key(cfg)
    todo: list[_File] = []
    for path, source in files:
        try:
            key = _file_key(path, settings)
        except OSError as e:
            report.problems.append(Problem(source, f"cannot be read: {e.strerror or e}"))
            continue
        if known.get(source) == key:
            report.unchanged.append(source)
        else:
            todo.append(_File(path, source, key))
    gone = sorted(s for s in known if any(_under(s, f) for f in folders) and s not in {src for _, src in files})
    if gone:
        report.index_version = store.delete_sources(gone)
        report.removed = gone
    progress.start(len(todo))
    batch: list[tuple[_File, list[Chunk]]] = []
    for f in todo:
        chunks = _load_and_chunk(f, cfg, embedder, report)
        progress.file_done(f.source, len(chunks or []))
        if chunks is None:
            continue
        (report.updated if f.source in known else report.added).append(f.source)
        batch.append((f, chunks))
        if sum(len(c) for _, c in batch) >= cfg.commit_chunks:
            _commit(batch, store, embedder, cache, known, report, progress)
            batch = []
    if batch:
        _commit(batch, store, embedder, cache, known, report, progress)
    if report.added or report.updated or report.removed:
        report.index_version = store.finalize()
    report.seconds = time.perf_counter() - t0
    return report


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
    shaping = {k: v for k, v in asdict(cfg).items() if k not in ("include", "exclude", "max_file_mb", "commit_chunks")}
    return json.dumps({"loader": LOADER_VERSION, **shaping}, sort_keys=True)


def _file_key(path: Path, settings: str) -> str:
    h = hashlib.sha256(settings.encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def _load_and_chunk(f: _File, cfg: IngestConfig, embedder, report: IngestReport) -> list[Chunk] | None:
    try:
        loaded = load_file(f.path, f.source, cfg)
    except LoadError as e:
        report.problems.append(Problem(f.source, str(e)))
        return None
    report.problems += [Problem(f.source, w, "warning") for w in loaded.warnings]
    max_tokens = min(cfg.chunk_tokens, embedder.max_tokens)
    return [c for doc in loaded.documents for c in chunk_document(doc, embedder.tokenizer, max_tokens, cfg.chunk_overlap)]


def _commit(batch, store, embedder, cache, known: dict[str, str], report: IngestReport, progress: Progress) -> None:
    import numpy as np

    chunks = [c for _, cs in batch for c in cs]
    texts = [c.embed_text for c in chunks]
    parts = []
    for i in range(0, len(texts), EMBED_STEP):
        vectors, computed = embed_cached(embedder, cache, texts[i:i + EMBED_STEP])
        parts.append(vectors)
        report.chunks_embedded += computed
        progress.embedded(len(vectors))
    files = [(f.source, f.key, cs) for f, cs in batch]
    replaced = {f.source for f, _ in batch if f.source in known}
    report.index_version = store.commit(files, np.concatenate(parts), replaced)
    report.chunks_written += len(chunks)

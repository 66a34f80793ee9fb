"""Stores hold chunks, their vectors and a keyword index. LanceDB is the embedded default, in a
local folder or in an S3 bucket (``[store] uri``); pgvector keeps them in a PostgreSQL server.
Both a bucket and a server let several workspaces and machines share one index.

A backend implements ``Store`` (below) and passes the conformance suite in
``tests/store/test_store_conformance.py``; adding one is a module and an entry in ``BACKENDS``.
Filters reach a store as data (``Filter``), and each backend compiles them into its own query
language, so nothing above the store knows LanceDB's SQL.

    >>> parse_filters(["source=docs/*.md", "page=3", "lang=en"])  # doctest: +NORMALIZE_WHITESPACE
    (Filter(key='source', value='docs/*.md'), Filter(key='page', value='3'), Filter(key='meta.lang', value='en'))
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from ragtune.errors import ConfigError, IndexMismatchError, WorkspaceError
from ragtune.types import Chunk, Hit, IndexStats

if TYPE_CHECKING:
    import numpy as np

    from ragtune.config import StoreConfig

# Chunk columns a filter can name, with their type; any other key is a metadata field.
COLUMN_FILTERS = {"source": "string", "doc_id": "string", "title": "string", "heading": "string", "page": "int"}


@dataclass(frozen=True)
class Filter:
    """One condition on chunks, all of which must hold: ``key`` is a column of ``COLUMN_FILTERS`` or
    ``meta.FIELD``; ``value`` matches exactly, or with ``*`` wildcards (string columns)."""

    key: str
    value: str

    @property
    def column(self) -> str | None:
        return None if self.key.startswith("meta.") else self.key

    @property
    def field(self) -> str:
        return self.key.removeprefix("meta.")


def parse_filters(items: list[str] | dict[str, str] | tuple[Filter, ...] | None) -> tuple[Filter, ...]:
    """``["source=docs/*.md", "lang=en"]`` (or a dict) -> ``Filter``s, checked. A bare key that
    is not a column is a metadata field. ``Filter``s pass through."""
    if isinstance(items, tuple) and all(isinstance(i, Filter) for i in items):
        return items
    pairs = list(items.items()) if isinstance(items, dict) else [_split(i) for i in items or []]
    return tuple(_filter(k, str(v)) for k, v in pairs)


def _split(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--filter {item!r} must look like KEY=VALUE (keys: {', '.join(COLUMN_FILTERS)} or meta.FIELD)")
    return key.strip(), value.strip()


def _filter(key: str, value: str) -> Filter:
    if key in COLUMN_FILTERS:
        if COLUMN_FILTERS[key] == "int" and not value.isdigit():
            raise ConfigError(f"--filter {key}={value!r}: {key} must be a whole number")
        return Filter(key, value)
    field = key.removeprefix("meta.")
    if not field.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"--filter {key!r}: metadata field names are letters, digits, '_' and '-'")
    return Filter(f"meta.{field}", value)


def required(meta: dict[str, Any] | None, hint: str = "") -> dict[str, Any]:
    """An index's identity (``meta``), or ``WorkspaceError`` when there is no index yet (``hint``: what
    the backend adds to that message)."""
    if meta is None:
        raise WorkspaceError("the index is empty: run `ragtune ingest PATH` first" + hint)
    return meta


def check_identity(meta: dict[str, Any], location: str, format_version: int, model_id: str) -> None:
    """``IndexMismatchError`` unless the index whose identity is ``meta`` (at ``location``) has this
    format and was built with the embedding model ``model_id``."""
    if meta.get("format_version") != format_version:
        raise IndexMismatchError(f"the index {location} has format {meta.get('format_version')}, this ragtune reads "
                                 f"{format_version}: rebuild it with `ragtune index rebuild`")
    if meta["model_id"] != model_id:
        raise IndexMismatchError(
            f"the index was built with embedding model {meta['model_id']}, but the workspace is set to {model_id}. "
            "Vectors of different models cannot be mixed: set [embed] back in ragtune.toml, or rebuild the index "
            "with the new model: `ragtune index rebuild` (cached embeddings are reused)")


class Store(Protocol):
    """What the rest of ragtune asks of a store. Writes are atomic per call; reads see one
    committed version (``pin``) for the whole of a search."""

    path: Path

    # identity: which embedding model the vectors come from
    def exists(self) -> bool: ...
    def ensure(self, model: str, model_id: str, dim: int) -> None:
        """Create an empty index for this embedder, or check that the existing one was built with it."""
    def check(self, model_id: str) -> None:
        """``IndexMismatchError`` unless the index was built with ``model_id`` in this format."""
    def drop(self) -> None: ...

    # writing
    def file_keys(self) -> dict[str, str]:
        """{source: file key} of everything committed."""
    def commit(self, files: list[tuple[str, str, list[Chunk]]], vectors: np.ndarray, replace_sources: set[str]) -> int:
        """Add the chunks of ``files`` ((source, file key, chunks); ``vectors`` in the same order)
        and remove the old chunks of ``replace_sources``, in one atomic commit; the new version."""
    def delete_sources(self, sources: list[str]) -> int: ...
    def finalize(self) -> int:
        """Bring the keyword index up to date after a batch of commits; the version."""

    # reading
    def version(self) -> int: ...
    @property
    def pinned_version(self) -> int | None: ...
    def pin(self, model_id: str | None = None) -> None:
        """Read the latest committed version from now on (until the next ``pin``); with ``model_id``,
        ``IndexMismatchError`` unless that version was built with it in this format (``check``)."""
    def dense(self, vector: np.ndarray, n: int, filters: tuple[Filter, ...] = ()) -> list[Hit]:
        """The ``n`` chunks nearest to ``vector`` (cosine; ``score`` = ``similarity``), best first."""
    def bm25(self, query: str, n: int, filters: tuple[Filter, ...] = ()) -> list[Hit]:
        """The ``n`` best keyword matches (``score`` = BM25), best first."""
    def similarities(self, vector: np.ndarray, chunk_ids: list[str]) -> dict[str, float]:
        """Cosine similarity of ``vector`` to each of the chunks (those still in the pinned version)."""
    def rows(self, columns: list[str]) -> list[dict[str, Any]]:
        """Every committed chunk, only ``columns``."""
    def stats(self) -> IndexStats: ...


def chunk_id(source: str, file_key: str, index: int) -> str:
    """Ids carry the file's key: a changed file's new chunks never collide with its old ones."""
    return f"{hashlib.sha1(source.encode()).hexdigest()[:12]}:{file_key[:12]}:{index}"


def _lancedb(config: StoreConfig, path: Path) -> Store:
    from ragtune.store.lancedb import LanceStore

    return LanceStore(path, config)


def _pgvector(config: StoreConfig, path: Path) -> Store:
    from ragtune.store.pgvector import PgVectorStore

    return PgVectorStore(config, path)


BACKENDS: dict[str, Callable[[StoreConfig, Path], Store]] = {"lancedb": _lancedb, "pgvector": _pgvector}


def open_store(config: StoreConfig, path: Path) -> Store:
    """The store of ``config`` (``[store]``: ``backend`` and its settings) for the index at ``path``;
    nothing is read or connected until it is used."""
    if config.backend not in BACKENDS:
        raise ConfigError(f"unknown store backend {config.backend!r}; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[config.backend](config, path)

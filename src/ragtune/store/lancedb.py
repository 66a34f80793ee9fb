"""The LanceDB store: one table of chunks (text, provenance, vector) with a native BM25 index.

Crash safety comes from Lance itself: every write is one atomic commit of a new table version,
and readers open a version, never a half-written one. Each ingest batch is a single commit
(``add``, or ``merge_insert`` that also deletes the replaced chunks of the same files), so a
file is either fully in the index at its new content or still at its old one.

Searches pin the latest committed version for their whole duration; dense search runs on an
in-memory copy of that version's vectors (exact dot product, well under a millisecond for
tens of thousands of chunks), BM25 on Lance's inverted index. Filters (``store.Filter``) are
compiled into Lance's SQL here (``where``).

The index is a local folder (``[store] path``) or an object-storage prefix (``[store] uri``,
``s3://bucket/prefix``; see ``store.objects``) with the same layout: the table and ``meta.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragtune.errors import WorkspaceError
from ragtune.files import write_json
from ragtune.store import Filter, check_identity, chunk_id, required
from ragtune.types import Chunk, Hit, IndexStats

if TYPE_CHECKING:
    from ragtune.config import StoreConfig

FORMAT_VERSION = 1
TABLE = "chunks"
META = "meta.json"
FTS_COLUMN = "search_text"
HIT_COLUMNS = ["id", "doc_id", "source", "title", "heading", "page", "start", "end", "text", "metadata"]
IN_MEMORY_MAX_ROWS = 500_000  # above this, dense search goes to Lance instead of a numpy copy


REST_CLIENT = "lance_namespace_urllib3_client"


def import_lancedb():
    """``import lancedb``, without the REST namespace client's API classes until something asks for them.

    lancedb 0.40 imports ``lance_namespace``, which needs the generated REST client's models; the
    client package's ``__init__`` also builds its nine API classes (pydantic ``validate_call`` on every
    method), which only a REST namespace uses: 0.8 of the 3.5 seconds a ``ragtune search`` took on an
    idle 2-core machine (2 s when busy), paid by every command that opens an index. The package is
    registered with its ``__init__`` not yet run, and the first name asked of it runs it (``from
    lance_namespace_urllib3_client import TableApi`` still works). lance itself made the same change
    upstream (lance-format/lance#9273).
    """
    import importlib.util
    import sys

    if REST_CLIENT not in sys.modules and (spec := importlib.util.find_spec(REST_CLIENT)) is not None \
            and spec.loader is not None and spec.submodule_search_locations is not None:
        package = importlib.util.module_from_spec(spec)  # __path__, __file__, __spec__: its submodules import

        def __getattr__(name: str):
            del package.__dict__["__getattr__"]
            spec.loader.exec_module(package)
            return getattr(package, name)

        package.__getattr__ = __getattr__
        sys.modules[REST_CLIENT] = package
    import lancedb

    return lancedb


def schema(dim: int):
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("doc_id", pa.string()), ("source", pa.string()), ("file_key", pa.string()),
        ("title", pa.string()), ("heading", pa.string()), ("page", pa.int32()), ("start", pa.int32()),
        ("end", pa.int32()), ("n_tokens", pa.int32()), ("text", pa.string()), (FTS_COLUMN, pa.string()),
        ("metadata", pa.string()), ("vector", pa.list_(pa.float32(), dim)),
    ])


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def where(filters: tuple[Filter, ...]) -> str | None:
    """The SQL predicate of ``filters`` (all must hold), or None for no filter."""
    return " AND ".join(_predicate(f) for f in filters) or None


def _predicate(f: Filter) -> str:
    if f.column == "page":
        return f"page = {int(f.value)}"
    if f.column is not None:
        if "*" in f.value:
            return f"{f.column} LIKE {sql_str(f.value.replace('*', '%'))}"
        return f"{f.column} = {sql_str(f.value)}"
    # metadata is stored as JSON with sorted keys and ", "/": " separators: match the encoded pair
    patterns = [json.dumps({f.field: f.value})[1:-1]]
    if f.value.lstrip("-").replace(".", "", 1).isdigit() or f.value in ("true", "false"):
        patterns.append(f"{json.dumps(f.field)}: {f.value}")
    likes = " OR ".join(f"metadata LIKE {sql_str('%' + p + '%')}" for p in patterns)
    return f"({likes})"


class LanceStore:
    def __init__(self, path: Path, config: StoreConfig | None = None) -> None:
        from ragtune.store.objects import S3Place

        self.path = path
        self.s3 = S3Place.from_config(config) if config is not None and config.uri else None  # None: a local folder
        self.location = self.s3.uri if self.s3 else str(path)
        self._db = None
        self._latest = None  # table handle following the latest commit
        self._view = None  # table pinned at a version, for searching
        self._view_version = -1
        self._rows = None  # pyarrow table of that version (no vectors)
        self._matrix: np.ndarray | None = None

    # -- identity ---------------------------------------------------------------------------
    def meta(self) -> dict[str, Any] | None:
        try:
            text = self.s3.read_text(META) if self.s3 else (self.path / META).read_text()
            return None if text is None else json.loads(text)
        except FileNotFoundError:
            return None
        except ValueError:
            raise WorkspaceError(f"{self.location}/{META} is damaged; rebuild with `ragtune index rebuild`") from None

    def exists(self) -> bool:
        return self.meta() is not None

    def ensure(self, model: str, model_id: str, dim: int) -> None:
        """Create an empty index for this embedder, or check the existing one was built with it."""
        meta = self.meta()
        if meta is not None:
            self.check(model_id)
            return
        if self.s3:
            self.s3.require_bucket()
        else:
            self.path.mkdir(parents=True, exist_ok=True)
        self.db().create_table(TABLE, schema=schema(dim), exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, "embed_model": model, "model_id": model_id, "dim": dim,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        # written last: an index without meta.json is not an index
        if self.s3:
            self.s3.write_text(META, json.dumps(meta, indent=2))  # one PUT: whole or absent
        else:
            write_json(self.path / META, meta)

    def check(self, model_id: str) -> None:
        check_identity(self.require_meta(), f"at {self.location}", FORMAT_VERSION, model_id)

    def require_meta(self) -> dict[str, Any]:
        return required(self.meta())

    def drop(self) -> None:
        """Remove the index: meta.json first (what is left is no index), then the table."""
        if self.s3:  # only the index's own objects: other indexes may live under the prefix
            self.s3.delete(META)
            self.db().drop_table(TABLE, ignore_missing=True)
        else:
            (self.path / META).unlink(missing_ok=True)
            shutil.rmtree(self.path, ignore_errors=True)
        self._db = self._view = self._latest = None
        self._view_version = -1

    # -- writing ----------------------------------------------------------------------------
    def db(self):
        if self._db is None:
            from datetime import timedelta

            self._db = import_lancedb().connect(self.location, read_consistency_interval=timedelta(0),
                                                storage_options=self.s3.storage_options() if self.s3 else None)
        return self._db

    def table(self):
        return self.db().open_table(TABLE)

    def file_keys(self) -> dict[str, str]:
        """{source: file_key} of everything committed."""
        if not self.exists():
            return {}
        t = _scan(self.table(), ["source", "file_key"])
        return dict(zip(t["source"].to_pylist(), t["file_key"].to_pylist()))

    def commit(self, files: list[tuple[str, str, list[Chunk]]], vectors: np.ndarray, replace_sources: set[str]) -> int:
        """Add the chunks of ``files`` ((source, file key, chunks), vectors in the same order);
        the old chunks of ``replace_sources`` go in the same commit."""
        rows = _to_arrow(files, vectors)
        table = self.table()
        if replace_sources:
            cond = f"source IN ({', '.join(sql_str(s) for s in sorted(replace_sources))})"
            (table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
             .when_not_matched_by_source_delete(cond).execute(rows))
        else:
            table.add(rows)
        if not self._has_fts(table):  # from the first commit on, BM25 works (new rows are scanned until indexed)
            self._create_fts(table)
        return table.version

    def delete_sources(self, sources: list[str]) -> int:
        table = self.table()
        table.delete(f"source IN ({', '.join(sql_str(s) for s in sorted(sources))})")
        return table.version

    def finalize(self) -> int:
        """Bring the keyword index up to date and compact small commits."""
        table = self.table()
        if table.count_rows() == 0:
            return table.version
        if not self._has_fts(table):
            self._create_fts(table)
        else:
            table.optimize()
        return table.version

    @staticmethod
    def _has_fts(table) -> bool:
        return any(FTS_COLUMN in idx.columns for idx in table.list_indices())

    @staticmethod
    def _create_fts(table) -> None:
        from lancedb.index import FTS

        table.create_index(FTS_COLUMN, config=FTS(with_position=False))

    # -- reading ----------------------------------------------------------------------------
    def version(self) -> int:
        return self.table().version

    @property
    def pinned_version(self) -> int | None:
        """The version searches read (set by ``pin``)."""
        return self._view_version

    def pin(self, model_id: str | None = None) -> None:
        """Pin the latest committed version (reloading the in-memory copy when it moved); with ``model_id``,
        check the index first."""
        if model_id is not None:
            self.check(model_id)
        if self._latest is None:
            self._latest = self.table()  # with read_consistency_interval=0 its version follows commits
        latest = self._latest
        if latest.version == self._view_version:
            return
        view = self.table()
        view.checkout(latest.version)
        self._view, self._view_version = view, latest.version
        self._fts = self._has_fts(view)
        self._rows = self._matrix = self._position = None
        if view.count_rows() <= IN_MEMORY_MAX_ROWS:
            data = _scan(view, [*HIT_COLUMNS, "vector"])
            dim = data.schema.field("vector").type.list_size
            self._matrix = data["vector"].combine_chunks().flatten().to_numpy().reshape(-1, dim)
            self._rows = data.drop_columns(["vector"]).combine_chunks()  # one chunk: take() is fast
            self._position = {chunk_id: i for i, chunk_id in enumerate(self._rows["id"].to_pylist())}

    def dense(self, vector: np.ndarray, n: int, filters: tuple[Filter, ...] = ()) -> list[Hit]:
        if self._view is None:
            self.pin()
        if self._matrix is not None and not filters:
            scores = self._matrix @ vector
            n = min(n, len(scores))
            top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
            top = top[np.argsort(-scores[top], kind="stable")]
            rows = self._rows.take(top).to_pylist()
            return [_hit(r, rank, float(scores[i]), float(scores[i])) for rank, (r, i) in enumerate(zip(rows, top), 1)]
        q = self._view.search(vector, vector_column_name="vector").distance_type("cosine").limit(n).select([*HIT_COLUMNS, "_distance"])
        if filters:
            q = q.where(where(filters), prefilter=True)
        return [_hit(r, rank, 1.0 - r["_distance"], 1.0 - r["_distance"]) for rank, r in enumerate(q.to_list(), 1)]

    def similarities(self, vector: np.ndarray, chunk_ids: list[str]) -> dict[str, float]:
        """Cosine similarity of ``vector`` to each chunk; empty when the vectors are not held in memory."""
        if self._position is None:
            return {}
        return {i: float(self._matrix[self._position[i]] @ vector) for i in chunk_ids if i in self._position}

    def bm25(self, query: str, n: int, filters: tuple[Filter, ...] = ()) -> list[Hit]:
        if self._view is None:
            self.pin()
        if not self._fts:
            if self._view.count_rows() == 0:
                return []
            raise WorkspaceError("the keyword (BM25) index is missing because the last ingest stopped early: "
                                 "rerun `ragtune ingest`, or search with --mode dense")
        q = self._view.search(query, query_type="fts", fts_columns=FTS_COLUMN).limit(n)
        if filters:
            q = q.where(where(filters), prefilter=True)
        if self._position is None:
            return [_hit(r, rank, r["_score"]) for rank, r in enumerate(q.select([*HIT_COLUMNS, "_score"]).to_list(), 1)]
        found = q.select(["id", "_score"]).to_arrow()  # rows come from the in-memory copy: half the time
        import pyarrow as pa

        positions = pa.array([self._position[i] for i in found["id"].to_pylist()], pa.int64())
        rows = self._rows.take(positions).to_pylist()
        return [_hit(r, rank, s) for rank, (r, s) in enumerate(zip(rows, found["_score"].to_pylist()), 1)]

    def rows(self, columns: list[str]) -> list[dict[str, Any]]:
        """Every committed chunk, only ``columns`` (no vectors unless asked for)."""
        self.require_meta()
        return _scan(self.table(), columns).to_pylist()

    def stats(self) -> IndexStats:
        meta = self.require_meta()
        t = self.table()
        cols = _scan(t, ["doc_id", "source"])
        return IndexStats(documents=len(set(zip(cols["source"].to_pylist(), cols["doc_id"].to_pylist()))),
                          sources=len(set(cols["source"].to_pylist())), chunks=cols.num_rows,
                          model=meta["embed_model"], model_id=meta["model_id"], dim=meta["dim"],
                          index_version=t.version, format_version=meta["format_version"], path=self.location)


def _scan(table, columns: list[str]):
    """All rows of ``table`` (at its checked-out version), only ``columns``."""
    return table.search().select(columns).limit(None).to_arrow()


def _hit(row: dict[str, Any], rank: int, score: float, similarity: float | None = None) -> Hit:
    return Hit(rank=rank, score=float(score), chunk_id=row["id"], doc_id=row["doc_id"], source=row["source"],
               title=row["title"], heading=row["heading"], page=row["page"], start=row["start"], end=row["end"],
               text=row["text"], metadata=json.loads(row["metadata"] or "{}"), similarity=similarity)


def _to_arrow(files: list[tuple[str, str, list[Chunk]]], vectors: np.ndarray):
    import pyarrow as pa

    sch = schema(vectors.shape[1])
    cols: dict[str, list] = {name: [] for name in sch.names if name != "vector"}
    for source, key, chunks in files:
        for i, c in enumerate(chunks):
            row = {"id": chunk_id(source, key, i), "doc_id": c.doc_id, "source": source, "file_key": key,
                   "title": c.title, "heading": c.heading, "page": c.page, "start": c.start, "end": c.end,
                   "n_tokens": c.n_tokens, "text": c.text, FTS_COLUMN: c.embed_text,
                   "metadata": json.dumps(c.metadata, sort_keys=True)}
            for name, value in row.items():
                cols[name].append(value)
    arrays = [pa.array(cols[n], type=sch.field(n).type) for n in sch.names if n != "vector"]
    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1]))
    return pa.Table.from_arrays(arrays, schema=sch)

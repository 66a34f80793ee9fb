"""Retrieval: dense, BM25 and hybrid (reciprocal-rank fusion), with metadata filters.

``retrieve(store, embedder, query, ...)`` returns ranked ``Hit``s. Fusion is at chunk level:
score = sum over retrievers of weight / (rrf_k + rank).
"""

from __future__ import annotations

import json
import time
import typing

from ragtune.config import RetrieveMode
from ragtune.errors import ConfigError
from ragtune.store.lancedb import sql_str
from ragtune.types import Hit

MODES: tuple[str, ...] = typing.get_args(RetrieveMode)
COLUMN_FILTERS = {"source": "string", "doc_id": "string", "title": "string", "heading": "string", "page": "int"}


def parse_filters(items: list[str] | dict[str, str] | None) -> str | None:
    """``["source=docs/*.md", "lang=en"]`` -> a SQL predicate for the store.

    Keys are chunk columns (source, doc_id, title, heading, page) or metadata fields (``meta.KEY``
    or a bare KEY that is not a column). ``*`` in a value is a wildcard.
    """
    if not items:
        return None
    pairs = list(items.items()) if isinstance(items, dict) else [_split(i) for i in items]
    return " AND ".join(_predicate(k, str(v)) for k, v in pairs)


def _split(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--filter {item!r} must look like KEY=VALUE (keys: {', '.join(COLUMN_FILTERS)} or meta.FIELD)")
    return key.strip(), value.strip()


def _predicate(key: str, value: str) -> str:
    if key in COLUMN_FILTERS:
        if COLUMN_FILTERS[key] == "int":
            if not value.isdigit():
                raise ConfigError(f"--filter {key}={value!r}: {key} must be a whole number")
            return f"{key} = {int(value)}"
        if "*" in value:
            return f"{key} LIKE {sql_str(value.replace('*', '%'))}"
        return f"{key} = {sql_str(value)}"
    field = key.removeprefix("meta.")
    if not field.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"--filter {key!r}: metadata field names are letters, digits, '_' and '-'")
    # metadata is stored as JSON with sorted keys and ", "/": " separators: match the encoded pair
    as_string = json.dumps({field: value})[1:-1]
    patterns = [as_string]
    if value.lstrip("-").replace(".", "", 1).isdigit() or value in ("true", "false"):
        patterns.append(f"{json.dumps(field)}: {value}")
    likes = " OR ".join(f"metadata LIKE {sql_str('%' + p + '%')}" for p in patterns)
    return f"({likes})"


def rrf(rankings: list[list[tuple[dict, float]]], weights: list[float], rrf_k: int) -> list[tuple[dict, float]]:
    """Reciprocal-rank fusion of several rankings of rows (matched by row id)."""
    scores: dict[str, float] = {}
    rows: dict[str, dict] = {}
    for ranking, w in zip(rankings, weights):
        for rank, (row, _) in enumerate(ranking, start=1):
            scores[row["id"]] = scores.get(row["id"], 0.0) + w / (rrf_k + rank)
            rows.setdefault(row["id"], row)
    order = sorted(scores, key=lambda i: (-scores[i], i))
    return [(rows[i], scores[i]) for i in order]


class RankingMemo:
    """Dense and BM25 rankings already computed, per (index version, query, filter), at least
    ``depth`` deep. Runs that differ only in k, mode or fusion settings reuse them instead of
    searching again (sweeps); a smaller k is a prefix of a deeper ranking.

    Latency stays honest: ``saved_s`` adds up the measured time of every search a hit skipped
    (query embedding included), and evaluations add it back to the run that reused the ranking.
    """

    def __init__(self, depth: int = 100) -> None:
        self.depth = depth
        self.saved_s = 0.0
        self._rankings: dict[tuple, tuple[int, list, float]] = {}

    def get(self, key: tuple, n: int, search) -> list[tuple[dict, float]]:
        depth, ranking, took = self._rankings.get(key, (0, [], 0.0))
        if depth < n:
            depth, t = max(n, self.depth), time.perf_counter()
            ranking = search(depth)
            self._rankings[key] = (depth, ranking, time.perf_counter() - t)
        else:
            self.saved_s += took
        return ranking[:n]


def retrieve(store, embedder, query: str, *, k: int = 5, mode: str = "hybrid", where: str | None = None,
             candidates: int = 50, rrf_k: int = 60, dense_weight: float = 1.0, bm25_weight: float = 1.0,
             memo: RankingMemo | None = None) -> list[Hit]:
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r} is not valid; choose one of: {', '.join(MODES)}")
    if not query.strip():
        raise ConfigError("the query is empty: give some words to search for")
    store.pin()  # one committed version for the whole search

    def dense(n: int) -> list[tuple[dict, float]]:
        search = lambda depth: store.dense(embedder.embed_query(query), depth, where)  # noqa: E731
        return memo.get((id(store), store.pinned_version, "dense", query, where), n, search) if memo else search(n)

    def bm25(n: int) -> list[tuple[dict, float]]:
        search = lambda depth: store.bm25(query, depth, where)  # noqa: E731
        return memo.get((id(store), store.pinned_version, "bm25", query, where), n, search) if memo else search(n)

    if mode == "dense":
        ranked = dense(k)
    elif mode == "bm25":
        ranked = bm25(k)
    else:
        n = max(k, candidates)
        ranked = rrf([dense(n), bm25(n)], [dense_weight, bm25_weight], rrf_k)
    return [_hit(rank, row, score) for rank, (row, score) in enumerate(ranked[:k], start=1)]


def _hit(rank: int, row: dict, score: float) -> Hit:
    return Hit(rank=rank, score=float(score), chunk_id=row["id"], doc_id=row["doc_id"], source=row["source"],
               title=row["title"], heading=row["heading"], page=row["page"], start=row["start"], end=row["end"],
               text=row["text"], metadata=json.loads(row["metadata"] or "{}"))

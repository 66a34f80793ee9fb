"""Retrieval: dense, BM25 and hybrid (reciprocal-rank fusion), with filters (``store.Filter``).

``Retriever(store, embedder, config)`` is the component the chain and the evaluations use;
``retriever.search(query, ...)`` returns ranked ``Hit``s. Dense hits carry their cosine
similarity to the query, and with ``similarity=True`` every hit does (the chain abstains on it).
Fusion is at chunk level: score = sum over retrievers of weight / (rrf_k + rank).

A retriever may own a ``RankingMemo``: retrievers made from it with ``configured(...)`` (other
k, mode or fusion settings over the same index) share it, so a sweep searches each question once.
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing
from concurrent.futures import ThreadPoolExecutor

from ragtune.config import RetrieveConfig, RetrieveMode
from ragtune.errors import ConfigError
from ragtune.store import Filter, Store, parse_filters
from ragtune.types import Hit

MODES: tuple[str, ...] = typing.get_args(RetrieveMode)


def rrf(rankings: list[list[Hit]], weights: list[float], rrf_k: int) -> list[Hit]:
    """Reciprocal-rank fusion of several rankings of the same chunks (matched by chunk id): the
    fused hits, best first, with the fused score (ranks are set by the caller)."""
    scores: dict[str, float] = {}
    hits: dict[str, Hit] = {}
    for ranking, w in zip(rankings, weights):
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + w / (rrf_k + rank)
            if hits.get(hit.chunk_id) is None or hits[hit.chunk_id].similarity is None:
                hits[hit.chunk_id] = hit  # keep the copy that knows its similarity
    order = sorted(scores, key=lambda i: (-scores[i], i))
    return [dataclasses.replace(hits[i], score=scores[i]) for i in order]


class RankingMemo:
    """Dense and BM25 rankings (``Hit`` lists) already computed, per (index version, query, filters), at least
    ``depth`` deep. Runs that differ only in k, mode or fusion settings reuse them instead of
    searching again (sweeps); a smaller k is a prefix of a deeper ranking.

    Latency stays honest: ``saved_s`` adds up the measured time of every search a hit skipped
    (query embedding included), and evaluations add it back to the run that reused the ranking.
    """

    def __init__(self, depth: int = 100) -> None:
        self.depth = depth
        self.saved_s = 0.0
        self._rankings: dict[tuple, tuple[int, list, float]] = {}

    def get(self, key: tuple, n: int, search) -> list[Hit]:
        depth, ranking, took = self._rankings.get(key, (0, [], 0.0))
        if depth < n:
            depth, t = max(n, self.depth), time.perf_counter()
            ranking = search(depth)
            self._rankings[key] = (depth, ranking, time.perf_counter() - t)
        else:
            self.saved_s += took
        return ranking[:n]


_beside: tuple[int, ThreadPoolExecutor] | None = None


def beside() -> ThreadPoolExecutor:
    """Threads for work that overlaps a search (a hybrid search's query embedding), one pool per process:
    a forked child gets a pool of its own, not its parent's threads, which it does not have."""
    global _beside
    if _beside is None or _beside[0] != os.getpid():
        _beside = (os.getpid(), ThreadPoolExecutor(thread_name_prefix="ragtune-beside"))
    return _beside[1]


def retrieve(store: Store, embedder, query: str, *, k: int = 5, mode: str = "hybrid", filters: tuple[Filter, ...] = (),
             candidates: int = 50, rrf_k: int = 60, dense_weight: float = 1.0, bm25_weight: float = 1.0,
             memo: RankingMemo | None = None, similarity: bool = False) -> list[Hit]:
    """The top ``k`` chunks for ``query`` in the index's latest version, which must have been built with
    ``embedder``. Dense hits know their cosine similarity; with ``similarity`` every hit gets it (a
    keyword-only query is then embedded too)."""
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r} is not valid; choose one of: {', '.join(MODES)}")
    if not query.strip():
        raise ConfigError("the query is empty: give some words to search for")
    store.pin(embedder.model_id)  # one committed version for the whole search, built with this embedder

    def dense(n: int) -> list[Hit]:  # embed_query remembers the vector: one embedding per query
        search = lambda depth: store.dense(embedder.embed_query(query), depth, filters)  # noqa: E731
        return memo.get((id(store), store.pinned_version, "dense", query, filters), n, search) if memo else search(n)

    def bm25(n: int) -> list[Hit]:
        search = lambda depth: store.bm25(query, depth, filters)  # noqa: E731
        return memo.get((id(store), store.pinned_version, "bm25", query, filters), n, search) if memo else search(n)

    if mode == "dense":
        ranked = dense(k)
    elif mode == "bm25":
        ranked = bm25(k)
    else:  # the query is embedded on another thread while the keyword search runs (both release the GIL)
        n = max(k, candidates)
        embedded = beside().submit(embedder.embed_query, query)
        keyword = bm25(n)
        embedded.result()  # dense's embed_query now finds the vector remembered
        ranked = rrf([dense(n), keyword], [dense_weight, bm25_weight], rrf_k)
    hits = [dataclasses.replace(h, rank=rank) for rank, h in enumerate(ranked[:k], start=1)]
    unknown = [h.chunk_id for h in hits if h.similarity is None]
    if similarity and unknown:  # keyword hits: their similarity from the store's vectors
        sims = store.similarities(embedder.embed_query(query), unknown)
        hits = [h if h.similarity is not None else dataclasses.replace(h, similarity=sims.get(h.chunk_id)) for h in hits]
    return hits


class Retriever:
    """Search one index with one embedder under ``[retrieve]`` settings."""

    def __init__(self, store: Store, embedder, config: RetrieveConfig | None = None, memo: RankingMemo | None = None) -> None:
        self.store, self.embedder, self.memo = store, embedder, memo
        self.config = config or RetrieveConfig()

    def configured(self, config: RetrieveConfig) -> "Retriever":
        """The same index, embedder and ranking memo under other ``[retrieve]`` settings."""
        return Retriever(self.store, self.embedder, config, self.memo)

    @property
    def saved_s(self) -> float:
        """Search time the ranking memo has saved so far (0 without a memo)."""
        return self.memo.saved_s if self.memo else 0.0

    def search(self, query: str, k: int | None = None, mode: str | None = None,
               filters: list[str] | dict[str, str] | tuple[Filter, ...] | None = None, similarity: bool = False) -> list[Hit]:
        """Ranked chunks for ``query``; ``k``/``mode`` default to the settings. ``filters``: KEY=VALUE
        strings, a dict, or ``Filter``s. ``similarity``: every hit gets its cosine similarity to the query."""
        r = self.config
        return retrieve(self.store, self.embedder, query, k=k or r.k, mode=mode or r.mode, filters=parse_filters(filters),
                        candidates=r.candidates, rrf_k=r.rrf_k, dense_weight=r.dense_weight, bm25_weight=r.bm25_weight,
                        memo=self.memo, similarity=similarity)

"""Ranking metrics with trec_eval's definitions (as used by BEIR through pytrec_eval):
linear gain, log2 discount, queries without any hit count as 0. Checked against ranx in tests.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence


def ndcg(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def first_relevant_rank(ranked: Sequence[str], rels: Mapping[str, int]) -> int | None:
    """The 1-based rank of the first relevant item, or None."""
    return next((i for i, d in enumerate(ranked, start=1) if rels.get(d, 0) > 0), None)


def mrr(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    rank = first_relevant_rank(ranked[:k], rels)
    return 1.0 / rank if rank else 0.0


METRICS = {"ndcg@10": (ndcg, 10), "recall@100": (recall, 100), "mrr@10": (mrr, 10), "recall@10": (recall, 10)}


def evaluate_run(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]],
                 metrics: Mapping[str, tuple] = METRICS) -> dict[str, float]:
    """Mean of each metric over the queries in ``qrels`` (a query missing from ``run`` scores 0)."""
    totals = {name: 0.0 for name in metrics}
    for qid, rels in qrels.items():
        ranked = run.get(qid, [])
        for name, (fn, k) in metrics.items():
            totals[name] += fn(ranked, rels, k)
    return {name: total / max(len(qrels), 1) for name, total in totals.items()}

"""Our metrics against ranx (a well-kept reference) on a small fixed qrels case."""

import pytest

from ragtune.evaluate.metrics import evaluate_run

QRELS = {
    "q1": {"d1": 1, "d3": 1},
    "q2": {"d7": 2, "d2": 1},
    "q3": {"d9": 1},                    # never retrieved: scores 0
    "q4": {"d4": 1, "d5": 1, "d6": 1},
}
RUN = {
    "q1": ["d3", "d2", "d1", "d8"],
    "q2": ["d2", "d5", "d6", "d7"],
    "q3": ["d1", "d2"],
    "q4": ["d0"] * 0 + ["d10", "d11", "d4"] + [f"x{i}" for i in range(120)] + ["d6"],
}


def test_metrics_match_ranx():
    ranx = pytest.importorskip("ranx")
    ours = evaluate_run(RUN, QRELS)
    # ranx takes scores; give strictly decreasing scores in rank order
    run = ranx.Run({q: {d: 1000.0 - i for i, d in enumerate(docs)} for q, docs in RUN.items()})
    ref = ranx.evaluate(ranx.Qrels(QRELS), run, ["ndcg@10", "recall@100", "mrr@10", "recall@10"])
    for name in ref:
        assert ours[name] == pytest.approx(ref[name], abs=1e-9), name
    assert 0 < ours["ndcg@10"] < 1


def test_hand_computed_values():
    import math

    ours = evaluate_run({"q": ["a", "b", "c"]}, {"q": {"c": 1}})
    assert ours["mrr@10"] == pytest.approx(1 / 3)
    assert ours["ndcg@10"] == pytest.approx(1 / math.log2(4))
    assert ours["recall@10"] == 1.0

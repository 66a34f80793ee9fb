"""evaluate_qa with answering functions: no model needed to check the loop, the rows and the charging."""

import pytest

from ragtune.errors import ConfigError
from ragtune.evaluate.qa_eval import Answerer, Prediction, answerer, evaluate_qa, retrieval_arm
from ragtune.types import Hit, QAItem

ITEMS = [QAItem("a", "Where is the badge office?", ["room G-114"], ["docs/security.md"]),
         QAItem("b", "Who founded it?", ["Vantreight"])]


def test_any_answering_function_is_evaluated_and_aggregated():
    calls = []

    def answer(item):
        calls.append(item.id)
        return Prediction(item.id, item.question, item.answers, prediction="room G-114", abstained=False, em=1.0, f1=1.0,
                          contains=1.0, timings={"total_s": 0.5})

    result = evaluate_qa(ITEMS, Answerer("custom", answer, k=3, mode="dense", generator="scripted",
                                         warm_up=lambda: calls.append("warm-up")))
    assert calls == ["warm-up", "a", "b"]
    assert (result.arm, result.questions, result.k, result.mode, result.generator) == ("custom", 2, 3, "dense", "scripted")
    assert result.metrics["f1"] == 1.0 and result.metrics["total_p50_ms"] == pytest.approx(500.0) and result.started
    row = result.to_dict()["predictions"][0]
    assert "gold_rank" not in row and "retrieved" not in row and row["prediction"] == "room G-114"


class FakeRetriever:
    """Ranks the same two chunks for every question; each search 'saves' 0.25 s as a memo hit would."""

    class config:
        k, mode = 2, "dense"

    def __init__(self):
        self.saved_s = 0.0

    def search(self, question, k=None, mode=None):
        self.saved_s += 0.25
        return [Hit(chunk_id=f"c{i}", doc_id=d, source=d, text="", score=1.0, rank=i, title="", heading="", page=None,
                    start=0, end=0, metadata={}) for i, d in enumerate(["docs/other.md", "docs/security.md"], start=1)]


def test_the_retrieval_arm_finds_gold_ranks_and_charges_reused_rankings():
    retriever = FakeRetriever()
    result = evaluate_qa(ITEMS, retrieval_arm(retriever, 2, "dense"))
    first, second = result.predictions
    assert first.gold_rank == 2 and first.ndcg == pytest.approx(1 / 1.5849625, rel=1e-6)  # gold at rank 2
    assert second.gold_rank is None and not second.has_gold_docs
    assert first.timings["reused_s"] == pytest.approx(0.25) and first.timings["total_s"] >= 0.25
    assert "gold_rank" in first.to_dict() and "gold_rank" not in second.to_dict()
    assert result.metrics["recall@k"] == 1.0 and result.metrics["mrr@k"] == 0.5 and "abstention_rate" not in result.metrics


def test_an_unknown_arm_is_a_config_error():
    with pytest.raises(ConfigError, match="--arm 'chat' is not valid"):
        answerer("chat")

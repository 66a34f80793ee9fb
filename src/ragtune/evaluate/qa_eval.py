"""``ragtune eval qa``: answer every question of a QA set with one arm and score answers,
evidence, citations, groundedness and cost. Every prediction keeps its exact prompt, retrieved
chunks and answer, so a failure can be inspected.

Arms: ``rag`` (retrieve, augment, generate), ``closed-book`` (the generator alone) and
``retrieval`` (evidence metrics only, no generation: fast, for retrieval sweeps and BEIR sets).

A gold doc id matches a retrieved chunk's ``doc_id`` exactly or as its trailing path
(``history.html`` matches ``docs/history.html``), so a question set need not know where the
workspace sits. Evidence metrics, over questions with gold ``doc_ids``: ``recall@k`` = share of questions with a
chunk of a gold document in the top k; ``mrr@k`` = mean of 1/rank of the first such chunk;
``ndcg@k`` = nDCG of the document ranking (a document ranks by its best chunk; graded relevance
from ``metadata["qrels"]`` when given, else 1 per gold document).
"""

from __future__ import annotations

import time
import typing
from typing import Any, Literal

import numpy as np

from ragtune.errors import ConfigError
from ragtune.evaluate.answers import abstained, best, contains, exact_match, f1, groundedness, normalize_answer
from ragtune.evaluate.metrics import ndcg
from ragtune.types import Answer, Hit, QAItem

Arm = Literal["rag", "closed-book", "retrieval"]
ARMS: tuple[str, ...] = typing.get_args(Arm)
CLOSED_BOOK = "Answer the question briefly and directly. If you do not know, say that you don't know."


def evaluate_qa(ws, items: list[QAItem], arm: str = "rag", k: int | None = None, mode: str | None = None,
                progress=None, judge=None) -> dict[str, Any]:
    """Answer and score every item; with ``judge`` (a generator) every answer is also graded by it
    (``evaluate.judge``: strict verdicts, parse failures counted in the metrics)."""
    if arm not in ARMS:
        raise ConfigError(f"--arm {arm!r} is not valid; choose one of: {', '.join(ARMS)}")
    from ragtune.ingest.pipeline import Quiet

    answer = {"rag": _rag, "closed-book": _closed_book, "retrieval": _retrieval}[arm]
    k, mode = k or ws.config.retrieve.k, mode or ws.config.retrieve.mode
    progress = progress or Quiet()
    task = progress.task(f"{arm} {'searches' if arm == 'retrieval' else 'answers'}", len(items))
    if arm != "closed-book" and items:
        ws.search("warm-up: load the index and the embedder", k=k, mode=mode)  # not timed
    predictions = []
    for item in items:
        memo, saved = ws.rankings, ws.rankings.saved_s if ws.rankings else 0.0
        row = answer(ws, item, k, mode)
        if memo and memo.saved_s > saved:  # rankings reused from another run: charge their measured cost
            _charge(row["timings"], memo.saved_s - saved)
        predictions.append(row)
        progress.advance(task)
    metrics = aggregate(predictions)
    if judge is not None and arm != "retrieval":
        metrics.update(_judge_all(judge, items, predictions, progress))
    return {"arm": arm, "questions": len(items), "generator": None if arm == "retrieval" else ws.generator.name,
            "k": k, "mode": None if arm == "closed-book" else mode, "judge": getattr(judge, "name", None),
            "metrics": metrics, "predictions": predictions}


def _judge_all(generator, items: list[QAItem], predictions: list[dict[str, Any]], progress) -> dict[str, Any]:
    """Grade every answered question that has reference answers; stores each verdict in its row."""
    from ragtune.evaluate.judge import aggregate_judgements, judge

    todo = [(item, row) for item, row in zip(items, predictions) if item.answers and not row["abstained"]]
    task = progress.task("judgements", len(todo))
    judgements = []
    for item, row in todo:
        j = judge(generator, item.question, row["prediction"], item.answers)
        row["judge"] = {"score": j.score, "verdict": j.verdict, "parsed": j.parsed, "raw": j.raw, "error": j.error,
                        "prompt": j.prompt}
        judgements.append(j)
        progress.advance(task)
    return {k: v for k, v in aggregate_judgements(judgements).items() if v is not None}


def _charge(timings: dict[str, float], seconds: float) -> None:
    timings["reused_s"] = seconds
    for stage in ("retrieve_s", "total_s"):
        if stage in timings:
            timings[stage] += seconds


def _scores(item: QAItem, text: str, is_abstention: bool) -> dict[str, Any]:
    row = {"id": item.id, "question": item.question, "answers": item.answers, "prediction": text, "abstained": is_abstention}
    if item.answers:
        row.update(em=best(exact_match, text, item.answers), f1=best(f1, text, item.answers),
                   contains=best(contains, text, item.answers))
    return row


def _evidence(item: QAItem, hits: list[Hit], k: int) -> dict[str, Any]:
    """The retrieved chunks, and (with gold doc ids) the gold rank and nDCG of the document ranking."""
    row: dict[str, Any] = {"retrieved": [{"rank": h.rank, "chunk_id": h.chunk_id, "doc_id": h.doc_id, "source": h.source}
                                         for h in hits]}
    if item.doc_ids:
        row["gold_rank"] = next((h.rank for h in hits if gold_doc(h.doc_id, item.doc_ids)), None)
        rels = item.metadata.get("qrels") or dict.fromkeys(item.doc_ids, 1)
        ranked = [gold_doc(d, rels) or d for d in dict.fromkeys(h.doc_id for h in hits)]
        row["ndcg"] = ndcg(ranked, rels, k)
    return row


def gold_doc(doc_id: str, gold) -> str | None:
    """The gold id that ``doc_id`` is (exactly, or as a trailing path), else None."""
    if doc_id in gold:
        return doc_id
    return next((g for g in gold if doc_id.endswith("/" + g)), None)


def _retrieval(ws, item: QAItem, k: int, mode: str) -> dict[str, Any]:
    t = time.perf_counter()
    hits = ws.search(item.question, k=k, mode=mode)
    took = time.perf_counter() - t
    return {"id": item.id, "question": item.question, "answers": item.answers, **_evidence(item, hits, k),
            "usage": {}, "timings": {"retrieve_s": took, "total_s": took}}


def _closed_book(ws, item: QAItem, k: int, mode: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": CLOSED_BOOK}, {"role": "user", "content": item.question}]
    g = ws.generator.generate(messages)
    return {**_scores(item, g.text.strip(), abstained(g.text)), "prompt": g.prompt, "retrieved": [],
            "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens},
            "timings": {"generate_s": g.total_s, "total_s": g.total_s}}


def _rag(ws, item: QAItem, k: int, mode: str) -> dict[str, Any]:
    answer: Answer = ws.ask(item.question, k=k, mode=mode)
    hits = sorted([s.hit for s in answer.sources] + answer.dropped, key=lambda h: h.rank)
    row = {**_scores(item, answer.text, answer.abstained or abstained(answer.text)), "prompt": answer.prompt,
           **_evidence(item, hits, k), "citations": answer.citations, "citation_method": answer.citation_method,
           "usage": answer.usage, "timings": answer.timings}
    cited = [s.hit for s in answer.sources if s.number in answer.citations]
    if cited:
        golds = [normalize_answer(a) for a in item.answers]
        good = [h for h in cited if gold_doc(h.doc_id, item.doc_ids) or any(g and g in normalize_answer(h.text) for g in golds)]
        row["citation_precision"] = len(good) / len(cited)
    if not row["abstained"]:
        row["groundedness"] = groundedness(answer.text, "\n".join(s.hit.text for s in answer.sources))
    return row


def aggregate(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        values = [p[key] for p in predictions if p.get(key) is not None]
        return float(np.mean(values)) if values else None

    out: dict[str, Any] = {"em": mean("em"), "f1": mean("f1"), "contains": mean("contains")}
    if any("prediction" in p for p in predictions):
        out["abstention_rate"] = float(np.mean([p["abstained"] for p in predictions if "prediction" in p]))
    ranked = [p for p in predictions if "gold_rank" in p]
    if ranked:
        out["recall@k"] = float(np.mean([p["gold_rank"] is not None for p in ranked]))
        out["mrr@k"] = float(np.mean([1 / p["gold_rank"] if p["gold_rank"] else 0.0 for p in ranked]))
        out["ndcg@k"] = mean("ndcg")
    out["citation_precision"] = mean("citation_precision")
    out["groundedness"] = mean("groundedness")  # lexical: share of answer content words found in the sources given
    for stage in ("retrieve_s", "generate_s", "total_s"):
        values = [p["timings"].get(stage) for p in predictions if p["timings"].get(stage) is not None]
        if values:
            out[f"{stage[:-2]}_p50_ms"] = float(np.percentile(values, 50) * 1000)
            out[f"{stage[:-2]}_p95_ms"] = float(np.percentile(values, 95) * 1000)
    for kind in ("prompt_tokens", "completion_tokens"):
        if any(kind in p["usage"] for p in predictions):
            out[f"{kind}_mean"] = float(np.mean([p["usage"].get(kind, 0) for p in predictions]))
    return {key: value for key, value in out.items() if value is not None}

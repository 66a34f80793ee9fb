"""``ragtune eval qa``: answer every question of a QA set with one arm (RAG or closed-book) and
score answers, evidence, citations, groundedness and cost. Every prediction keeps its exact
prompt, retrieved chunks and answer, so a failure can be inspected."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ragtune.errors import ConfigError
from ragtune.evaluate.answers import abstained, best, contains, exact_match, f1, groundedness, normalize_answer
from ragtune.types import Answer, QAItem

ARMS = ("rag", "closed-book")
CLOSED_BOOK = "Answer the question briefly and directly. If you do not know, say that you don't know."


def evaluate_qa(ws, items: list[QAItem], arm: str = "rag", k: int | None = None, mode: str | None = None,
                progress=None) -> dict[str, Any]:
    if arm not in ARMS:
        raise ConfigError(f"--arm {arm!r} is not valid; choose one of: {', '.join(ARMS)}")
    from ragtune.ingest.pipeline import Quiet

    progress = progress or Quiet()
    task = progress.task(f"{arm} answers", len(items))
    predictions = []
    for item in items:
        predictions.append(_rag(ws, item, k, mode) if arm == "rag" else _closed_book(ws, item))
        progress.advance(task)
    return {"arm": arm, "questions": len(items), "generator": ws.generator.name, "k": k or ws.config.retrieve.k,
            "mode": mode or ws.config.retrieve.mode, "metrics": aggregate(predictions), "predictions": predictions}


def _scores(item: QAItem, text: str, is_abstention: bool) -> dict[str, Any]:
    return {"id": item.id, "question": item.question, "answers": item.answers, "prediction": text,
            "em": best(exact_match, text, item.answers), "f1": best(f1, text, item.answers),
            "contains": best(contains, text, item.answers), "abstained": is_abstention}


def _closed_book(ws, item: QAItem) -> dict[str, Any]:
    messages = [{"role": "system", "content": CLOSED_BOOK}, {"role": "user", "content": item.question}]
    g = ws.generator.generate(messages)
    return {**_scores(item, g.text.strip(), abstained(g.text)), "prompt": g.prompt, "retrieved": [],
            "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens},
            "timings": {"retrieve_s": 0.0, "generate_s": g.total_s, "total_s": g.total_s}}


def _rag(ws, item: QAItem, k: int | None, mode: str | None) -> dict[str, Any]:
    answer: Answer = ws.ask(item.question, k=k, mode=mode)
    hits = [s.hit for s in answer.sources] + answer.dropped
    hits.sort(key=lambda h: h.rank)
    row = {**_scores(item, answer.text, answer.abstained or abstained(answer.text)), "prompt": answer.prompt,
           "retrieved": [{"rank": h.rank, "chunk_id": h.chunk_id, "doc_id": h.doc_id, "source": h.source} for h in hits],
           "citations": answer.citations, "citation_method": answer.citation_method,
           "usage": answer.usage, "timings": answer.timings}
    if item.doc_ids:
        gold = set(item.doc_ids)
        row["gold_rank"] = next((h.rank for h in hits if h.doc_id in gold), None)
    cited = [s.hit for s in answer.sources if s.number in answer.citations]
    if cited:
        golds = [normalize_answer(a) for a in item.answers]
        good = [h for h in cited if h.doc_id in item.doc_ids or any(g and g in normalize_answer(h.text) for g in golds)]
        row["citation_precision"] = len(good) / len(cited)
    if not row["abstained"]:
        row["groundedness"] = groundedness(answer.text, "\n".join(s.hit.text for s in answer.sources))
    return row


def aggregate(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        values = [p[key] for p in predictions if p.get(key) is not None]
        return float(np.mean(values)) if values else None

    out: dict[str, Any] = {"em": mean("em"), "f1": mean("f1"), "contains": mean("contains"),
                           "abstention_rate": float(np.mean([p["abstained"] for p in predictions]))}
    ranked = [p for p in predictions if "gold_rank" in p]
    if ranked:
        out["recall@k"] = float(np.mean([p["gold_rank"] is not None for p in ranked]))
        out["mrr@k"] = float(np.mean([1 / p["gold_rank"] if p["gold_rank"] else 0.0 for p in ranked]))
    out["citation_precision"] = mean("citation_precision")
    out["groundedness"] = mean("groundedness")  # lexical: share of answer content words found in the sources given
    for stage in ("retrieve_s", "generate_s", "total_s"):
        values = [p["timings"].get(stage) for p in predictions if p["timings"].get(stage) is not None]
        if values:
            out[f"{stage[:-2]}_p50_ms"] = float(np.percentile(values, 50) * 1000)
            out[f"{stage[:-2]}_p95_ms"] = float(np.percentile(values, 95) * 1000)
    for kind in ("prompt_tokens", "completion_tokens"):
        out[f"{kind}_mean"] = float(np.mean([p["usage"].get(kind, 0) for p in predictions]))
    return out

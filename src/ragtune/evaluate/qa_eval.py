"""``ragtune eval qa``: answer every question of a QA set with one arm and score answers,
evidence, citations, groundedness and cost. Every prediction keeps its exact prompt, retrieved
chunks and answer, so a failure can be inspected.

Arms: ``rag`` (retrieve, augment, generate), ``closed-book`` (the generator alone),
``retrieval`` (evidence metrics only, no generation: fast, for retrieval sweeps and BEIR sets) and
``agent`` (the tool-using agent: its steps, tool calls and their validity are kept and measured).
An arm is an answering function, ``Answerer``: a question in, a ``Prediction`` out, built from
components (``rag_arm(chain)``, ``closed_book_arm(generator)``, ``retrieval_arm(retriever)``,
``agent_arm(agent)``);
``evaluate_qa(items, answerer)`` runs any of them and returns an ``EvalResult``.

A gold doc id matches a retrieved chunk's ``doc_id`` exactly or as its trailing path
(``history.html`` matches ``docs/history.html``), so a question set need not know where the
workspace sits. Evidence metrics, over questions with gold ``doc_ids``: ``recall@k`` = share of questions with a
chunk of a gold document in the top k; ``mrr@k`` = mean of 1/rank of the first such chunk;
``ndcg@k`` = nDCG of the document ranking (a document ranks by its best chunk; graded relevance
from ``metadata["qrels"]`` when given, else 1 per gold document).
"""

from __future__ import annotations

import dataclasses
import time
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from ragtune.errors import ConfigError
from ragtune.evaluate.answers import abstained, best, contains, exact_match, f1, groundedness, normalize_answer
from ragtune.evaluate.metrics import first_relevant_rank, ndcg
from ragtune.files import utc_now
from ragtune.progress import Quiet
from ragtune.types import Answer, Hit, QAItem

Arm = Literal["rag", "closed-book", "retrieval", "agent"]
ARMS: tuple[str, ...] = typing.get_args(Arm)
CLOSED_BOOK = "Answer the question briefly and directly. If you do not know, say that you don't know."


@dataclass
class Prediction:
    """One question answered by one arm: the answer and its scores, the exact prompt, the retrieved
    chunks, usage and timings. Fields an arm does not produce stay None (and out of ``to_dict``)."""

    id: str
    question: str
    answers: list[str]
    prediction: str | None = None  # None: the retrieval arm generates nothing
    abstained: bool | None = None
    em: float | None = None
    f1: float | None = None
    contains: float | None = None
    prompt: str | None = None
    retrieved: list[dict[str, Any]] | None = None
    gold_rank: int | None = None  # rank of the first chunk of a gold document (None: not retrieved)
    ndcg: float | None = None  # set when the question has gold doc ids
    citations: list[int] | None = None
    citation_method: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    citation_precision: float | None = None
    groundedness: float | None = None
    judge: dict[str, Any] | None = None
    steps: list[dict[str, Any]] | None = None  # the agent arm's model calls (prompt, reply, call, result)
    stopped: str | None = None  # the agent arm: "answer", "budget", or "repeat" (a call repeated)
    trace: list[dict[str, Any]] | None = None  # the agent arm's conversation (TRL messages with tool_calls)

    @property
    def has_gold_docs(self) -> bool:
        return self.ndcg is not None

    def to_dict(self) -> dict[str, Any]:
        """The row of ``predictions.jsonl``; ``gold_rank`` is kept (null = not retrieved) for questions with gold docs."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if v is not None or (k == "gold_rank" and self.has_gold_docs)}


@dataclass
class EvalResult:
    arm: str
    questions: int
    generator: str | None  # None for the retrieval arm
    k: int | None
    mode: str | None  # None for the closed-book arm
    judge: str | None
    metrics: dict[str, Any]
    predictions: list[Prediction]
    started: str = ""  # UTC time the evaluation began (milliseconds: runs of a sweep sort in order)

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "predictions"},
                "predictions": [p.to_dict() for p in self.predictions]}


@dataclass
class Answerer:
    """One arm as an answering function: ``answerer(item) -> Prediction``, plus what it is."""

    arm: str
    answer: Callable[[QAItem], Prediction]
    k: int | None = None
    mode: str | None = None
    generator: str | None = None
    warm_up: Callable[[], Any] | None = None  # loads the index and models before the timed questions

    def __call__(self, item: QAItem) -> Prediction:
        return self.answer(item)


def evaluate_qa(items: list[QAItem], answerer: Answerer, progress=None, judge=None) -> EvalResult:
    """Answer and score every item; with ``judge`` (a generator) every answer is also graded by it
    (``evaluate.judge``: strict verdicts, parse failures counted in the metrics)."""
    started = utc_now("milliseconds")
    progress = progress or Quiet()
    task = progress.task(f"{answerer.arm} {'searches' if answerer.arm == 'retrieval' else 'answers'}", len(items))
    if answerer.warm_up and items:
        answerer.warm_up()  # not timed
    predictions = []
    for item in items:
        predictions.append(answerer(item))
        progress.advance(task)
    metrics = aggregate(predictions)
    if judge is not None and answerer.arm != "retrieval":
        metrics.update(_judge_all(judge, items, predictions, progress))
    return EvalResult(answerer.arm, len(items), answerer.generator, answerer.k, answerer.mode, getattr(judge, "name", None),
                      metrics, predictions, started)


def answerer(arm: str, *, retriever=None, generator=None, chain=None, agent=None, k: int | None = None,
             mode: str | None = None) -> Answerer:
    """The ``Answerer`` of ``arm`` from the components it needs (rag: ``chain``; closed-book:
    ``generator``; retrieval: ``retriever``; agent: ``agent``); ``k``/``mode`` default to the retriever's settings."""
    if arm not in ARMS:
        raise ConfigError(f"--arm {arm!r} is not valid; choose one of: {', '.join(ARMS)}")
    if arm == "closed-book":
        return closed_book_arm(generator)
    if arm == "agent":
        return agent_arm(agent)
    retriever = retriever or chain.retriever
    k, mode = k or retriever.config.k, mode or retriever.config.mode
    return rag_arm(chain, k, mode) if arm == "rag" else retrieval_arm(retriever, k, mode)


def workspace_answerer(ws, arm: str, k: int | None = None, mode: str | None = None, retriever=None) -> Answerer:
    """``answerer`` with the components a workspace assembles from its settings (``retriever``: another
    one over the same settings, e.g. a sweep's with a shared ranking memo)."""
    if arm not in ARMS:
        raise ConfigError(f"--arm {arm!r} is not valid; choose one of: {', '.join(ARMS)}")
    if arm == "closed-book":
        return answerer(arm, generator=ws.generator)
    if arm == "agent":
        return answerer(arm, agent=ws.agent())
    retriever = retriever or ws.retriever
    return answerer(arm, retriever=retriever, chain=ws.chain(retriever) if arm == "rag" else None, k=k, mode=mode)


def retrieval_arm(retriever, k: int, mode: str) -> Answerer:
    def answer(item: QAItem) -> Prediction:
        t = time.perf_counter()
        hits = retriever.search(item.question, k=k, mode=mode)
        took = time.perf_counter() - t
        return Prediction(item.id, item.question, item.answers, **_evidence(item, hits, k),
                          timings={"retrieve_s": took, "total_s": took})

    return Answerer("retrieval", _charged(retriever, answer), k, mode, None, _warm_up(retriever, k, mode))


def closed_book_arm(generator) -> Answerer:
    def answer(item: QAItem) -> Prediction:
        messages = [{"role": "system", "content": CLOSED_BOOK}, {"role": "user", "content": item.question}]
        g = generator.generate(messages)
        return Prediction(item.id, item.question, item.answers, **_scores(item, g.text.strip(), abstained(g.text)),
                          prompt=g.prompt, retrieved=[],
                          usage={"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens},
                          timings={"generate_s": g.total_s, "total_s": g.total_s})

    return Answerer("closed-book", answer, None, None, generator.name)


def rag_arm(chain, k: int, mode: str) -> Answerer:
    def answer(item: QAItem) -> Prediction:
        a: Answer = chain.ask(item.question, k=k, mode=mode)
        hits = sorted([s.hit for s in a.sources] + a.dropped, key=lambda h: h.rank)
        p = Prediction(item.id, item.question, item.answers, **_scores(item, a.text, a.abstained or abstained(a.text)),
                       prompt=a.prompt, **_evidence(item, hits, k), citations=a.citations,
                       citation_method=a.citation_method, usage=a.usage, timings=a.timings)
        return _attributed(p, item, a)

    return Answerer("rag", _charged(chain.retriever, answer), k, mode, chain.generator.name, _warm_up(chain.retriever, k, mode))


def agent_arm(agent) -> Answerer:
    """The tool-using agent (``agent.loop.Agent``): the sources its tools returned are its evidence, in
    the order they came; every step is kept with the prediction."""
    def answer(item: QAItem) -> Prediction:
        a: Answer = agent.run(item.question)
        hits = [s.hit for s in a.sources]
        p = Prediction(item.id, item.question, item.answers, **_scores(item, a.text, a.abstained or abstained(a.text)),
                       prompt=a.prompt, **_evidence(item, hits, max(len(hits), 1)), citations=a.citations,
                       citation_method=a.citation_method, usage=a.usage, timings=a.timings,
                       steps=[s.to_dict() for s in a.steps], stopped=a.stopped, trace=a.messages)
        p = _attributed(p, item, a)
        if not a.sources:
            p.groundedness = None  # no documents were consulted (e.g. only the calculator): nothing to be grounded in
        return p

    return Answerer("agent", answer, None, None, agent.generator.name)


def _attributed(p: Prediction, item: QAItem, a: Answer) -> Prediction:
    """Citation precision (cited sources that hold a gold document or a gold answer) and groundedness."""
    cited = [s.hit for s in a.sources if s.number in a.citations]
    if cited:
        golds = [normalize_answer(g) for g in item.answers]
        good = [h for h in cited if gold_doc(h.doc_id, item.doc_ids) or any(g and g in normalize_answer(h.text) for g in golds)]
        p.citation_precision = len(good) / len(cited)
    if not p.abstained:
        p.groundedness = groundedness(a.text, "\n".join(s.hit.text for s in a.sources))
    return p


def _warm_up(retriever, k: int, mode: str) -> Callable[[], Any]:
    return lambda: retriever.search("warm-up: load the index and the embedder", k=k, mode=mode)


def _charged(retriever, answer: Callable[[QAItem], Prediction]) -> Callable[[QAItem], Prediction]:
    """``answer`` charging each prediction with the search time its retriever's ranking memo saved it:
    rankings reused from another run of a sweep cost what they cost when they were computed."""
    def charged(item: QAItem) -> Prediction:
        saved = retriever.saved_s
        p = answer(item)
        if retriever.saved_s > saved:
            p.timings["reused_s"] = retriever.saved_s - saved
            for stage in ("retrieve_s", "total_s"):
                if stage in p.timings:
                    p.timings[stage] += retriever.saved_s - saved
        return p

    return charged


def _judge_all(generator, items: list[QAItem], predictions: list[Prediction], progress) -> dict[str, Any]:
    """Grade every answered question that has reference answers; stores each verdict in its prediction."""
    from ragtune.evaluate.judge import aggregate_judgements, judge

    todo = [(item, p) for item, p in zip(items, predictions) if item.answers and not p.abstained]
    task = progress.task("judgements", len(todo))
    judgements = []
    for item, p in todo:
        j = judge(generator, item.question, p.prediction, item.answers)
        p.judge = {"score": j.score, "verdict": j.verdict, "parsed": j.parsed, "raw": j.raw, "error": j.error, "prompt": j.prompt}
        judgements.append(j)
        progress.advance(task)
    return {k: v for k, v in aggregate_judgements(judgements).items() if v is not None}


def _scores(item: QAItem, text: str, is_abstention: bool) -> dict[str, Any]:
    scores: dict[str, Any] = {"prediction": text, "abstained": is_abstention}
    if item.answers:
        scores.update(em=best(exact_match, text, item.answers), f1=best(f1, text, item.answers),
                      contains=best(contains, text, item.answers))
    return scores


def _evidence(item: QAItem, hits: list[Hit], k: int) -> dict[str, Any]:
    """The retrieved chunks, and (with gold doc ids) the gold rank and nDCG of the document ranking."""
    evidence: dict[str, Any] = {"retrieved": [{"rank": h.rank, "chunk_id": h.chunk_id, "doc_id": h.doc_id, "source": h.source}
                                              for h in hits]}
    if item.doc_ids:
        gold = dict.fromkeys(item.doc_ids, 1)
        evidence["gold_rank"] = first_relevant_rank([gold_doc(h.doc_id, gold) or h.doc_id for h in hits], gold)
        rels = item.metadata.get("qrels") or gold
        ranked = [gold_doc(d, rels) or d for d in dict.fromkeys(h.doc_id for h in hits)]
        evidence["ndcg"] = ndcg(ranked, rels, k)
    return evidence


def gold_doc(doc_id: str, gold) -> str | None:
    """The gold id that ``doc_id`` is (exactly, or as a trailing path), else None."""
    if doc_id in gold:
        return doc_id
    return next((g for g in gold if doc_id.endswith("/" + g)), None)


def aggregate(predictions: list[Prediction]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        values = [getattr(p, key) for p in predictions if getattr(p, key) is not None]
        return float(np.mean(values)) if values else None

    out: dict[str, Any] = {"em": mean("em"), "f1": mean("f1"), "contains": mean("contains")}
    answered = [p for p in predictions if p.prediction is not None]
    if answered:
        out["abstention_rate"] = float(np.mean([p.abstained for p in answered]))
    ranked = [p for p in predictions if p.has_gold_docs]
    if ranked:  # recall@k: a gold chunk anywhere in the top k; mrr@k: 1 / rank of the first one
        out["recall@k"] = float(np.mean([p.gold_rank is not None for p in ranked]))
        out["mrr@k"] = float(np.mean([1 / p.gold_rank if p.gold_rank else 0.0 for p in ranked]))
        out["ndcg@k"] = mean("ndcg")
    out["citation_precision"] = mean("citation_precision")
    out["groundedness"] = mean("groundedness")  # lexical: share of answer content words found in the sources given
    for stage in ("retrieve_s", "generate_s", "total_s"):
        values = [p.timings.get(stage) for p in predictions if p.timings.get(stage) is not None]
        if values:
            out[f"{stage[:-2]}_p50_ms"] = float(np.percentile(values, 50) * 1000)
            out[f"{stage[:-2]}_p95_ms"] = float(np.percentile(values, 95) * 1000)
    for kind in ("prompt_tokens", "completion_tokens"):
        if any(kind in p.usage for p in predictions):
            out[f"{kind}_mean"] = float(np.mean([p.usage.get(kind, 0) for p in predictions]))
    out.update(agent_metrics(predictions))
    return {key: value for key, value in out.items() if value is not None}


def agent_metrics(predictions: list[Prediction]) -> dict[str, float]:
    """The agent arm's: steps and tool calls per question, the share of replies that were valid actions
    (``tool_call_validity``; 1.0 by construction on llama.cpp), tool errors, and questions the budget
    stopped or a repeated call ended."""
    runs = [p for p in predictions if p.steps is not None]
    if not runs:
        return {}
    steps = [s for p in runs for s in p.steps]
    return {"steps_mean": float(np.mean([len(p.steps) for p in runs])),
            "tool_calls_mean": float(np.mean([sum(s["tool"] is not None for s in p.steps) for p in runs])),
            "tool_call_validity": float(np.mean([s["error"] != "parse" for s in steps])) if steps else 1.0,
            "tool_error_rate": float(np.mean([s["error"] == "tool" for s in steps])) if steps else 0.0,
            "stopped_by_budget": float(np.mean([p.stopped == "budget" for p in runs])),
            "stopped_by_repeat": float(np.mean([p.stopped == "repeat" for p in runs]))}

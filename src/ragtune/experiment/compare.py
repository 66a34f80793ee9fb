"""Comparing evaluation runs: which metrics they have and in which direction each is better,
their settings and what differs, the quality-vs-latency Pareto front, and question-by-question
wins and losses against a baseline. ``ragtune report`` draws these as HTML; ``ragtune runs
compare`` prints them (``compare_runs``)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ragtune.experiment.runs import Run

# Column order of the metrics table; "name@" matches any k. Metrics not listed follow, by name.
METRIC_ORDER = ("em", "f1", "contains", "abstention_rate", "recall@", "mrr@", "ndcg@", "citation_precision",
                "groundedness", "judge_score", "judge_parse_failure_rate", "total_p50_ms", "total_p95_ms",
                "retrieve_p50_ms", "retrieve_p95_ms", "generate_p50_ms", "generate_p95_ms",
                "prompt_tokens_mean", "completion_tokens_mean")
HIGHER_IS_BETTER = ("em", "f1", "contains", "recall@", "mrr@", "ndcg@", "precision@", "map@", "hit@",
                    "citation_precision", "groundedness", "judge_score")
LOWER_IS_BETTER = ("_ms", "_tokens_mean", "judge_parse_failure_rate")  # suffixes
LABELS = {"em": "EM", "f1": "F1", "abstention_rate": "abstained", "judge_parse_failure_rate": "judge parse fail",
          "prompt_tokens_mean": "prompt tokens", "completion_tokens_mean": "completion tokens"}
# Run-level quality for the chart, in order of preference, and its per-question form.
QUALITY_PREFIXES = ("f1", "recall@", "ndcg@")
LATENCIES = ("total_p50_ms", "retrieve_p50_ms")
PER_QUESTION = {"f1": "token F1 of the prediction",
                "hit": "gold document retrieved (1) or not (0)",
                "ndcg": "nDCG of the document ranking"}
TOP = 5  # rows in each wins/losses/failures list


# ---------------------------------------------------------------------------------------------
# Reading runs


def run_name(run: Run) -> str:
    return str(run.info.get("name") or run.id)


def number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool, NaN or infinity), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def metric(run: Run, key: str) -> float | None:
    return number((run.metrics or {}).get(key))


def metric_columns(runs: list[Run]) -> list[str]:
    """Numeric metrics (NaN included: it is shown as stored) that at least one run has, in table order."""
    keys = {k for r in runs for k, v in (r.metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return sorted(keys, key=_metric_order)


def matches(key: str, name: str) -> bool:
    """``key`` is metric ``name``; a name ending in "@" stands for every k (``recall@`` matches ``recall@10``)."""
    return key == name or (name.endswith("@") and key.startswith(name))


def _metric_order(key: str) -> tuple[int, int, str]:
    for i, name in enumerate(METRIC_ORDER):
        if matches(key, name):
            return i, _at_k(key), key
    return len(METRIC_ORDER), 0, key


def _at_k(key: str) -> int:
    """The k of ``recall@10`` (``recall@k``, the eval's own k, sorts first)."""
    k = key.partition("@")[2]
    return int(k) if k.isdigit() else 0


def direction(key: str) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when neither (an abstention can be right)."""
    if any(matches(key, name) for name in HIGHER_IS_BETTER):
        return 1
    return -1 if key.endswith(LOWER_IS_BETTER) else 0


def label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def run_params(run: Run) -> dict[str, Any]:
    """The run's settings: its resolved config (flattened) with the sweep's ``params`` on top;
    where the index is stored and how runs are tracked are left out (they are not choices)."""
    from ragtune.experiment.tracking import flatten

    config = run.info.get("config")
    settings = flatten(config) if isinstance(config, dict) else {}
    params = run.info.get("params")
    settings.update(params if isinstance(params, dict) else {})
    return {k: v for k, v in settings.items() if not k.startswith(("store.", "experiment."))}


def varying_params(runs: list[Run]) -> list[str]:
    """The ``params`` keys whose values differ between runs (all of them for a single run)."""
    params = [run_params(r) for r in runs]
    keys = sorted({k for p in params for k in p})
    if len(runs) == 1:
        return keys
    return [k for k in keys if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in params}) > 1]


# ---------------------------------------------------------------------------------------------
# Quality, latency and per-question scores


def quality_candidates(runs: list[Run]) -> list[str]:
    keys = metric_columns(runs)
    return [k for name in QUALITY_PREFIXES for k in keys if matches(k, name)]


def pick_metric(runs: list[Run], candidates: list[str] | tuple[str, ...]) -> str | None:
    """The first candidate that every run has; else the one most runs have; None if no run has any."""
    counts = [sum(metric(r, key) is not None for r in runs) for key in candidates]
    for key, n in zip(candidates, counts):
        if n == len(runs):
            return key
    return candidates[counts.index(max(counts))] if counts and max(counts) else None


def per_question_kind(runs: list[Run], quality: str | None) -> str | None:
    """How one question is scored, matching the run-level quality: its F1, a hit in the top k, or its nDCG."""
    if quality == "f1":
        return "f1"
    if quality and quality.startswith("recall@"):
        return "hit"
    if quality:
        return "ndcg"
    rows = [row for r in runs for row in r.predictions]
    return "f1" if any("f1" in row for row in rows) else "hit" if any("gold_rank" in row for row in rows) else None


def question_score(row: dict[str, Any], kind: str | None) -> float | None:
    """One prediction row's score (see ``PER_QUESTION``); None when the row cannot be scored that way."""
    if kind in ("f1", "ndcg"):
        return number(row.get(kind))
    if kind != "hit" or "gold_rank" not in row:
        return None
    return 1.0 if row["gold_rank"] else 0.0  # as ``recall@k`` counts it: a gold chunk anywhere in the top k


# ---------------------------------------------------------------------------------------------
# Pareto front


@dataclass
class Point:
    """One run in the quality-vs-latency chart."""

    run: Run
    quality: float
    latency: float
    pareto: bool = False


def chart_points(runs: list[Run], quality: str | None, latency: str | None) -> list[Point]:
    """A point per run that has both measures, its ``pareto`` flag set."""
    points = [Point(r, metric(r, quality), metric(r, latency)) for r in runs if quality and latency
              and metric(r, quality) is not None and metric(r, latency) is not None]
    for p in points:
        p.pareto = not any(dominates(q, p) for q in points)
    return points


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as good as ``b`` on both axes and better on one (higher quality, lower latency)."""
    return a.quality >= b.quality and a.latency <= b.latency and (a.quality > b.quality or a.latency < b.latency)


# ---------------------------------------------------------------------------------------------
# Per-question comparison


@dataclass
class Diff:
    """One question answered by both runs, with both scores."""

    base: dict[str, Any]
    other: dict[str, Any]
    base_score: float
    other_score: float

    @property
    def delta(self) -> float:
        return self.other_score - self.base_score


@dataclass
class Comparison:
    """A run against the baseline, question by question (matched by question id)."""

    run: Run
    diffs: list[Diff]
    unmatched: int  # questions in only one of the two runs, or without a score in one

    @property
    def wins(self) -> list[Diff]:
        return sorted((d for d in self.diffs if d.delta > 1e-9), key=lambda d: -d.delta)

    @property
    def losses(self) -> list[Diff]:
        return sorted((d for d in self.diffs if d.delta < -1e-9), key=lambda d: d.delta)

    @property
    def ties(self) -> int:
        return len(self.diffs) - len(self.wins) - len(self.losses)


def compare(base: Run, other: Run, kind: str | None) -> Comparison:
    base_rows, other_rows = by_id(base), by_id(other)
    diffs = []
    for qid in base_rows.keys() & other_rows.keys():
        a, b = base_rows[qid], other_rows[qid]
        sa, sb = question_score(a, kind), question_score(b, kind)
        if sa is not None and sb is not None:
            diffs.append(Diff(a, b, sa, sb))
    diffs.sort(key=lambda d: str(d.base.get("id")))
    return Comparison(other, diffs, len(base_rows.keys() | other_rows.keys()) - len(diffs))


def by_id(run: Run) -> dict[str, dict[str, Any]]:
    return {str(row["id"]): row for row in run.predictions if row.get("id") is not None}


def worst(run: Run, kind: str | None, n: int = TOP) -> list[tuple[float, dict[str, Any]]]:
    """The ``n`` lowest-scored questions of a run below a perfect 1, lowest first (ties in file order)."""
    scored = [(s, row) for row in run.predictions if (s := question_score(row, kind)) is not None and s < 1]
    return sorted(scored, key=lambda pair: pair[0])[:n]


@dataclass
class RunDiff:
    """Two runs side by side: every metric of either with its delta, the settings that differ, and
    the per-question comparison on the quality measure they share."""

    base: Run
    other: Run
    metrics: list[tuple[str, Any, Any, float | None]]  # name, base value, other value, other - base (numbers only)
    settings: list[tuple[str, Any, Any]]  # flattened config key, base value, other value
    kind: str | None  # how one question is scored (``PER_QUESTION``)
    questions: Comparison


def compare_runs(base: Run, other: Run) -> RunDiff:
    from ragtune.experiment.tracking import flatten

    rows = []
    for name in dict.fromkeys([*(base.metrics or {}), *(other.metrics or {})]):
        va, vb = (base.metrics or {}).get(name), (other.metrics or {}).get(name)
        delta = vb - va if number(va) is not None and number(vb) is not None else None
        rows.append((name, va, vb, delta))
    ca, cb = flatten(base.info.get("config", {})), flatten(other.info.get("config", {}))
    settings = [(key, ca.get(key), cb.get(key)) for key in sorted(set(ca) | set(cb)) if ca.get(key) != cb.get(key)]
    kind = per_question_kind([base, other], pick_metric([base, other], quality_candidates([base, other])))
    return RunDiff(base, other, rows, settings, kind, compare(base, other, kind))

"""Feedback → training data, in the formats ``ragtune finetune`` reads (TRL's).

* ``kto``: one ``{"prompt", "completion", "label"}`` row per judged answer: a thumb, or a score
  (4–5 liked, 1–2 disliked, 3 left out);
* ``dpo``: ``{"prompt", "chosen", "rejected"}`` pairs from side-by-side preferences (rankings:
  every better/worse pair) and from a liked and a disliked answer to the same prompt;
* ``sft``: ``{"messages"}`` demonstrations, one per prompt: the latest correction (the answer the
  user wanted), else a liked answer;
* ``reward``: ``{"prompt", "completions"}`` rankings, best first: the side-by-side rankings, and
  a liked answer before a disliked one to the same prompt.

The prompt is exactly what the model was given (the RAG prompt with its sources), so the tuned
model learns on the inputs it will be served. One answer judged several times counts once, by
majority (a tie is a conflict and is left out); identical rows are written once. ``export``
returns what it wrote and a count of where it came from; the file passes ``data validate``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations, product
from pathlib import Path
from typing import Any

from ragtune.errors import DatasetError
from ragtune.serve.feedback import Feedback, FeedbackStore, Messages, Response, canonical_json

FORMATS = ("kto", "dpo", "sft", "reward")


@dataclass
class ExportReport:
    format: str
    rows: int = 0
    feedback: Counter = field(default_factory=Counter)  # feedback read, by kind
    used: Counter = field(default_factory=Counter)  # rows written, by where they came from
    left_out: Counter = field(default_factory=Counter)  # why feedback made no row

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "rows": self.rows, "feedback": dict(self.feedback), "used": dict(self.used),
                "left_out": dict(self.left_out)}


def verdicts(feedback: list[Feedback], responses: dict[str, Response], report: ExportReport) -> list[tuple[Response, bool]]:
    """Every judged answer (the same text to the same prompt is one answer, however often it was
    served) with whether it is liked, from its thumbs and scores by majority."""
    votes: dict[str, list[int]] = defaultdict(list)
    first: dict[str, Response] = {}
    for fb in feedback:
        if fb.kind == "score" and fb.score == 3:
            report.left_out["score of 3 (neither liked nor disliked)"] += 1
        if fb.kind not in ("thumb", "score") or fb.score == 3:
            continue
        r = responses[fb.response_id]
        key = canonical_json([r.messages, r.answer])
        first.setdefault(key, r)
        votes[key].append(1 if (fb.label if fb.kind == "thumb" else fb.score >= 4) else -1)
    out = []
    for key, vs in votes.items():
        if sum(vs) == 0:
            report.left_out["answers judged both ways as often (conflict)"] += 1
        else:
            out.append((first[key], sum(vs) > 0))
    return out


def _answer(r: Response) -> Messages:
    return [{"role": "assistant", "content": r.answer}]


def _same_prompt(judged: list[tuple[Response, bool]]) -> list[tuple[Response, Response]]:
    """(liked, disliked) answers to the same prompt, every combination."""
    groups: dict[str, dict[bool, list[Response]]] = defaultdict(lambda: {True: [], False: []})
    for r, up in judged:
        groups[canonical_json(r.messages)][up].append(r)
    return [(a, b) for g in groups.values() for a, b in product(g[True], g[False])]


def rows_for(fmt: str, store: FeedbackStore) -> tuple[list[dict[str, Any]], ExportReport]:
    if fmt not in FORMATS:
        raise DatasetError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    report = ExportReport(fmt)
    feedback = store.feedback()
    report.feedback.update(fb.kind for fb in feedback)
    responses = store.responses()
    judged = verdicts(feedback, responses, report)
    rankings = [fb.ranking for fb in feedback if fb.kind == "ranking"]
    rows: list[tuple[str, dict[str, Any]]] = []
    if fmt == "kto":
        rows = [("thumbs and scores", {"prompt": r.messages, "completion": _answer(r), "label": up}) for r, up in judged]
    elif fmt == "dpo":
        for ranking in rankings:
            for better, worse in combinations(ranking, 2):
                a, b = responses[better], responses[worse]
                if a.answer != b.answer:
                    rows.append(("rankings", {"prompt": a.messages, "chosen": _answer(a), "rejected": _answer(b)}))
        rows += [("a liked and a disliked answer", {"prompt": a.messages, "chosen": _answer(a), "rejected": _answer(b)})
                 for a, b in _same_prompt(judged)]
    elif fmt == "sft":  # one demonstration per prompt (a train/eval split must not see a prompt twice)
        demos: dict[str, tuple[str, dict[str, Any]]] = {}
        for fb in reversed(feedback):  # the latest correction first
            if fb.correction:
                r = responses[fb.response_id]
                demos.setdefault(canonical_json(r.messages), ("corrections", {
                    "messages": r.messages + [{"role": "assistant", "content": fb.correction.strip()}]}))
        for r, up in judged:
            if up:
                demos.setdefault(canonical_json(r.messages), ("liked answers", {"messages": r.messages + _answer(r)}))
        wanted = sum(bool(fb.correction) for fb in feedback) + sum(up for _, up in judged)
        if wanted > len(demos):
            report.left_out["other answers to a prompt that has a demonstration (a correction comes first)"] += wanted - len(demos)
        rows = list(demos.values())
    else:  # reward
        for ranking in rankings:
            answers = list(dict.fromkeys(responses[r].answer for r in ranking))
            if len(answers) >= 2:
                rows.append(("rankings", {"prompt": responses[ranking[0]].messages,
                                          "completions": [[{"role": "assistant", "content": a}] for a in answers]}))
        rows += [("a liked and a disliked answer", {"prompt": a.messages, "completions": [_answer(a), _answer(b)]})
                 for a, b in _same_prompt(judged)]
    out, seen = [], set()
    for source, row in rows:
        key = canonical_json(row)
        if key in seen:
            report.left_out["duplicate rows"] += 1
            continue
        seen.add(key)
        report.used[source] += 1
        out.append(row)
    report.rows = len(out)
    return out, report


def export(store: FeedbackStore, fmt: str, path: Path) -> ExportReport:
    """Write ``fmt`` rows from everything in ``store`` to ``path`` (JSONL) and validate the file as
    ``ragtune data validate`` does; nothing is written when there is nothing to write."""
    from ragtune.train.data import load_examples
    from ragtune.train.preferences import load_preferences, write_jsonl

    rows, report = rows_for(fmt, store)
    if not rows:
        raise DatasetError(f"no {fmt} rows in the feedback yet ({_summary(report)}); "
                           + _NEEDS[fmt])
    write_jsonl(rows, Path(path))
    if fmt == "sft":
        load_examples(Path(path))
    else:
        load_preferences(Path(path), fmt)
    return report


_NEEDS = {"kto": "KTO rows come from thumbs and scores",
          "dpo": "DPO pairs come from side-by-side choices, or a liked and a disliked answer to the same prompt",
          "sft": "demonstrations come from corrections and liked answers",
          "reward": "rankings come from side-by-side choices, or a liked and a disliked answer to the same prompt"}


def _summary(report: ExportReport) -> str:
    read = ", ".join(f"{n} {k}" for k, n in sorted(report.feedback.items())) or "no feedback"
    return f"read {read}"

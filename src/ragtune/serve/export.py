"""Feedback → training data, in the formats ``ragtune finetune`` reads (TRL's).

* ``kto``: one ``{"prompt", "completion", "label"}`` row per judged answer: a thumb, or a score
  (4–5 liked, 1–2 disliked, 3 left out);
* ``dpo`` and ``reward`` (a reward model learns from the same pairs): ``{"prompt", "chosen",
  "rejected"}`` from side-by-side preferences (rankings: every better/worse pair) and from a liked
  and a disliked answer to the same prompt; a pair preferred both ways is settled by majority;
* ``sft``: ``{"messages"}`` demonstrations, one per prompt: the latest correction (the answer the
  user wanted), else a liked answer.

The prompt is exactly what the model was given (the RAG prompt with its sources), so the tuned
model learns on the inputs it will be served. One answer (the same text to the same prompt)
judged several times counts once, by majority; a tie is a conflict and is left out, as are answers
or prompts with an empty text. ``export`` returns what it wrote and a count of where it came from;
the file passes ``data validate`` before it replaces ``path``.
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
    used: Counter = field(default_factory=Counter)  # rows made, by where they came from
    left_out: Counter = field(default_factory=Counter)  # why feedback made no row (or a row was not written)
    longest: int | None = None  # tokens of the longest row, when measured

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "rows": self.rows, "feedback": dict(self.feedback), "used": dict(self.used),
                "left_out": dict(self.left_out), "longest": self.longest}


class NoRows(DatasetError):
    """The feedback holds nothing this format can be made from (yet)."""


def usable(r: Response, report: ExportReport) -> bool:
    """An answer and prompt the training formats accept (no empty text anywhere)."""
    ok = bool(r.answer.strip()) and bool(r.messages) and all(m["content"].strip() for m in r.messages)
    if not ok:
        report.left_out["answers or prompts with an empty text"] += 1
    return ok


def verdicts(feedback: list[Feedback], responses: dict[str, Response], report: ExportReport) -> list[tuple[Response, bool]]:
    """Every judged answer (the same text to the same prompt is one answer, however often it was
    served) with whether it is liked, from its thumbs and scores by majority."""
    votes: dict[str, list[int]] = defaultdict(list)
    first: dict[str, Response] = {}
    for fb in feedback:
        if fb.kind == "score" and fb.score == 3:
            report.left_out["score of 3 (neither liked nor disliked)"] += 1
        if fb.kind not in ("thumb", "score") or fb.score == 3 or not usable(responses[fb.response_id], report):
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


def preferred_pairs(rankings: list[list[str]], judged: list[tuple[Response, bool]], responses: dict[str, Response],
                    report: ExportReport) -> list[tuple[str, Response, Response]]:
    """(where it came from, better, worse): every pair of different answers to one prompt that a
    ranking or a liked × disliked combination orders, settled by majority (a tie is a conflict)."""
    votes: Counter = Counter()  # (prompt, answer x, answer y), x < y: > 0 means x is better
    seen: dict[tuple[str, str, str], tuple[str, dict[str, Response]]] = {}

    def vote(better: Response, worse: Response, source: str) -> None:
        if better.answer == worse.answer:
            return
        x, y = sorted((better.answer, worse.answer))
        key = (canonical_json(better.messages), x, y)
        votes[key] += 1 if better.answer == x else -1
        seen.setdefault(key, (source, {}))[1].update({better.answer: better, worse.answer: worse})

    for ranking in rankings:
        if all(usable(responses[r], report) for r in ranking):
            for better, worse in combinations(ranking, 2):
                vote(responses[better], responses[worse], "rankings")
    for a, b in _same_prompt(judged):
        vote(a, b, "a liked and a disliked answer")
    out = []
    for key, v in votes.items():
        source, answers = seen[key]
        if v == 0:
            report.left_out["answer pairs preferred both ways as often (conflict)"] += 1
            continue
        x, y = answers[key[1]], answers[key[2]]
        out.append((source, x, y) if v > 0 else (source, y, x))
    return out


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
    elif fmt in ("dpo", "reward"):
        rows = [(source, {"prompt": a.messages, "chosen": _answer(a), "rejected": _answer(b)})
                for source, a, b in preferred_pairs(rankings, judged, responses, report)]
    elif fmt == "sft":  # one demonstration per prompt (a train/eval split must not see a prompt twice)
        demos: dict[str, tuple[str, dict[str, Any]]] = {}
        for fb in reversed(feedback):  # the latest correction first
            if fb.correction and usable(responses[fb.response_id], report):
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


def row_tokens(row: dict[str, Any], tokenizer) -> int:
    """Tokens of a row's longest conversation (prompt + answer) with the chat template."""
    from ragtune.train.sft import template_ids

    if "messages" in row:
        return len(template_ids(tokenizer, row["messages"], generation_prompt=False))
    answers = [row[k] for k in ("completion", "chosen", "rejected") if k in row]
    return max(len(template_ids(tokenizer, row["prompt"] + a, generation_prompt=False)) for a in answers)


def export(store: FeedbackStore, fmt: str, path: Path, tokenizer=None, max_length: int | None = None) -> ExportReport:
    """Write ``fmt`` rows from everything in ``store`` to ``path`` (JSONL) and validate the file as
    ``ragtune data validate`` does; nothing is written when there is nothing to write. With a
    ``tokenizer``, rows longer than ``max_length`` tokens (RAG prompts carry their sources) are left
    out and counted; ``report.longest`` is the longest row's length."""
    from ragtune.train.data import load_examples
    from ragtune.train.preferences import load_preferences, write_jsonl

    rows, report = rows_for(fmt, store)
    if tokenizer is not None and rows:
        lengths = [row_tokens(row, tokenizer) for row in rows]
        report.longest = max(lengths)
        too_long = sum(n > max_length for n in lengths)
        if too_long:
            report.left_out[f"longer than max_length = {max_length} tokens (the longest has {report.longest}; "
                            "raise [train] max_length or --max-length to keep them)"] += too_long
            rows = [row for row, n in zip(rows, lengths) if n <= max_length]
            report.rows = len(rows)
    if not rows:
        raise NoRows(f"no {fmt} rows in the feedback yet ({_summary(report)}); "
                           + _NEEDS[fmt])
    path = Path(path)
    staged = path.with_name(f".{path.name}.partial")
    write_jsonl(rows, staged)
    try:
        load_examples(staged) if fmt == "sft" else load_preferences(staged, fmt)
    except Exception:
        staged.unlink(missing_ok=True)
        raise
    staged.replace(path)
    return report


_NEEDS = {"kto": "KTO rows come from thumbs and scores",
          "dpo": "DPO pairs come from side-by-side choices, or a liked and a disliked answer to the same prompt",
          "sft": "demonstrations come from corrections and liked answers",
          "reward": "pairs come from side-by-side choices, or a liked and a disliked answer to the same prompt"}


def _summary(report: ExportReport) -> str:
    read = ", ".join(f"{n} {k}" for k, n in sorted(report.feedback.items())) or "no feedback"
    left = "; ".join(f"left out {n} {why}" for why, n in report.left_out.items())
    return f"read {read}" + (f"; {left}" if left else "")

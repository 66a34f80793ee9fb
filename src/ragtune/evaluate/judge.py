"""LLM-as-judge: a generator grades an answer against the reference answers, in one strict format.

The judge must reply with one line, ``VERDICT: correct`` or ``VERDICT: incorrect``. A binary
verdict is the one format that both a 135M model and a strong model follow reliably; a 1-5
scale adds numbers a small model invents and a strong model hedges on. Two worked examples
(as earlier chat turns) show the format: without them SmolLM2-135M answers the question
instead of grading it.

Parse rule (``parse_verdict``), applied to the raw output:

- the first non-empty line, with surrounding whitespace removed and compared case-insensitively,
  must be exactly ``VERDICT: correct`` or ``VERDICT: incorrect`` (any spaces after the colon,
  at most one trailing full stop);
- later lines are free text, kept as the reason, but none may be another ``VERDICT:`` line:
  two verdicts make the judgement unparsed, even when they agree;
- anything else is unparsed: empty output, a preamble before the verdict, markdown around it,
  a number, "correct/incorrect", a misspelling.

An unparsed judgement has ``parsed=False`` and ``score=None``; it is counted as a parse failure
by ``aggregate_judgements``, never dropped and never scored as 0.

    >>> parse_verdict("verdict:  Correct\\nThe years match.")
    ('correct', 'The years match.', None)
    >>> parse_verdict("**VERDICT: correct**")[0] is None
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ragtune.errors import DatasetError

SCORES = {"correct": 1.0, "incorrect": 0.0}
JUDGE_MAX_TOKENS = 48  # the verdict line and a short reason; the reason is never parsed

JUDGE_SYSTEM = (
    "You grade answers. Compare the candidate answer with the reference answers. "
    'Reply with one line: "VERDICT: correct" if the candidate answer means the same as one of the reference answers, '
    'otherwise "VERDICT: incorrect".'
)

# (question, reference answers, candidate answer, verdict): shown to the judge as earlier turns
JUDGE_EXAMPLES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("What colour is the sky on a clear day?", ("blue",), "It is blue.", "correct"),
    ("Who wrote Hamlet?", ("William Shakespeare", "Shakespeare"), "Charles Dickens", "incorrect"),
)

_VERDICT = re.compile(r"verdict:\s*(correct|incorrect)\.?", re.I)
_VERDICT_LINE = re.compile(r"\s*verdict\s*:", re.I)


@dataclass
class Judgement:
    """One graded answer. ``score`` is 1.0 (correct), 0.0 (incorrect) or None (unparsed)."""

    score: float | None
    verdict: str | None  # "correct", "incorrect", or None when the output did not parse
    parsed: bool
    raw: str  # the judge's output, untouched
    prompt: str  # exactly what the judge model saw
    reason: str = ""  # the judge's text after the verdict line, if any
    error: str | None = None  # why the output did not parse


def judge_messages(question: str, answer: str, references: list[str], context: str | None = None) -> list[dict[str, str]]:
    """The chat messages sent to the judge: system rules, the worked examples, then this case."""
    messages = [{"role": "system", "content": JUDGE_SYSTEM}]
    for q, refs, a, verdict in JUDGE_EXAMPLES:
        messages.append({"role": "user", "content": _case(q, a, list(refs))})
        messages.append({"role": "assistant", "content": f"VERDICT: {verdict}"})
    messages.append({"role": "user", "content": _case(question, answer, references, context)})
    return messages


def _case(question: str, answer: str, references: list[str], context: str | None = None) -> str:
    parts = [f"Question: {question}", f"Reference answers: {' | '.join(references)}"]
    if context:
        parts.append(f"Context: {context}")
    parts += [f"Candidate answer: {answer}", "Is the candidate answer correct?"]
    return "\n".join(parts)


def parse_verdict(raw: str) -> tuple[str | None, str, str | None]:
    """``(verdict, reason, error)`` from a judge's output; ``verdict`` is None when it does not parse."""
    lines = [line.strip() for line in raw.strip().splitlines() if line.strip()]
    if not lines:
        return None, "", "empty output"
    match = _VERDICT.fullmatch(lines[0])
    if match is None:
        return None, "", f"the first line is not 'VERDICT: correct' or 'VERDICT: incorrect': {lines[0][:80]!r}"
    if any(_VERDICT_LINE.match(line) for line in lines[1:]):
        return None, "", "more than one VERDICT line"
    return match.group(1).lower(), "\n".join(lines[1:]), None


def judge(generator, question: str, answer: str, references: list[str], context: str | None = None) -> Judgement:
    """Grade ``answer`` to ``question`` against ``references`` (and optionally the evidence ``context``).

    Sampling settings (temperature, seed) are the generator's own: greedy by default."""
    if not question.strip():
        raise DatasetError("the judge needs a question; got an empty one")
    if not any(r.strip() for r in references):
        raise DatasetError(f"the judge needs at least one reference answer for {question!r}: give the QA item 'answers'")
    g = generator.generate(judge_messages(question, answer, references, context), max_tokens=JUDGE_MAX_TOKENS)
    verdict, reason, error = parse_verdict(g.text)
    score = SCORES[verdict] if verdict else None
    return Judgement(score, verdict, verdict is not None, g.text, g.prompt, reason, error)


def aggregate_judgements(judgements: list[Judgement]) -> dict[str, Any]:
    """Mean score over the parsed judgements, and how many failed to parse (of all of them).

    ``judge_score`` is None when none parsed; ``judge_parse_failure_rate`` is None for no judgements."""
    scores = [j.score for j in judgements if j.parsed and j.score is not None]
    failures = len(judgements) - len(scores)
    return {"judge_score": sum(scores) / len(scores) if scores else None,
            "judge_parsed": len(scores),
            "judge_parse_failures": failures,
            "judge_parse_failure_rate": failures / len(judgements) if judgements else None}

"""Synthetic QA: a generator writes one question and its short answer per sampled chunk.

The generator must reply in two lines::

    Question: <a question ending in '?'>
    Answer: <a short answer>

Parse rule (``parse_pair``): the first non-empty line starts with ``Question:`` and the next
non-empty line with ``Answer:`` (labels case-insensitive), both followed by text, and the
question ends with ``?``. Lines after the answer line are ignored (small models keep talking;
only the first pair counts). Anything else is a parse failure.

A parsed pair is kept only when, in this order of checks:

- the answer has at most ``MAX_ANSWER_WORDS`` words (``rejected_long``);
- the answer is supported by the chunk: its normalised text occurs in the normalised chunk, or
  at least ``MIN_SUPPORT`` of its content words do (``rejected_unsupported``);
- the answer says something the question does not: not all of its content words (stop words
  out) are in the question, so "What is the X award? The award for X" is out (``rejected_in_question``);
- no kept question has the same normalised text (``duplicates``).

The support check is lexical: it proves the answer comes from the passage, not that it answers
the question. Review synthetic sets before trusting them, above all those written by small models.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from ragtune.errors import ConfigError, WorkspaceError
from ragtune.evaluate.answers import groundedness
from ragtune.progress import Quiet
from ragtune.text import content_words, normalize
from ragtune.types import QAItem

MAX_ANSWER_WORDS = 12
MIN_SUPPORT = 0.75  # share of the answer's content words that must occur in the chunk
MIN_CHUNK_WORDS = 20  # shorter chunks (headings, captions) rarely hold a question
ATTEMPTS_PER_ITEM = 3  # chunks tried per wanted question before giving up
SYNTH_MAX_TOKENS = 64

SYNTH_SYSTEM = (
    "You write quiz questions about a passage. Write ONE question that the passage answers, and its short answer: "
    "a few words copied exactly from the passage. Reply with exactly two lines and nothing else:\n"
    "Question: <the question>\nAnswer: <the short answer>"
)

# (passage, question, answer): shown to the generator as earlier turns; their facts are made up so
# that an answer copied from an example fails the support check
SYNTH_EXAMPLES: tuple[tuple[str, str, str], ...] = (
    ("Members may borrow up to six books at a time. Loans last three weeks and can be renewed online.",
     "How long do loans last?", "three weeks"),
    ("Visitors must sign in at the front desk and wear a green badge. The desk opens at 08:00.",
     "What colour badge must visitors wear?", "a green badge"),
)

STAT_KEYS = ("attempted", "parsed", "parse_failures", "rejected_long", "rejected_unsupported",
             "rejected_in_question", "duplicates", "kept")

_QUESTION = re.compile(r"question:\s*(\S.*\?)", re.I)
_ANSWER = re.compile(r"answer:\s*(\S.*)", re.I)


def synth_messages(passage: str) -> list[dict[str, str]]:
    """The chat messages sent for one chunk: system rules, the worked examples, then the passage."""
    messages = [{"role": "system", "content": SYNTH_SYSTEM}]
    for text, question, answer in SYNTH_EXAMPLES:
        messages.append({"role": "user", "content": f"Passage:\n{text}"})
        messages.append({"role": "assistant", "content": f"Question: {question}\nAnswer: {answer}"})
    messages.append({"role": "user", "content": f"Passage:\n{passage}"})
    return messages


def parse_pair(raw: str) -> tuple[str, str] | None:
    """``(question, answer)`` from a generator's output, or None when it is not in the format.

    >>> parse_pair("question: Who founded it?\\nAnswer: Cornelius Vantreight\\nmore text")
    ('Who founded it?', 'Cornelius Vantreight')
    >>> parse_pair("Who founded it?\\nCornelius Vantreight") is None
    True
    """
    lines = [line.strip() for line in raw.strip().splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    question, answer = _QUESTION.fullmatch(lines[0]), _ANSWER.fullmatch(lines[1])
    if question is None or answer is None:
        return None
    return question.group(1).strip(), answer.group(1).strip()


def supported(answer: str, passage: str) -> bool:
    """The answer occurs in the passage (normalised), or most of its content words do."""
    a = normalize(answer)
    if a and f" {a} " in f" {normalize(passage)} ":
        return True
    share = groundedness(answer, passage)
    return share is not None and share >= MIN_SUPPORT


def check_pair(question: str, answer: str, passage: str, seen: set[str]) -> str:
    """``"kept"`` or the stats key of the first check the pair fails (see the module doc)."""
    if len(answer.split()) > MAX_ANSWER_WORDS:
        return "rejected_long"
    if not supported(answer, passage):
        return "rejected_unsupported"
    if set(content_words(answer)) <= set(content_words(question)):
        return "rejected_in_question"
    if normalize(question) in seen:
        return "duplicates"
    return "kept"


def sample_chunks(store, seed: int = 0) -> list[dict[str, Any]]:
    """The index's chunks of at least ``MIN_CHUNK_WORDS`` words, in an order fixed by ``seed``."""
    rows = store.rows(["id", "doc_id", "source", "text"])
    rows = sorted((r for r in rows if len(r["text"].split()) >= MIN_CHUNK_WORDS), key=lambda r: r["id"])
    if not rows:
        raise WorkspaceError(f"the index has no chunk of {MIN_CHUNK_WORDS}+ words to write questions about: "
                             "run `ragtune ingest PATH` with your documents first")
    random.Random(seed).shuffle(rows)
    return rows


def synth_qa(store, generator, n: int, seed: int = 0, progress=None) -> tuple[list[QAItem], dict[str, int]]:
    """Up to ``n`` questions from chunks of ``store``'s index, trying at most ``ATTEMPTS_PER_ITEM * n`` chunks.

    Each item names its source: ``doc_ids`` = [the chunk's doc_id], ``context`` = the chunk text,
    ``metadata`` = chunk_id, source, generator, synthetic. ``stats`` counts every attempt once:
    attempted = parse_failures + rejected_* + duplicates + kept."""
    if n < 1:
        raise ConfigError(f"the number of questions must be at least 1 (got {n})")
    chunks = sample_chunks(store, seed)[: ATTEMPTS_PER_ITEM * n]
    progress = progress or Quiet()
    task = progress.task("synthetic questions", len(chunks))
    stats = dict.fromkeys(STAT_KEYS, 0)
    items: list[QAItem] = []
    seen: set[str] = set()
    for row in chunks:
        if len(items) == n:
            break
        outcome, item = _attempt(generator, row)
        if outcome == "parsed":
            stats["parsed"] += 1
            outcome = check_pair(item.question, item.answers[0], row["text"], seen)
        stats["attempted"] += 1
        stats[outcome] += 1
        if outcome == "kept":
            items.append(item)
            seen.add(normalize(item.question))
        progress.advance(task)
    return items, stats


def _attempt(generator, row: dict[str, Any]) -> tuple[str, QAItem | None]:
    """Ask for one pair about ``row``'s chunk: ``("parsed", item)`` or ``("parse_failures", None)``."""
    g = generator.generate(synth_messages(row["text"]), max_tokens=SYNTH_MAX_TOKENS)
    pair = parse_pair(g.text)
    if pair is None:
        return "parse_failures", None
    question, answer = pair
    digest = hashlib.sha1(f"{row['id']}\n{question}".encode()).hexdigest()[:12]
    metadata = {"chunk_id": row["id"], "source": row["source"],
                "generator": getattr(generator, "name", type(generator).__name__), "synthetic": True}
    return "parsed", QAItem(f"synth-{digest}", question, [answer], [row["doc_id"]], row["text"], metadata)

"""Plain data that crosses module borders: documents, chunks, hits, reports."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Block:
    """A structural unit of a document (paragraph, list item, table row, code block).

    ``start``/``end`` are character offsets into ``Document.text``; chunking never splits a
    heading path, so each block carries the headings above it.
    """

    start: int
    end: int
    headings: tuple[str, ...] = ()
    page: int | None = None


@dataclass
class Document:
    """Text extracted from one file (or one record of a JSONL file), with its structure."""

    doc_id: str
    source: str
    title: str
    text: str
    blocks: list[Block]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document small enough to embed, with full provenance."""

    doc_id: str
    source: str
    title: str
    headings: tuple[str, ...]
    page: int | None
    start: int
    end: int
    text: str
    n_tokens: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def heading(self) -> str:
        return " > ".join(self.headings)

    @property
    def embed_text(self) -> str:
        """What is embedded and keyword-indexed: the title and heading path give context."""
        prefix = " > ".join(h for h in (self.title, *self.headings) if h)
        return f"{prefix}\n\n{self.text}" if prefix else self.text


@dataclass(frozen=True)
class Hit:
    """One search result: a chunk with its rank, score and provenance. ``score`` is the ranking's
    own (cosine, BM25 or fused); ``similarity`` is the chunk's cosine similarity to the query
    whatever the mode, when the store knows it (the chain abstains on it)."""

    rank: int
    score: float
    chunk_id: str
    doc_id: str
    source: str
    title: str
    heading: str
    page: int | None
    start: int
    end: int
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    similarity: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Problem:
    """One line of an ingest report: which input and why it was not (fully) ingested."""

    path: str
    reason: str
    severity: str = "error"  # "error": nothing of it landed; "warning": it landed, with a caveat


@dataclass
class IngestReport:
    """What an ingest did. ``problems`` lists every file that was skipped and why."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    chunks_written: int = 0
    chunks_embedded: int = 0  # chunks whose vectors were computed (not taken from the cache)
    seconds: float = 0.0
    index_version: int | None = None
    engine: str = "local"  # where loading, chunking and embedding ran (e.g. "ray at HOST:PORT: 2 node(s), ...")

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


@dataclass
class IndexStats:
    documents: int
    sources: int
    chunks: int
    model: str
    model_id: str
    dim: int
    index_version: int
    format_version: int
    path: str


@dataclass
class Source:
    """A retrieved chunk as numbered in the prompt ([1], [2], ...)."""

    number: int
    hit: Hit
    tokens: int


@dataclass
class Step:
    """One model call of an agent run: exactly what the model saw and wrote, the tool it called and
    what came back (or the error fed back to it)."""

    number: int
    prompt: str
    output: str
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    observation: str | None = None
    error: str | None = None  # "parse": not a valid action; "tool": the tool failed; None: fine
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Answer:
    """Everything about one answer: the text, what it cites, what was retrieved and sent."""

    question: str
    text: str
    citations: list[int]  # source numbers cited in the text, in order of first mention
    sources: list[Source]  # what went into the prompt
    dropped: list[Hit]  # retrieved but left out to fit the context budget (lowest ranks first to go)
    messages: list[dict[str, str]]  # the chat messages
    prompt: str  # the exact text the model saw (chat template applied where the backend exposes it)
    abstained: bool  # True when nothing relevant was retrieved and no model was called
    generator: str
    usage: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    citation_method: str = "model"  # "model": [n] in the text; "overlap": attributed by shared words
    steps: list[Step] = field(default_factory=list)  # an agent's model calls (empty for the chain)
    stopped: str | None = None  # an agent's end: "answer", "budget" (the step budget forced the answer), "repeat" (a repeated call did)

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question, "text": self.text, "citations": self.citations,
            "citation_method": self.citation_method, "abstained": self.abstained,
            "generator": self.generator,
            "sources": [{"number": s.number, "tokens": s.tokens, **s.hit.to_dict()} for s in self.sources],
            "dropped": [h.to_dict() for h in self.dropped], "messages": self.messages, "prompt": self.prompt,
            "usage": self.usage, "timings": self.timings,
            **({"steps": [st.to_dict() for st in self.steps], "stopped": self.stopped} if self.stopped else {}),
        }


@dataclass
class QAItem:
    """One evaluation question: gold answers and, optionally, the gold evidence."""

    id: str
    question: str
    answers: list[str]
    doc_ids: list[str] = field(default_factory=list)
    context: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Example:
    """One supervised fine-tuning demonstration: chat turns ending with the assistant's reply.

    Every assistant turn is learned (carries loss); system and user turns are context only.
    ``metadata`` holds the row's other scalar fields (e.g. GSM8K's ``final_answer``).
    """

    id: str
    messages: list[dict[str, str]]
    metadata: dict[str, Any] = field(default_factory=dict)

"""Token-aware, structure-following chunking.

A document's blocks are grouped into sections (same heading path and page); a chunk never
crosses a section, so its heading path and page are exact. Inside a section, blocks are cut into sentences (and over-long sentences into token
windows), then packed greedily up to the token budget; the next chunk starts with the trailing
sentences of the previous one, up to ``overlap`` tokens. Token counts come from the embedder's
own tokenizer, and the title/heading prefix that is embedded with each chunk counts too.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass
from typing import Protocol, Sequence

from ragtune.types import Block, Chunk, Document

# A sentence ends at . ! ? (optionally followed by a closing quote/bracket) before whitespace,
# or at a line break (lists, table rows, code lines).
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_SPECIAL_TOKENS = 2  # [CLS] ... [SEP]


class Tokenizer(Protocol):
    def encode_batch(self, texts: list[str], add_special_tokens: bool = ...) -> list: ...


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    tokens: int
    page: int | None


def chunk_document(doc: Document, tokenizer: Tokenizer, max_tokens: int, overlap: int) -> list[Chunk]:
    """Cut ``doc`` into chunks of at most ``max_tokens`` tokens (prefix included)."""
    chunks: list[Chunk] = []
    sections = [list(g) for _, g in itertools.groupby(doc.blocks, key=lambda b: (b.headings, b.page))]
    prefixes = [" > ".join(h for h in (doc.title, *s[0].headings) if h) for s in sections]
    prefix_tokens = [len(e.ids) + 1 if p else 0 for p, e in zip(prefixes, tokenizer.encode_batch(prefixes, add_special_tokens=False))]
    block_encodings = tokenizer.encode_batch([doc.text[b.start:b.end] for b in doc.blocks], add_special_tokens=False)
    encodings = iter(block_encodings)
    for blocks, extra in zip(sections, prefix_tokens):
        budget = max(max_tokens - _SPECIAL_TOKENS - extra, max_tokens // 4)
        units = [u for b in blocks for u in _units(doc.text, b, next(encodings), budget)]
        for group in _pack(units, budget, overlap):
            start, end = group[0].start, group[-1].end
            chunks.append(Chunk(
                doc_id=doc.doc_id, source=doc.source, title=doc.title, headings=blocks[0].headings,
                page=group[0].page, start=start, end=end, text=doc.text[start:end],
                n_tokens=sum(u.tokens for u in group) + extra + _SPECIAL_TOKENS, metadata=doc.metadata,
            ))
    return chunks


def _units(text: str, block: Block, encoding, budget: int) -> list[_Unit]:
    """Sentences of ``block`` with token counts; sentences over budget are cut into windows."""
    starts = [block.start + s for s, _ in encoding.offsets]
    units = []
    for s, e in _sentences(text, block.start, block.end):
        lo, hi = bisect.bisect_left(starts, s), bisect.bisect_left(starts, e)
        n = hi - lo
        if n <= budget:
            units.append(_Unit(s, e, n, block.page))
            continue
        for w in range(lo, hi, budget):  # token windows over an over-long sentence
            ws = s if w == lo else starts[w]
            we = e if w + budget >= hi else starts[w + budget]
            units.append(_Unit(ws, we, min(budget, hi - w), block.page))
    return [u for u in units if u.end > u.start]


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans, pos = [], start
    for m in _SENTENCE_END.finditer(text, start, end):
        if m.start() > pos:
            spans.append((pos, m.start()))
        pos = m.end()
    if pos < end:
        spans.append((pos, end))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def _pack(units: Sequence[_Unit], budget: int, overlap: int) -> list[list[_Unit]]:
    groups: list[list[_Unit]] = []
    current: list[_Unit] = []
    size = 0
    for unit in units:
        if current and size + unit.tokens > budget:
            groups.append(current)
            current, size = _tail(current, overlap)
            if size + unit.tokens > budget:
                current, size = [], 0
        current.append(unit)
        size += unit.tokens
    if current:
        groups.append(current)
    return groups


def _tail(units: list[_Unit], overlap: int) -> tuple[list[_Unit], int]:
    """The trailing units of a full chunk that fit in ``overlap`` tokens (whole sentences only)."""
    tail: list[_Unit] = []
    size = 0
    for unit in reversed(units[1:]):  # never repeat a whole chunk
        if size + unit.tokens > overlap:
            break
        tail.insert(0, unit)
        size += unit.tokens
    return tail, size

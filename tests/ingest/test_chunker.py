import pytest

from ragtune.embed import get_embedder
from ragtune.ingest.chunker import chunk_document
from ragtune.types import Block, Document


@pytest.fixture(scope="module")
def tokenizer():
    return get_embedder().tokenizer


def make_doc(paragraphs, headings=()):
    text, blocks = "", []
    for i, (para, head) in enumerate(zip(paragraphs, headings or [()] * len(paragraphs))):
        if text:
            text += "\n\n"
        blocks.append(Block(len(text), len(text) + len(para), head, None))
        text += para
    return Document("d", "d.md", "Title", text, blocks)


def n_tokens(tokenizer, text):
    return len(tokenizer.encode(text, add_special_tokens=True).ids)


def test_chunks_respect_budget_offsets_and_overlap(tokenizer):
    sentences = [f"Sentence number {i} talks about topic {i * 7} in some detail." for i in range(60)]
    doc = make_doc([" ".join(sentences[:30]), " ".join(sentences[30:])])
    chunks = chunk_document(doc, tokenizer, max_tokens=64, overlap=16)
    assert len(chunks) > 4
    for c in chunks:
        assert doc.text[c.start:c.end] == c.text
        assert n_tokens(tokenizer, c.embed_text) <= 64 + 2, c.embed_text  # +2: tokenisation of joins may differ
    # consecutive chunks share whole trailing sentences
    shared = [a for a, b in zip(chunks, chunks[1:]) if b.start < a.end]
    assert shared, "expected overlap"
    assert all(doc.text[b.start:a.end].strip().endswith(".") for a, b in zip(chunks, chunks[1:]) if b.start < a.end)
    # all text is covered
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(doc.text) if not ch.isspace())


def test_chunks_never_cross_headings(tokenizer):
    doc = make_doc(["Alpha text.", "Beta text.", "Gamma text."], [("A",), ("A",), ("B",)])
    chunks = chunk_document(doc, tokenizer, max_tokens=256, overlap=0)
    assert [c.headings for c in chunks] == [("A",), ("B",)]
    assert chunks[0].text == "Alpha text.\n\nBeta text."
    assert chunks[0].embed_text.startswith("Title > A\n\n")


def test_overlong_sentence_is_cut_by_tokens(tokenizer):
    doc = make_doc(["word " * 1000])
    chunks = chunk_document(doc, tokenizer, max_tokens=128, overlap=0)
    assert len(chunks) >= 8
    assert all(n_tokens(tokenizer, c.embed_text) <= 130 for c in chunks)
    assert sum(c.text.count("word") for c in chunks) == 1000

import shutil

import pytest

from tests.conftest import HANDBOOK, chunk_rows
from tests.formats import make_all


def test_every_format_lands_and_its_fact_ranks_first(ws, tmp_path):
    facts = make_all(tmp_path / "docs")
    report = ws.ingest([tmp_path / "docs"])
    assert not report.problems
    assert sorted(s.rsplit("/", 1)[-1] for s in report.added) == sorted(facts)
    for name, (question, fact) in facts.items():
        for mode in ("dense", "bm25", "hybrid"):
            top = ws.search(question, k=3, mode=mode)[0]
            assert top.source.endswith(name), (mode, question, top.source)
            assert fact in top.text
    pdf_hit = ws.search(facts["report.pdf"][0], k=1)[0]
    assert pdf_hit.page == 2
    md_hit = ws.search(facts["guide.md"][0], k=1)[0]
    assert md_hit.heading == "Networking > Ports" and md_hit.title == "Operations guide"
    rec = ws.search(facts["records.jsonl"][0], k=1)[0]
    assert rec.doc_id == "r1" and rec.metadata == {"region": "north"}


def test_handbook_queries_find_their_passage(ws, handbook_queries):
    ws.ingest([HANDBOOK])
    for q in handbook_queries:
        top = ws.search(q["query"], k=1, mode="hybrid")[0]
        assert top.source.endswith(q["expect_source"]), q
        assert " ".join(q["expect_text"].split()) in " ".join(top.text.split()), q
        if q["page"]:
            assert top.page == q["page"]


def test_reingest_is_a_noop_and_changes_are_reflected(ws, tmp_path):
    docs = tmp_path / "docs"
    make_all(docs)
    first = ws.ingest([docs])
    version = first.index_version
    rows = chunk_rows(ws)

    again = ws.ingest([docs])
    assert len(again.unchanged) == 6 and not (again.added or again.updated or again.removed)
    assert again.chunks_embedded == 0 and ws.store.version() == version
    assert sorted(r["id"] for r in chunk_rows(ws)) == sorted(r["id"] for r in rows)

    (docs / "notes.txt").write_text("The harbour lighthouse was repainted ultramarine blue in spring.\n")
    (docs / "guide.md").unlink()
    changed = ws.ingest([docs])
    assert changed.updated == [s for s in changed.updated if s.endswith("notes.txt")] and len(changed.updated) == 1
    assert len(changed.removed) == 1 and changed.removed[0].endswith("guide.md")
    assert changed.chunks_embedded == 1  # only the changed file's one chunk is new text
    after = chunk_rows(ws)
    assert not any(r["source"].endswith("guide.md") for r in after)
    notes = [r for r in after if r["source"].endswith("notes.txt")]
    assert len(notes) == 1 and "ultramarine" in notes[0]["text"]
    assert ws.search("What colour is the harbour lighthouse?", k=1)[0].text.startswith("The harbour lighthouse was repainted")
    assert all(not h.source.endswith("guide.md") for h in ws.search("telemetry daemon port", k=10, mode="bm25"))


def test_bad_inputs_are_reported_and_the_rest_lands(ws, tmp_path):
    docs = tmp_path / "docs"
    make_all(docs)
    (docs / "empty.txt").write_text("")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7 this is not a pdf")
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02" * 100)
    (docs / "mixed.jsonl").write_text('{"id": "m1", "text": "Mixed good record about zeppelins."}\n{not json}\n')
    report = ws.ingest([docs, tmp_path / "missing-folder"])
    reasons = {p.path.rsplit("/", 1)[-1]: (p.severity, p.reason) for p in report.problems}
    assert reasons["empty.txt"][0] == "error" and "empty file" in reasons["empty.txt"][1]
    assert reasons["broken.pdf"][0] == "error"
    assert "binary" in reasons["blob.txt"][1]
    assert reasons["mixed.jsonl"] == ("warning", "line 2: not valid JSON (Expecting property name enclosed in double quotes); skipped")
    assert "no such file" in reasons["missing-folder"][1]
    sources = {r["source"].rsplit("/", 1)[-1] for r in chunk_rows(ws)}
    assert sources == {"notes.txt", "guide.md", "page.html", "report.pdf", "memo.docx", "records.jsonl", "mixed.jsonl"}
    assert ws.search("zeppelins", k=1, mode="bm25")[0].doc_id == "m1"


def test_a_file_that_turns_bad_keeps_its_previous_chunks(ws, tmp_path):
    docs = tmp_path / "docs"
    make_all(docs)
    ws.ingest([docs])
    before = [r for r in chunk_rows(ws) if r["source"].endswith("report.pdf")]
    (docs / "report.pdf").write_bytes(b"%PDF-1.7 truncated")
    report = ws.ingest([docs])
    assert [p.path.rsplit("/", 1)[-1] for p in report.errors] == ["report.pdf"]
    assert [r for r in chunk_rows(ws) if r["source"].endswith("report.pdf")] == before


def test_changing_chunking_reuses_cached_embeddings(ws, tmp_path):
    shutil.copytree(HANDBOOK, tmp_path / "hb")
    first = ws.ingest([tmp_path / "hb"])
    ws.config = ws.config.override("ingest", chunk_tokens=128, chunk_overlap=16)
    smaller = ws.ingest([tmp_path / "hb"])
    assert len(smaller.updated) == len(first.added)
    assert smaller.chunks_written > first.chunks_written
    ws.config = ws.config.override("ingest", chunk_tokens=256, chunk_overlap=32)
    back = ws.ingest([tmp_path / "hb"])
    assert back.chunks_written == first.chunks_written and back.chunks_embedded == 0


def test_changing_the_embedding_model_is_refused(ws, tmp_path):
    from ragtune.errors import IndexMismatchError

    make_all(tmp_path / "docs")
    ws.ingest([tmp_path / "docs"])
    ws.config = ws.config.override("embed", backend="onnx")
    with pytest.raises(IndexMismatchError, match="ragtune index rebuild"):
        ws.search("lighthouse")
    with pytest.raises(IndexMismatchError):
        ws.ingest([tmp_path / "docs"])
    report = ws.rebuild()
    assert len(report.added) == 6
    assert ws.stats().model_id.startswith("minilm/onnx@")
    assert ws.search("What colour is the harbour lighthouse?", k=1)[0].source.endswith("notes.txt")


def test_filters(ws, tmp_path):
    make_all(tmp_path / "docs")
    ws.ingest([tmp_path / "docs"])
    assert {h.source.rsplit("/", 1)[-1] for h in ws.search("daemon disks operations lighthouse", k=20, mode="hybrid", filters=["source=*.md"])} == {"guide.md"}
    assert all(h.metadata["region"] == "south" for h in ws.search("river lake", k=5, filters={"region": "south"}))
    assert [h.doc_id for h in ws.search("river lake", k=5, mode="dense", filters=["meta.region=north"])] == ["r1"]
    assert all(h.page == 2 for h in ws.search("basalt quarry staffing", k=5, filters=["page=2"]))
    assert ws.search("lighthouse", k=5, filters=["doc_id=nope"]) == []


def test_stats(ws, tmp_path):
    make_all(tmp_path / "docs")
    report = ws.ingest([tmp_path / "docs"])
    s = ws.stats()
    assert (s.documents, s.sources, s.chunks) == (7, 6, report.chunks_written)
    assert s.model == "minilm" and s.dim == 384 and s.index_version == report.index_version


def test_include_and_exclude_globs(ws, tmp_path):
    docs = tmp_path / "docs"
    make_all(docs)
    (docs / "sub").mkdir()
    (docs / "sub" / "deep.md").write_text("# Deep\n\nA nested markdown file about kelp forests.\n")
    (docs / ".hidden.md").write_text("# Hidden\n\nShould never be indexed.\n")
    ws.config = ws.config.override("ingest", include=["**/*.md"], exclude=[".*", "sub/*"])
    report = ws.ingest([docs])
    assert [s.rsplit("/", 1)[-1] for s in report.added] == ["guide.md"]
    ws.config = ws.config.override("ingest", include=["**/*.md"], exclude=[".*"])
    report = ws.ingest([docs])
    assert [s.rsplit("/", 1)[-1] for s in report.added] == ["deep.md"]


def test_oversized_file_in_a_batch(ws, tmp_path):
    docs = tmp_path / "docs"
    make_all(docs)
    (docs / "huge.txt").write_text("lorem ipsum " * 200_000)
    ws.config = ws.config.override("ingest", max_file_mb=1)
    report = ws.ingest([docs])
    [problem] = report.errors
    assert problem.path.endswith("huge.txt") and "over ingest.max_file_mb = 1" in problem.reason
    assert len(report.added) == 6


def test_sources_inside_the_workspace_are_relative(ws):
    docs = ws.root / "kb"
    make_all(docs)
    report = ws.ingest([docs])
    assert "kb/guide.md" in report.added

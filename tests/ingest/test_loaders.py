import pytest

from ragtune.config import IngestConfig
from ragtune.errors import LoadError
from ragtune.ingest.loaders import load_file
from tests.formats import make_all, make_pdf

CFG = IngestConfig()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    make_all(folder)
    return folder


def block_texts(doc):
    return [doc.text[b.start:b.end] for b in doc.blocks]


def test_markdown_headings_and_code_comments(files):
    [doc] = load_file(files / "guide.md", "guide.md", CFG).documents
    assert doc.title == "Operations guide"
    fact = next(b for b in doc.blocks if "48213" in doc.text[b.start:b.end])
    assert fact.headings == ("Networking", "Ports")  # the title is not repeated in the path
    code = next(b for b in doc.blocks if "echo hi" in doc.text[b.start:b.end])
    assert code.headings == ("Networking", "Ports")  # "# not a heading" inside the fence is code
    assert all("Storage" != h for h in fact.headings)


def test_html_drops_script_style_nav(files):
    [doc] = load_file(files / "page.html", "page.html", CFG).documents
    assert doc.title == "Canteen"
    assert "Ilse Fenwick" in doc.text and "Spelt on Fridays" in doc.text
    for junk in ("SCRIPTTEXT", "NAVTEXT", "color:red"):
        assert junk not in doc.text
    assert next(b for b in doc.blocks if "Fenwick" in doc.text[b.start:b.end]).headings == ("Bakery",)


def test_pdf_pages_are_kept(files):
    [doc] = load_file(files / "report.pdf", "report.pdf", CFG).documents
    pages = {doc.text[b.start:b.end].split()[0]: b.page for b in doc.blocks}
    assert pages["Quarterly"] == 1 and pages["The"] == 2


def test_docx_headings(files):
    [doc] = load_file(files / "memo.docx", "memo.docx", CFG).documents
    assert doc.title == "Office memo"
    block = next(b for b in doc.blocks if "Admiral Biscuit" in doc.text[b.start:b.end])
    assert block.headings == ("Animals",)


def test_jsonl_records_with_field_mapping(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"key": "a", "name": "Alpha", "body": "First body.", "lang": "en", "nested": {"x": 1}}\n'
                 'this is not json\n'
                 '{"key": "b", "body": ""}\n'
                 '{"key": "c", "body": "Third body."}\n')
    cfg = IngestConfig(record_id_field="key", record_title_field="name", record_text_field="body")
    loaded = load_file(p, "r.jsonl", cfg)
    assert [d.doc_id for d in loaded.documents] == ["a", "c"]
    assert loaded.documents[0].title == "Alpha"
    assert loaded.documents[0].metadata == {"lang": "en"}  # scalars only
    assert any(w.startswith("line 2: not valid JSON") for w in loaded.warnings)
    assert any(w.startswith("line 3: no text in field 'body'") for w in loaded.warnings)


def test_json_array_and_gzip(tmp_path):
    import gzip

    (tmp_path / "a.json").write_text('[{"_id": "x1", "text": "hello there"}]')
    assert load_file(tmp_path / "a.json", "a.json", CFG).documents[0].doc_id == "x1"
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write('{"_id": "g1", "title": "T", "text": "zipped text"}\n')
    assert load_file(tmp_path / "c.jsonl.gz", "c.jsonl.gz", CFG).documents[0].text == "zipped text"


def test_latin1_text_is_decoded_with_a_warning(tmp_path):
    p = tmp_path / "old.txt"
    p.write_bytes("Le café de la gare est fermé le dimanche. Très bien, à bientôt, garçon.".encode("cp1252"))
    loaded = load_file(p, "old.txt", CFG)
    assert "café" in loaded.documents[0].text
    assert "not UTF-8" in loaded.warnings[0]


@pytest.mark.parametrize("name, content, reason", [
    ("empty.txt", b"", "empty file"),
    ("blank.md", b"   \n\n  ", "empty file"),
    ("binary.txt", bytes(range(256)) * 4, "binary file"),
    ("corrupt.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\ngarbage garbage\n%%EOF", "PDF"),
    ("corrupt.docx", b"PK\x03\x04 not really a zip", "corrupt or unreadable DOCX"),
    ("bad.json", b'{"text": "unterminated', "not valid JSON (line 1"),
    ("allbad.jsonl", b"nope\nstill nope\n", "no usable records"),
    ("image.png", b"\x89PNG....", "unsupported file type"),
])
def test_bad_files_raise_one_clear_reason(tmp_path, name, content, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(LoadError) as e:
        load_file(p, name, CFG)
    assert reason in str(e.value)
    assert "\n" not in str(e.value)


def test_pdf_without_text_layer(tmp_path):
    make_pdf(tmp_path / "scan.pdf", [""])
    with pytest.raises(LoadError, match="no text layer"):
        load_file(tmp_path / "scan.pdf", "scan.pdf", CFG)


def test_enormous_file_is_refused_before_reading(tmp_path):
    p = tmp_path / "big.txt"
    p.write_text("word " * 300_000)  # 1.5 MB
    with pytest.raises(LoadError, match="over ingest.max_file_mb = 1"):
        load_file(p, "big.txt", IngestConfig(max_file_mb=1))

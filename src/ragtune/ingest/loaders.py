"""Loaders: one function per file type, each ``(path, source, cfg) -> Loaded``.

Every loader builds the document text itself and records the structure as ``Block``s
(character spans with their heading path and page), so chunks can cite where they came from.
Parsing is left to well-kept libraries: markdown-it-py, BeautifulSoup, pypdf, python-docx.
A file that cannot be read raises ``LoadError`` with the reason and what to do.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ragtune.config import IngestConfig
from ragtune.errors import LoadError
from ragtune.types import Block, Document


@dataclass
class Loaded:
    documents: list[Document]
    warnings: list[str] = field(default_factory=list)


class _TextBuilder:
    """Accumulates blocks of text, separated by blank lines, with their offsets."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.blocks: list[Block] = []
        self.length = 0
        self.headings: list[tuple[int, str]] = []  # (level, text) stack

    def heading(self, level: int, text: str) -> None:
        text = " ".join(text.split())
        if not text:
            return
        while self.headings and self.headings[-1][0] >= level:
            self.headings.pop()
        self.headings.append((level, text))

    def add(self, text: str, page: int | None = None) -> None:
        text = text.strip()
        if not text:
            return
        if self.parts:
            self.parts.append("\n\n")
            self.length += 2
        self.blocks.append(Block(self.length, self.length + len(text), tuple(h for _, h in self.headings), page))
        self.parts.append(text)
        self.length += len(text)

    def document(self, doc_id: str, source: str, title: str, metadata: dict | None = None) -> Document:
        # the title heads every chunk already: drop it from the heading paths where it repeats
        blocks = [Block(b.start, b.end, b.headings[1:], b.page) if b.headings[:1] == (title,) else b for b in self.blocks]
        return Document(doc_id, source, title, "".join(self.parts), blocks, metadata or {})


# -- plain text ------------------------------------------------------------------------------

def read_text(path: Path) -> tuple[str, list[str]]:
    """Decode a text file: UTF-8 (with or without BOM), UTF-16 with BOM, else a detected encoding."""
    data = path.read_bytes()
    if not data.strip():
        raise LoadError("empty file: nothing to index")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16"), []
    if b"\x00" in data[:8192]:
        raise LoadError("binary file (contains NUL bytes), not text: exclude it or convert it to a supported format")
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as e:
        bad_at = e.start
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None or best.encoding in ("utf_8", "ascii"):
        raise LoadError(f"not valid UTF-8 (bad byte at offset {bad_at}) and the encoding could not be detected: "
                        "convert it with `iconv -f ENCODING -t UTF-8`")
    return str(best), [f"not UTF-8: decoded as {best.encoding} (detected); convert it to UTF-8 to be sure"]


def load_text(path: Path, source: str, cfg: IngestConfig) -> Loaded:
    text, warnings = read_text(path)
    b = _TextBuilder()
    for para in _paragraphs(text):
        b.add(para)
    _require_text(b)
    return Loaded([b.document(source, source, path.stem)], warnings)


def _paragraphs(text: str) -> list[str]:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [p for p in text.split("\n\n") if p.strip()]


def _require_text(b: _TextBuilder, hint: str = "") -> None:
    if not b.blocks:
        raise LoadError("no text found in the file" + (f": {hint}" if hint else ""))


# -- markdown --------------------------------------------------------------------------------

def load_markdown(path: Path, source: str, cfg: IngestConfig) -> Loaded:
    from markdown_it import MarkdownIt

    text, warnings = read_text(path)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    b = _TextBuilder()
    title = ""
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.level != 0 or tok.map is None:
            i += 1
            continue
        start, end = tok.map
        if tok.type == "heading_open":
            heading = tokens[i + 1].content
            b.heading(int(tok.tag[1]), heading)
            title = title or (heading if tok.tag == "h1" else "")
        elif tok.type != "hr":
            b.add("\n".join(lines[start:end]))
        i += 1
    _require_text(b)
    return Loaded([b.document(source, source, title or path.stem)], warnings)


# -- html ------------------------------------------------------------------------------------

_HTML_DROP = ["script", "style", "nav", "noscript", "template", "svg", "head", "iframe", "form"]
_HTML_HEADINGS = {f"h{i}" for i in range(1, 7)}
_HTML_BLOCKS = ["p", "li", "pre", "blockquote", "tr", "dt", "dd", "figcaption", "caption", "address"]


def load_html(path: Path, source: str, cfg: IngestConfig) -> Loaded:
    from bs4 import BeautifulSoup

    text, warnings = read_text(path)
    soup = BeautifulSoup(text, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(_HTML_DROP):
        tag.decompose()
    b = _TextBuilder()
    wanted = set(_HTML_BLOCKS) | _HTML_HEADINGS
    for el in soup.find_all(list(wanted)):
        if el.name in _HTML_HEADINGS:
            b.heading(int(el.name[1]), el.get_text(" ", strip=True))
            title = title or el.get_text(" ", strip=True)
        elif not any(p.name in wanted for p in el.parents):
            b.add(_html_block_text(el))
    if not b.blocks:  # no block markup at all: fall back to the visible text
        for para in _paragraphs(soup.get_text("\n")):
            b.add(para)
    _require_text(b, "the page has no visible text")
    return Loaded([b.document(source, source, title or path.stem)], warnings)


def _html_block_text(el: Any) -> str:
    if el.name == "tr":
        return " | ".join(c.get_text(" ", strip=True) for c in el.find_all(["td", "th"]))
    if el.name == "pre":
        return el.get_text()
    return " ".join(el.get_text(" ").split())


# -- pdf -------------------------------------------------------------------------------------

def load_pdf(path: Path, source: str, cfg: IngestConfig) -> Loaded:
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoadError("encrypted PDF: decrypt it first (e.g. `qpdf --decrypt in.pdf out.pdf`)")
        pages = [page.extract_text() or "" for page in reader.pages]
        outline = _pdf_outline(reader)
        title = (reader.metadata or {}).get("/Title") or ""
    except LoadError:
        raise
    except Exception as e:  # pypdf raises many types for damaged files
        raise LoadError(f"corrupt or unreadable PDF ({type(e).__name__}: {e}); re-export or repair it (e.g. `qpdf in.pdf out.pdf`)") from None
    b = _TextBuilder()
    for number, page_text in enumerate(pages, start=1):
        for level, heading in outline.get(number, []):
            b.heading(level, heading)
        for para in _paragraphs(page_text):
            b.add(para, page=number)
    _require_text(b, "the PDF has no text layer (scanned?); run OCR first (e.g. `ocrmypdf`)")
    return Loaded([b.document(source, source, str(title).strip() or path.stem)])


def _pdf_outline(reader: Any) -> dict[int, list[tuple[int, str]]]:
    """Bookmarks as {page number: [(level, title)]}, used as heading paths."""
    found: dict[int, list[tuple[int, str]]] = {}

    def walk(items: list, level: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            try:
                page = reader.get_destination_page_number(item) + 1
            except Exception:
                continue
            found.setdefault(page, []).append((level, str(item.title)))

    try:
        walk(reader.outline, 1)
    except Exception:
        return {}
    return found


# -- docx ------------------------------------------------------------------------------------

def load_docx(path: Path, source: str, cfg: IngestConfig) -> Loaded:
    import docx
    from docx.table import Table

    try:
        d = docx.Document(str(path))
    except Exception as e:
        raise LoadError(f"corrupt or unreadable DOCX ({type(e).__name__}); open and re-save it in a word processor") from None
    b = _TextBuilder()
    title = d.core_properties.title or ""
    for item in d.iter_inner_content():
        if isinstance(item, Table):
            for row in item.rows:
                b.add(" | ".join(c.text.strip() for c in row.cells))
            continue
        style = item.style.name if item.style is not None else ""
        if style == "Title" or style.startswith("Heading"):
            level = int(style.split()[-1]) if style.split()[-1].isdigit() else 1
            b.heading(level, item.text)
            title = title or item.text.strip()
        else:
            b.add(item.text)
    _require_text(b)
    return Loaded([b.document(source, source, title or path.stem)])


# -- json / jsonl records --------------------------------------------------------------------

def load_records(path: Path, source: str, cfg: IngestConfig) -> Loaded:
    """One Document per record. Bad records are reported by line number; the others still load."""
    rows, warnings = _read_records(path)
    docs: list[Document] = []
    seen: set[str] = set()
    for line, rec in rows:
        where = f"line {line}" if line else "record"
        if not isinstance(rec, dict):
            warnings.append(f"{where}: not a JSON object; skipped")
            continue
        body = rec.get(cfg.record_text_field)
        if not isinstance(body, str) or not body.strip():
            warnings.append(f"{where}: no text in field '{cfg.record_text_field}' (set ingest.record_text_field); skipped")
            continue
        rid = rec.get(cfg.record_id_field, rec.get("_id"))
        doc_id = str(rid) if rid is not None else f"{source}#{line}"
        if doc_id in seen:
            warnings.append(f"{where}: duplicate id {doc_id!r}; skipped")
            continue
        seen.add(doc_id)
        title = rec.get(cfg.record_title_field) or ""
        b = _TextBuilder()
        for para in _paragraphs(body):
            b.add(para)
        docs.append(b.document(doc_id, source, str(title).strip(), _record_metadata(rec, cfg)))
    if not docs:
        raise LoadError(f"no usable records (need a non-empty '{cfg.record_text_field}' field; set ingest.record_text_field)"
                        + (f"; first problem: {warnings[0]}" if warnings else ""))
    return Loaded(docs, warnings)


def _read_records(path: Path) -> tuple[list[tuple[int, Any]], list[str]]:
    opener: Callable[..., Any] = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            raw = f.read()
    except UnicodeDecodeError as e:
        raise LoadError(f"not valid UTF-8 (byte offset {e.start}); JSON must be UTF-8") from None
    except (OSError, EOFError) as e:
        raise LoadError(f"cannot be read: {e}") from None
    if not raw.strip():
        raise LoadError("empty file: nothing to index")
    if ".jsonl" not in path.name:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise LoadError(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        return [(0, r) for r in (data if isinstance(data, list) else [data])], []
    rows, warnings = [], []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            warnings.append(f"line {number}: not valid JSON ({e.msg}); skipped")
    return rows, warnings


def _record_metadata(rec: dict, cfg: IngestConfig) -> dict[str, Any]:
    skip = {cfg.record_text_field, cfg.record_title_field, cfg.record_id_field, "_id"}
    keys = cfg.record_metadata_fields or [k for k in rec if k not in skip]
    return {k: rec[k] for k in keys if k in rec and isinstance(rec[k], (str, int, float, bool))}


# -- registry --------------------------------------------------------------------------------

LOADERS: dict[str, Callable[[Path, str, IngestConfig], Loaded]] = {
    ".txt": load_text,
    ".text": load_text,
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
    ".docx": load_docx,
    ".jsonl": load_records,
    ".jsonl.gz": load_records,
    ".json": load_records,
}


def file_type(path: Path) -> str | None:
    """The registry key for ``path`` ('.jsonl.gz' included), or None if unsupported."""
    name = path.name.lower()
    for suffix in sorted(LOADERS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return None


def load_file(path: Path, source: str, cfg: IngestConfig) -> Loaded:
    kind = file_type(path)
    if kind is None:
        raise LoadError(f"unsupported file type '{path.suffix}'; supported: {', '.join(LOADERS)}")
    try:
        size = path.stat().st_size
        if size > cfg.max_file_mb * 1024 * 1024:
            raise LoadError(f"file is {size / 2**20:.1f} MB, over ingest.max_file_mb = {cfg.max_file_mb:g}; "
                            "raise it in ragtune.toml or split the file")
        return LOADERS[kind](path, source, cfg)
    except PermissionError:
        raise LoadError("permission denied: cannot read the file") from None
    except IsADirectoryError:
        raise LoadError("is a directory") from None
    except OSError as e:
        raise LoadError(f"cannot be read: {e.strerror or e}") from None

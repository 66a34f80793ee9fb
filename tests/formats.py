"""Small files of every supported format, made on the spot, each with one distinctive fact."""

from pathlib import Path

FACTS = {
    "notes.txt": ("What colour is the harbour lighthouse?", "The harbour lighthouse is painted tangerine orange"),
    "guide.md": ("Which port does the telemetry daemon listen on?", "The telemetry daemon listens on port 48213"),
    "page.html": ("Who bakes the sourdough for the canteen?", "Sourdough for the canteen is baked by Ilse Fenwick"),
    "report.pdf": ("How many tonnes of basalt were quarried?", "The quarry produced 7312 tonnes of basalt"),
    "memo.docx": ("What is the name of the office parrot?", "The office parrot is called Admiral Biscuit"),
    "records.jsonl": ("Which river floods every March?", "The Quillon river floods every March"),
}


def make_all(folder: Path) -> dict[str, tuple[str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("Harbour notes\n\n" + FACTS["notes.txt"][1] + ".\n\nThe tide tables are posted weekly.\n")
    (folder / "guide.md").write_text(
        "# Operations guide\n\nIntro paragraph about operations.\n\n## Networking\n\n### Ports\n\n"
        + FACTS["guide.md"][1] + ".\n\n```bash\n# not a heading\necho hi\n```\n\n## Storage\n\nDisks are mirrored nightly.\n")
    (folder / "page.html").write_text(
        "<html><head><title>Canteen</title><style>p{color:red}</style><script>var secret='SCRIPTTEXT';</script></head>"
        "<body><nav>NAVTEXT home about</nav><h1>Canteen</h1><h2>Bakery</h2><p>" + FACTS["page.html"][1]
        + ".</p><ul><li>Rye on Mondays</li><li>Spelt on Fridays</li></ul></body></html>")
    make_pdf(folder / "report.pdf", ["Quarterly report. Page one is about staffing and rotas.",
                                     FACTS["report.pdf"][1] + " in the third quarter."])
    make_docx(folder / "memo.docx", "Office memo", [("Animals", FACTS["memo.docx"][1] + ".")])
    (folder / "records.jsonl").write_text(
        '{"id": "r1", "title": "Rivers", "text": "' + FACTS["records.jsonl"][1] + '.", "region": "north"}\n'
        '{"id": "r2", "title": "Lakes", "text": "Lake Omber is frozen from December.", "region": "south"}\n')
    return FACTS


def make_pdf(path: Path, pages: list[str]) -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=A4)
    for text in pages:
        c.drawString(72, 750, text)
        c.showPage()
    c.save()


def make_docx(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    import docx

    d = docx.Document()
    d.add_heading(title, level=1)
    for heading, body in sections:
        d.add_heading(heading, level=2)
        d.add_paragraph(body)
    d.save(str(path))

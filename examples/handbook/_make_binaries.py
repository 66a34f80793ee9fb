"""Generate the binary sample documents of the Kestrel Ridge handbook.

Produces, next to this script:

* ``annual-report-2025.pdf`` -- a 3-page PDF with a text layer (reportlab),
  one topic per page so that page numbers of search hits can be checked;
* ``it-faq.docx`` -- a Word document with Heading 1 / Heading 2 styles
  (python-docx).

Both outputs are deterministic: re-running the script gives identical bytes.

Usage::

    python examples/handbook/_make_binaries.py
"""

from __future__ import annotations

import datetime as _dt
import io
import zipfile
from pathlib import Path

import reportlab.rl_config

reportlab.rl_config.invariant = 1  # fixed timestamps / IDs -> identical bytes

from reportlab.lib.pagesizes import A4  # noqa: E402
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet  # noqa: E402
from reportlab.lib.units import cm  # noqa: E402
from reportlab.platypus import (  # noqa: E402
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
)

HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------
# PDF: Annual Report 2025
# --------------------------------------------------------------------------

PDF_PAGES: list[list[tuple[str, str]]] = [
    # Page 1 -- foreword and the year in numbers
    [
        ("title", "Kestrel Ridge Observatory - Annual Report 2025"),
        ("h2", "Foreword from the Director"),
        ("p", "2025 was the busiest year in the history of the observatory. "
              "The summit recorded 212 clear nights, the highest total since "
              "records began, and our telescopes were in use for 96 percent of "
              "the available dark time. I thank every member of staff who kept "
              "the domes running through the long winter."),
        ("p", "The year also brought change. In May we welcomed our new Head of "
              "Science, Professor Leopold Marchetti-Quaye, who joined us from the "
              "Southern Lakes Institute. In September the board of trustees "
              "approved our five-year strategy, Clear Horizons 2030."),
        ("p", "Dr. Saskia Pelletier-Nkemelu, Director"),
        ("h2", "The Year in Numbers"),
        ("ul", [
            "212 clear nights on the summit",
            "87 peer-reviewed papers using observatory data",
            "31 PhD students supervised by observatory staff",
            "9,840 visitors, including 214 school groups",
            "4.1 petabytes of data in the archive by 31 December",
        ]),
        ("p", "Staff turnover fell to 6 percent, and the annual staff survey "
              "reported an engagement score of 81 out of 100."),
    ],
    # Page 2 -- finances
    [
        ("h2", "Financial Summary"),
        ("p", "Total income for the 2025 financial year was 18.4 million credits, "
              "an increase of 7 percent on 2024. Expenditure was 17.9 million "
              "credits, leaving a surplus of 0.5 million credits, which the "
              "trustees placed in the mirror re-coating reserve."),
        ("h3", "Sources of Income"),
        ("ul", [
            "Research grants: 9.6 million credits",
            "Halden Foundation endowment: 4.2 million credits",
            "Telescope time sold to partners: 2.7 million credits",
            "Visitor centre and open nights: 1.1 million credits",
            "Other income: 0.8 million credits",
        ]),
        ("p", "The largest single grant was a six-year award of 3.3 million "
              "credits from the Northern Skies Research Council for the Corrie "
              "time-domain survey."),
        ("h3", "Spending"),
        ("p", "Staff costs were 11.2 million credits. Energy for the summit cost "
              "1.35 million credits, down 18 percent after the new solar array "
              "on the south slope began generating in April 2025. The array has "
              "a peak output of 640 kilowatts."),
        ("p", "Capital spending reached 2.1 million credits, mostly on the new "
              "dome shutter motors for the Aldous Reflector."),
    ],
    # Page 3 -- science highlights and outlook
    [
        ("h2", "Science Highlights"),
        ("p", "The Corrie survey team discovered the exoplanet KRO-7b, a "
              "warm Neptune-sized planet orbiting its star every 11.6 days. "
              "The discovery paper, led by Dr. Amara Fenwick-Ito, was "
              "the most cited observatory paper of the year."),
        ("p", "Using the PELICAN spectrograph, the stellar group measured the "
              "rotation of 420 young stars in the Varrow Cluster, and showed "
              "that the cluster is about 38 million years old."),
        ("p", "The outreach team launched the Night Owls programme, which trained "
              "56 volunteer guides to lead public observing evenings."),
        ("h2", "Outlook for 2026"),
        ("ul", [
            "Install the adaptive optics unit WREN on the Aldous Reflector",
            "Open the new data centre at the Dunmere campus in October 2026",
            "Recruit 12 new research staff under Clear Horizons 2030",
            "Reduce travel emissions by 20 percent compared with 2023",
        ]),
        ("p", "The annual report was approved by the board of trustees "
              "on 3 March 2026."),
    ],
]


def _page_number(canvas, doc) -> None:
    canvas.saveState()
    canvas.setFont("Helvetica", 8)
    canvas.drawRightString(A4[0] - 2 * cm, 1.2 * cm, f"Page {doc.page} of 3")
    canvas.restoreState()


def make_pdf(path: Path) -> None:
    styles = getSampleStyleSheet()
    style_of = {
        "title": styles["Title"],
        "h2": styles["Heading2"],
        "h3": styles["Heading3"],
        "p": styles["BodyText"],
    }
    bullet_style = ParagraphStyle(
        "Bullet", parent=styles["BodyText"], leftIndent=14, spaceBefore=1, spaceAfter=1,
    )
    story = []
    for i, page in enumerate(PDF_PAGES):
        if i:
            story.append(PageBreak())
        for kind, content in page:
            if kind == "ul":
                # Bullets are part of the text run so that text extraction
                # keeps "- item" on a single line (no symbol-font glyphs).
                for item in content:
                    story.append(Paragraph("- " + item, bullet_style))
                story.append(Spacer(1, 4))
            else:
                story.append(Paragraph(content, style_of[kind]))
    doc = SimpleDocTemplate(
        str(path), pagesize=A4,
        leftMargin=2.2 * cm, rightMargin=2.2 * cm,
        topMargin=2 * cm, bottomMargin=2 * cm,
        title="Kestrel Ridge Observatory - Annual Report 2025",
        author="Kestrel Ridge Observatory", subject="Annual Report 2025",
        creator="ragtune examples/_make_binaries.py",
    )
    doc.build(story, onFirstPage=_page_number, onLaterPages=_page_number)


# --------------------------------------------------------------------------
# DOCX: IT FAQ
# --------------------------------------------------------------------------

DOCX_TITLE = "IT Frequently Asked Questions"
DOCX_INTRO = (
    "This FAQ is maintained by the observatory's IT Service Desk. If your "
    "question is not answered here, call the Service Desk on extension 4357 "
    "(it spells HELP on a phone keypad) between 08:00 and 18:00, or email "
    "servicedesk@kestrelridge.example."
)
DOCX_SECTIONS: list[tuple[str, list[str]]] = [
    ("How do I connect to the wireless network?", [
        "Staff laptops and phones should join the network called KRO-Skyline, "
        "using your observatory username and password. Visitors use the separate "
        "network Ridge-Guest; the guest password changes every Monday and is "
        "printed on the card at the Gatehouse desk.",
        "Wireless is switched off inside the telescope domes after sunset, "
        "because radio noise interferes with the instruments. Use the wired "
        "ports marked with a purple sticker instead.",
    ]),
    ("How often must I change my password?", [
        "Passwords expire every 180 days. A new password must be at least 14 "
        "characters long and must not repeat any of your last eight passwords. "
        "Multi-factor authentication with the Cipherkey app is compulsory for "
        "all accounts since 1 June 2024.",
    ]),
    ("How do I work from home?", [
        "Install the VPN client Tunnelwise from the Software Centre and connect "
        "to the gateway vpn.kestrelridge.example. The VPN disconnects "
        "automatically after 10 hours, so reconnect at the start of each "
        "working day. Observing data must never be downloaded to personal "
        "computers.",
    ]),
    ("Where can I print?", [
        "Every floor of the Halvorsen Building has a follow-me printer. Send "
        "your job to the queue KRO-Print and release it at any printer by "
        "tapping your badge. Colour printing costs 8 credits per 100 pages and "
        "is charged to your group budget. Print jobs not collected within 36 "
        "hours are deleted.",
    ]),
    ("How much storage do I get?", [
        "Each user has a 50 GB home folder, backed up every night to the "
        "Dunmere data centre. Research groups share project space on the "
        "Fellwater file server, where each group receives 20 TB. Backups are "
        "kept for 90 days, so files deleted by mistake can be restored within "
        "that period by raising a ticket.",
    ]),
    ("What should I do if I receive a suspicious email?", [
        "Do not click any links or open attachments. Use the Report Phish "
        "button in the mail client, which sends the message to the security "
        "team and removes it from your inbox. The security team runs a "
        "simulated phishing exercise four times a year; staff who click "
        "the test link are asked to repeat the 20-minute awareness course.",
    ]),
]

_FIXED_DT = _dt.datetime(2025, 1, 1, 0, 0, 0)


def _normalise_zip(data: bytes) -> bytes:
    """Rewrite a zip archive with fixed timestamps so the bytes are stable."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            zi = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            dst.writestr(zi, src.read(info.filename))
    return out.getvalue()


def make_docx(path: Path) -> None:
    import docx

    document = docx.Document()
    props = document.core_properties
    props.title = DOCX_TITLE
    props.author = "KRO IT Service Desk"
    props.last_modified_by = "KRO IT Service Desk"
    props.created = _FIXED_DT
    props.modified = _FIXED_DT
    props.revision = 1

    document.add_heading(DOCX_TITLE, level=1)
    document.add_paragraph(DOCX_INTRO)
    for heading, paragraphs in DOCX_SECTIONS:
        document.add_heading(heading, level=2)
        for text in paragraphs:
            document.add_paragraph(text)

    buf = io.BytesIO()
    document.save(buf)
    path.write_bytes(_normalise_zip(buf.getvalue()))


def main() -> None:
    pdf_path = HERE / "annual-report-2025.pdf"
    docx_path = HERE / "it-faq.docx"
    make_pdf(pdf_path)
    make_docx(docx_path)
    print(f"wrote {pdf_path.name} ({pdf_path.stat().st_size} bytes)")
    print(f"wrote {docx_path.name} ({docx_path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

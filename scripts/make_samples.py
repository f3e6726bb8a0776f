"""Write samples/benefits.docx and samples/travel-policy.pdf, the binary half of the demo set.

    .venv/bin/python scripts/make_samples.py [OUT_DIR]

The output is byte-for-byte reproducible (fixed dates, zip timestamps and PDF ids), so re-running
it does not churn the committed files.
"""

from __future__ import annotations

import io
import sys
import zipfile
from datetime import datetime
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
FIXED = datetime(2025, 1, 15, 9, 0, 0)


def make_benefits_docx(path: Path) -> None:
    import docx

    doc = docx.Document()
    props = doc.core_properties
    props.title, props.author, props.last_modified_by = "Benefits Guide 2025", "People Ops", ""
    props.created = props.modified = props.last_printed = FIXED
    props.revision = 1

    doc.add_heading("Northwind Robotics Benefits Guide 2025", level=0)
    doc.add_paragraph(
        "This guide summarises the benefits every permanent employee of Northwind Robotics "
        "receives. Questions go to the benefits lead, Hannah Brooks (benefits@northwind.example)."
    )

    doc.add_heading("Health insurance", level=1)
    doc.add_paragraph(
        "Private health insurance is provided by Meridian Health. Northwind pays 80% of the "
        "premium for employees and 50% for partners and children. Cover starts on your first day; "
        "the policy number is MH-NWR-55120."
    )
    doc.add_heading("Dental and eye care", level=2)
    doc.add_paragraph(
        "Dental check-ups are covered twice a year. Glasses or contact lenses are reimbursed up "
        "to GBP 220 every two years."
    )

    doc.add_heading("Pension", level=1)
    doc.add_paragraph(
        "Northwind matches your pension contributions up to 6% of your base salary. You are "
        "enrolled automatically with a 4% contribution and can change it each month in Tempo."
    )
    doc.add_heading("Vesting", level=2)
    doc.add_paragraph(
        "Employer contributions vest after 2 years of service. If you leave earlier, your own "
        "contributions remain yours in full."
    )

    doc.add_heading("Learning and wellbeing", level=1)
    doc.add_paragraph(
        "Each employee has a learning budget of EUR 1,500 per year for courses, books and "
        "conference tickets, plus 3 study days."
    )
    table = doc.add_table(rows=1, cols=3)
    table.rows[0].cells[0].text = "Benefit"
    table.rows[0].cells[1].text = "Amount"
    table.rows[0].cells[2].text = "How to claim"
    for row in (
        ("Gym membership", "GBP 40 per month", "Ledgerly, category Wellbeing"),
        ("Bike leasing", "up to GBP 2,000 bike", "Cycle scheme form from People Ops"),
        ("Home office kit", "GBP 300 once", "Ledgerly, category Equipment"),
    ):
        cells = table.add_row().cells
        for cell, text in zip(cells, row, strict=True):
            cell.text = text

    buf = io.BytesIO()
    doc.save(buf)
    path.write_bytes(_fixed_zip_times(buf.getvalue()))


def _fixed_zip_times(data: bytes) -> bytes:
    """Rewrite a zip with constant member timestamps (python-docx stamps the current time)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED.timetuple()[:6])
            fixed.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(fixed, src.read(info))
    return out.getvalue()


def make_travel_pdf(path: Path) -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer

    styles = getSampleStyleSheet()
    h1, h2, body = styles["Title"], styles["Heading2"], styles["BodyText"]
    pages = [
        [
            Paragraph("Northwind Robotics Travel Policy", h1),
            Paragraph("Booking travel", h2),
            Paragraph(
                "All business trips are booked through the travel desk, run by Oliver Grant "
                "(travel@northwind.example), at least 14 days before departure. Trips abroad "
                "need written approval from a director.",
                body,
            ),
            Paragraph(
                "Economy class is the standard for flights under 6 hours; premium economy is "
                "allowed for longer flights. Rail is preferred over flying for any journey "
                "under 4 hours.",
                body,
            ),
        ],
        [
            Paragraph("Meals and per diem", h2),
            Paragraph(
                "Instead of itemised meal receipts, travellers receive a daily per diem. The per "
                "diem is EUR 62 per day within Europe and USD 85 per day in North America. On the "
                "days you travel out and back, half the per diem is paid.",
                body,
            ),
            Paragraph("Hotels", h2),
            Paragraph(
                "Hotel rooms may cost up to GBP 160 per night in London and EUR 140 per night "
                "elsewhere in Europe. Book through the travel desk so the company rate applies.",
                body,
            ),
        ],
        [
            Paragraph("After the trip", h2),
            Paragraph(
                "Submit your travel expense report in Ledgerly within 10 working days of your "
                "return. Mileage for private cars is reimbursed at GBP 0.45 per mile.",
                body,
            ),
            Paragraph(
                "Lost receipts must be replaced by a signed missing-receipt declaration, at most "
                "twice a year.",
                body,
            ),
        ],
    ]
    story: list = []
    for i, page in enumerate(pages):
        if i:
            story.append(PageBreak())
        for flowable in page:
            story += [flowable, Spacer(1, 6)]
    # invariant=1 fixes the creation date and document id, so the bytes are reproducible.
    doc = SimpleDocTemplate(
        str(path), pagesize=A4, title="Travel Policy", author="Northwind Robotics", invariant=1
    )
    doc.build(story)


def main(out: Path = SAMPLES) -> None:
    out.mkdir(parents=True, exist_ok=True)
    make_benefits_docx(out / "benefits.docx")
    make_travel_pdf(out / "travel-policy.pdf")
    for name in ("benefits.docx", "travel-policy.pdf"):
        print(f"{out / name}: {(out / name).stat().st_size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLES)

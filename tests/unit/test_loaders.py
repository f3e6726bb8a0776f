"""ingest.loaders: each format's sections and metadata, and every bad file refused with a reason."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import docx
import pytest
from reportlab.lib.pagesizes import A4
from reportlab.lib.pdfencrypt import StandardEncryption
from reportlab.pdfgen import canvas

from core.errors import BadFile
from ingest.loaders import SUPPORTED_SUFFIXES, iter_files, load_file

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
MB = 2**20


def load(path: Path, max_bytes: int = MB):
    return load_file(path, max_bytes=max_bytes)


def bad(path: Path, max_bytes: int = MB) -> str:
    with pytest.raises(BadFile) as info:
        load_file(path, max_bytes=max_bytes)
    return str(info.value)


def make_pdf(path: Path, pages: list[str], encrypt=None) -> Path:
    pdf = canvas.Canvas(str(path), pagesize=A4, encrypt=encrypt, invariant=1)
    for text in pages:
        y = 800
        for line in text.split("\n"):
            pdf.drawString(72, y, line)
            y -= 16
        pdf.showPage()
    pdf.save()
    return path


# --- PDF -------------------------------------------------------------------------------------


def test_pdf_has_one_section_per_page_with_its_number(tmp_path):
    path = make_pdf(tmp_path / "t.pdf", ["Booking rules", "Per diem is EUR 62 per day", "Mileage"])
    docs = load(path)
    assert [d.metadata for d in docs] == [{"page": 1}, {"page": 2}, {"page": 3}]
    assert "EUR 62" in docs[1].page_content
    assert "EUR 62" not in docs[0].page_content + docs[2].page_content


def test_pdf_blank_pages_are_left_out(tmp_path):
    path = make_pdf(tmp_path / "t.pdf", ["first", "", "third"])
    assert [d.metadata["page"] for d in load(path)] == [1, 3]


def test_scanned_pdf_without_text_layer_is_refused(tmp_path):
    pdf = canvas.Canvas(str(tmp_path / "scan.pdf"))
    pdf.rect(100, 100, 300, 400, fill=1)  # stands in for a scanned image: marks, no text
    pdf.showPage()
    pdf.save()
    reason = bad(tmp_path / "scan.pdf")
    assert "no text layer" in reason
    assert "OCR" in reason


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.4\nthis is not really a pdf\n", b"<html>saved with the wrong name</html>"],
)
def test_corrupt_pdf_is_refused(tmp_path, data):
    path = tmp_path / "broken.pdf"
    path.write_bytes(data)
    assert "not a valid PDF" in bad(path)


def test_password_protected_pdf_is_refused(tmp_path):
    path = make_pdf(tmp_path / "locked.pdf", ["secret plans"], encrypt="hunter2")
    assert "encrypted" in bad(path)


def test_pdf_locked_only_against_editing_still_loads(tmp_path):
    owner_only = StandardEncryption(userPassword="", ownerPassword="owner", canModify=0)
    path = make_pdf(tmp_path / "readonly.pdf", ["readable text"], encrypt=owner_only)
    assert "readable text" in load(path)[0].page_content


# --- DOCX ------------------------------------------------------------------------------------


def make_docx(path: Path) -> Path:
    doc = docx.Document()
    doc.add_paragraph("Preamble before any heading.")
    doc.add_heading("Benefits", level=1)
    doc.add_paragraph("Overview of benefits.")
    doc.add_heading("Pension", level=2)
    doc.add_paragraph("Matched up to 6% of salary.")
    doc.add_heading("Vesting", level=3)
    doc.add_paragraph("Vests after 2 years.")
    doc.add_heading("Learning", level=2)
    table = doc.add_table(rows=3, cols=2)
    for row, (a, b) in zip(
        table.rows, [("Budget", "Per year"), ("EUR 1,500", "3 days"), ("Yes", "Yes")], strict=True
    ):
        row.cells[0].text, row.cells[1].text = a, b
    merged = table.add_row().cells
    merged[0].merge(merged[1]).text = "Spans both columns"
    doc.save(str(path))
    return path


def test_docx_sections_follow_the_heading_path(tmp_path):
    docs = load(make_docx(tmp_path / "b.docx"))
    by_heading = {d.metadata.get("heading"): d.page_content for d in docs}
    assert list(by_heading) == [
        None,
        "Benefits",
        "Benefits > Pension",
        "Benefits > Pension > Vesting",
        "Benefits > Learning",
    ]
    assert "Preamble" in by_heading[None]
    assert "6% of salary" in by_heading["Benefits > Pension"]
    assert "2 years" in by_heading["Benefits > Pension > Vesting"]
    assert "2 years" not in by_heading["Benefits > Pension"]


def test_docx_tables_become_text_rows(tmp_path):
    docs = load(make_docx(tmp_path / "b.docx"))
    learning = next(d for d in docs if d.metadata.get("heading") == "Benefits > Learning")
    assert "Budget | Per year" in learning.page_content
    assert "EUR 1,500 | 3 days" in learning.page_content
    assert "Yes | Yes" in learning.page_content  # equal neighbours are not merged cells
    assert learning.page_content.endswith("\nSpans both columns")


@pytest.mark.parametrize(
    "data",
    [
        b"PK\x03\x04 truncated zip",
        b"plain text renamed to docx",
        # A valid zip that is not a Word document.
        (lambda b: (zipfile.ZipFile(b, "w").writestr("a.txt", "x"), b.getvalue())[1])(io.BytesIO()),
    ],
    ids=["truncated", "text", "other-zip"],
)
def test_corrupt_docx_is_refused(tmp_path, data):
    path = tmp_path / "broken.docx"
    path.write_bytes(data)
    assert "not a valid DOCX" in bad(path)


def test_password_protected_docx_is_refused(tmp_path):
    # Encrypted Office files are OLE compound files; the magic number is all that is needed.
    path = tmp_path / "locked.docx"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600)
    assert "password-protected" in bad(path)


def test_docx_without_text_is_refused(tmp_path):
    path = tmp_path / "blank.docx"
    docx.Document().save(str(path))
    assert "no text" in bad(path)


# --- HTML ------------------------------------------------------------------------------------

HTML = """<!doctype html><html><head><title>Policy</title><style>.x { color: red }</style></head>
<body>
<nav><a href="/">Intranet home</a></nav>
<script>var tracking = "do-not-index";</script>
<p>Before the <b>first</b> heading.</p>
<h1 id="policy">Security policy</h1>
<p>Applies to   everyone.</p>
<section id="pw-section"><h2>Passwords</h2>
  <p>At least 14 characters.</p>
  <ul><li>No reuse</li><li>Use the manager</li></ul>
  <table><tr><th>Level</th><th>Who</th></tr><tr><td>Restricted</td><td>Two people</td></tr></table>
  <pre>nwctl reset
    --user me</pre>
</section>
<h3><a id="phish"></a>Phishing</h3>
<p>Forward it to phish@northwind.example.</p>
<h2>No anchor here</h2><p>Plain text.</p>
</body></html>"""


def test_html_drops_script_style_and_nav(tmp_path):
    path = tmp_path / "p.html"
    path.write_text(HTML)
    text = "\n".join(d.page_content for d in load(path))
    assert "do-not-index" not in text
    assert "color: red" not in text
    assert "Intranet home" not in text


def test_html_sections_have_heading_path_and_anchor(tmp_path):
    path = tmp_path / "p.html"
    path.write_text(HTML)
    docs = load(path)
    assert [d.metadata for d in docs] == [
        {},
        {"heading": "Security policy", "anchor": "policy"},
        {"heading": "Security policy > Passwords", "anchor": "pw-section"},
        {"heading": "Security policy > Passwords > Phishing", "anchor": "phish"},
        {"heading": "Security policy > No anchor here"},
    ]
    assert docs[0].page_content == "Before the first heading."
    assert "Applies to everyone." in docs[1].page_content


def test_html_keeps_lists_tables_and_preformatted_text_readable(tmp_path):
    path = tmp_path / "p.htm"
    path.write_text(HTML)
    passwords = load(path)[2].page_content
    assert "No reuse\nUse the manager" in passwords
    assert "Restricted | Two people" in passwords
    assert "nwctl reset\n    --user me" in passwords


# --- Markdown --------------------------------------------------------------------------------

MARKDOWN = """---
title: front matter is not a heading
---
Intro paragraph.

# Handbook

## Install

Run this:

```bash
# a comment, not a heading
pip install localcat
```

### Linux

Use the package.

Setext Title
============

Under the setext title.

## Closed heading ##

Text.
"""


def test_markdown_sections_by_heading_path(tmp_path):
    path = tmp_path / "h.md"
    path.write_text(MARKDOWN)
    docs = load(path)
    assert [d.metadata.get("heading") for d in docs] == [
        None,
        "Handbook > Install",
        "Handbook > Install > Linux",
        "Setext Title",
        "Setext Title > Closed heading",
    ]
    assert docs[0].page_content == "Intro paragraph."
    assert docs[2].page_content == "### Linux\n\nUse the package."


def test_markdown_code_fences_stay_whole_and_are_not_headings(tmp_path):
    path = tmp_path / "h.markdown"
    path.write_text(MARKDOWN)
    install = load(path)[1].page_content
    assert "```bash\n# a comment, not a heading\npip install localcat\n```" in install


# --- CSV -------------------------------------------------------------------------------------


def test_csv_rows_grouped_with_row_range_anchors(tmp_path):
    lines = ["item,owner,serial"] + [f"Robot {i},Owner {i},NW-{i:04d}" for i in range(2, 47)]
    path = tmp_path / "e.csv"
    path.write_text("\n".join(lines) + "\n")
    docs = load(path)
    assert [d.metadata["anchor"] for d in docs] == ["rows 2-21", "rows 22-41", "rows 42-46"]
    assert docs[0].page_content.splitlines()[0] == "item: Robot 2; owner: Owner 2; serial: NW-0002"
    assert "item: Robot 46; owner: Owner 46; serial: NW-0046" in docs[2].page_content


def test_csv_dialect_is_sniffed(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text('name;room;note\nAda;Lab 1;"says ""hi"""\n\nBob;Lab 2;\n')
    (doc,) = load(path)
    assert doc.page_content == 'name: Ada; room: Lab 1; note: says "hi"\nname: Bob; room: Lab 2'
    assert doc.metadata == {"anchor": "rows 2-4"}  # the blank row 3 still counts


def test_csv_with_only_a_header_is_refused(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("item,owner\n")
    assert "no data rows" in bad(path)


# --- plain text and encodings ----------------------------------------------------------------


def test_text_is_one_section_without_metadata(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Line one.\n\nLine two.\n")
    (doc,) = load(path)
    assert doc.page_content == "Line one.\n\nLine two.\n"
    assert doc.metadata == {}


def test_legacy_encoding_is_detected(tmp_path):
    # charset-normalizer scores this cp1250 and cp1252 equally; only cp1252 reads it right.
    text = "Café crème à la française, l'hôtel était fermé. Über Größe. " * 3
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("cp1252"))
    assert load(path)[0].page_content == text


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_text_with_bom_is_decoded(tmp_path, encoding):
    path = tmp_path / "t.rst"
    path.write_bytes("Größe: 27 Tage".encode(encoding))
    assert load(path)[0].page_content == "Größe: 27 Tage"


def test_binary_data_in_text_file_is_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"ELF\x02\x01\x00\x00\x00 looks like a program")
    assert "binary data" in bad(path)


@pytest.mark.parametrize(
    "data",
    [bytes(range(1, 32)) * 40, bytes(range(1, 32)) * 40 + b"\xff\xfe"],
    ids=["utf8", "other"],
)
def test_mostly_control_characters_is_refused_as_binary(tmp_path, data):
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    assert "binary data" in bad(path)


def test_undetectable_encoding_is_refused(tmp_path):
    path = tmp_path / "t.txt"
    # Printable ASCII mixed with high bytes that form no plausible text in any encoding.
    path.write_bytes(
        bytes((i * 7919) % 95 + 32 if i % 2 else 0x80 + (i * 31) % 128 for i in range(2000))
    )
    assert "cannot detect the text encoding" in bad(path)


# --- refusals common to all formats ----------------------------------------------------------


def test_too_large_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_text("x" * 5000)

    def no_reading(self):
        raise AssertionError("read a file over the limit")

    monkeypatch.setattr(Path, "read_bytes", no_reading)
    reason = bad(path, max_bytes=1000)
    assert "too large" in reason
    assert "max_file_mb" in reason


@pytest.mark.parametrize("name", ["empty.txt", "empty.pdf", "empty.docx", "empty.csv"])
def test_empty_file_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    assert "empty file" in bad(path)


def test_whitespace_only_file_is_refused(tmp_path):
    path = tmp_path / "blank.md"
    path.write_text("# Heading only\n\n   \n")
    assert "no text" in bad(path)


def test_unsupported_suffix_is_refused(tmp_path):
    path = tmp_path / "photo.xyz"
    path.write_bytes(b"data")
    reason = bad(path)
    assert "unsupported file type .xyz" in reason
    assert ".pdf" in reason


def test_missing_file_is_refused(tmp_path):
    assert "not a file" in bad(tmp_path / "gone.txt")


# --- iter_files ------------------------------------------------------------------------------


def test_iter_files_walks_folders_sorted_and_skips_what_it_should(tmp_path):
    docs = tmp_path / "docs"
    (docs / "b").mkdir(parents=True)
    (docs / ".git").mkdir()
    for name in ["b/z.md", "a.txt", "c.pdf", ".hidden.txt", ".git/config.txt", "photo.png"]:
        (docs / name).write_text("x")
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    (docs / "escape.txt").symlink_to(outside)
    (docs / "inside.txt").symlink_to(docs / "a.txt")  # same file twice: yielded once
    (docs / "b" / "loop").symlink_to(docs, target_is_directory=True)

    assert list(iter_files([docs])) == [
        (docs / "a.txt", None),
        (docs / "b" / "z.md", None),
        (docs / "c.pdf", None),
    ]


def test_iter_files_reports_explicit_unsupported_and_missing_files(tmp_path):
    png = tmp_path / "photo.PNG"
    png.write_bytes(b"x")
    hidden = tmp_path / ".notes.txt"
    hidden.write_text("x")
    results = dict(iter_files([png, hidden, tmp_path / "gone.md"]))
    assert results[png].startswith("unsupported file type .png — supported: ")
    assert results[hidden] is None  # named explicitly, so hidden is fine
    assert "no such file" in results[tmp_path / "gone.md"]


def test_supported_suffixes_cover_the_main_formats():
    assert {".pdf", ".docx", ".html", ".htm", ".md", ".txt", ".rst", ".csv"} <= SUPPORTED_SUFFIXES


# --- the demo samples ------------------------------------------------------------------------


def test_every_sample_loads_with_text():
    files = [p for p, reason in iter_files([SAMPLES]) if reason is None]
    assert {p.suffix for p in files} == {".md", ".html", ".txt", ".csv", ".docx", ".pdf"}
    for path in files:
        docs = load(path)
        assert docs, path
        assert all(d.page_content.strip() for d in docs), path


def test_sample_facts_are_where_citations_will_point():
    travel = load(SAMPLES / "travel-policy.pdf")
    assert "EUR 62" in next(d for d in travel if d.metadata["page"] == 2).page_content
    handbook = {d.metadata.get("heading"): d.page_content for d in load(SAMPLES / "handbook.md")}
    vacation = handbook["Northwind Robotics Employee Handbook > Vacation policy"]
    assert "27 days" in vacation
    security = load(SAMPLES / "security-policy.html")
    assert any(
        d.metadata.get("anchor") == "passwords" and "YubiKey 5 NFC" in d.page_content
        for d in security
    )

"""One file → a list of LangChain Documents ("sections") with page / heading / anchor metadata.

A section is a piece of a file with one location: a PDF page, the text under one heading, a group of
CSV rows. Chunking splits sections further; citations point at their metadata. Anything wrong with
the input itself raises ``BadFile`` with a reason a person can act on.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import os
import re
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from langchain_core.documents import Document

from core.errors import BadFile

_PDF = frozenset({".pdf"})
_DOCX = frozenset({".docx"})
_HTML = frozenset({".html", ".htm", ".xhtml"})
_MARKDOWN = frozenset({".md", ".markdown", ".mdown", ".mkd"})
_CSV = frozenset({".csv", ".tsv"})
_TEXT = frozenset({".txt", ".text", ".rst", ".adoc", ".asciidoc", ".org", ".tex"})

SUPPORTED_SUFFIXES: frozenset[str] = _PDF | _DOCX | _HTML | _MARKDOWN | _CSV | _TEXT

CSV_ROWS_PER_SECTION = 20
"""Rows grouped into one CSV section; 20 short rows fit a default 1000-character chunk or two."""

_SUPPORTED_LIST = " ".join(sorted(SUPPORTED_SUFFIXES))


def _unsupported(suffix: str) -> BadFile:
    shown = suffix or "(no extension)"
    return BadFile(f"unsupported file type {shown}", f"supported: {_SUPPORTED_LIST}")


def load_file(path: Path, *, max_bytes: int, max_unzipped_bytes: int = 200 * 2**20,
              max_zip_ratio: float = 200) -> list[Document]:
    """Read one file into sections; raise ``BadFile`` when it cannot be ingested.

    Run it under ``ingest.parse``'s limits: the checks here catch what can be seen up front.
    """
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise _unsupported(suffix)
    try:
        if not path.is_file():
            raise BadFile("not a file (missing, or a folder)", "check the path")
        size = path.stat().st_size
        # Checked before reading, so a huge file never reaches memory.
        if size > max_bytes:
            raise BadFile(
                f"file too large: {_size(size)}, over the {_size(max_bytes)} limit",
                "split it, or raise ingest.max_file_mb (LOCALCAT_INGEST__MAX_FILE_MB)",
            )
        data = path.read_bytes()
    except OSError as err:
        raise BadFile(
            f"cannot read the file: {err.strerror or err}", "check its permissions"
        ) from err
    if not data.strip():
        raise BadFile("empty file", "add some content or leave it out")

    if suffix in _DOCX:
        _check_zip(data, max_unzipped_bytes, max_zip_ratio)
    sections = [s for s in _loader_for(suffix)(data) if s.page_content.strip()]
    if not sections:
        if suffix in _PDF:
            raise BadFile(
                "PDF has no text layer (probably a scanned image)",
                "OCR it first, e.g. `ocrmypdf in.pdf out.pdf`, and ingest the result",
            )
        raise BadFile("no text found in the file", "check that it has readable content")
    return sections


def iter_files(paths: Iterable[Path], on_folder: Callable[[Path], None] = lambda folder: None,
               ) -> Iterator[tuple[Path, str | None]]:
    """Expand folders into supported files; yield ``(path, reason)`` where reason says why not.

    Files named explicitly with an unsupported suffix (or missing, or not a regular file) come
    with a reason, as do paths that are not valid UTF-8 (the stores keep paths as UTF-8); inside
    folders, unsupported and hidden files are skipped silently, as are pipes, sockets and devices,
    symlinks leading outside and symlink loops. ``on_folder`` is told of each folder walked.
    """
    seen: set[Path] = set()
    for path in paths:
        if path.is_dir():
            root = path.resolve()
            if root not in seen:
                seen.add(root)
                yield from _walk(path, root, seen, on_folder)
        elif not path.exists():
            yield path, "no such file or folder — check the path"
        elif path.suffix.lower() not in SUPPORTED_SUFFIXES:
            yield path, str(_unsupported(path.suffix.lower()))
        elif not path.is_file():
            # Hashing a named pipe would wait forever for a writer.
            yield path, "not a regular file (a pipe, socket or device) — copy its content to a file"
        elif (real := path.resolve()) not in seen:
            seen.add(real)
            yield path, _name_problem(path)


def _name_problem(path: Path) -> str | None:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return ("the path is not valid UTF-8 — rename it, e.g. "
                "`convmv -f latin1 -t utf8 --notest NAME`")
    return None


def _walk(folder: Path, root: Path, seen: set[Path],
          on_folder: Callable[[Path], None]) -> Iterator[tuple[Path, str | None]]:
    on_folder(folder)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        yield folder, f"cannot read the folder: {err.strerror or err} — check its permissions"
        return
    for entry in entries:
        if entry.name.startswith((".", "~$")):  # hidden, or an Office lock file
            continue
        path = Path(entry.path)
        try:
            real = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop: RuntimeError before Python 3.13
            continue
        # `seen` also stops symlink loops: a folder already walked is not walked again.
        if real in seen or (entry.is_symlink() and not real.is_relative_to(root)):
            continue
        if entry.is_dir():
            seen.add(real)
            yield from _walk(path, root, seen, on_folder)
        elif entry.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES:
            seen.add(real)
            yield path, _name_problem(path)


def _size(n: int) -> str:
    if n < 2**10:
        return f"{n} bytes"
    return f"{n / 2**10:.0f} KB" if n < 2**20 else f"{n / 2**20:.1f} MB"


def _loader_for(suffix: str) -> Callable[[bytes], list[Document]]:
    if suffix in _PDF:
        return _load_pdf
    if suffix in _DOCX:
        return _load_docx
    if suffix in _HTML:
        return lambda data: _split_html(_decode(data))
    if suffix in _MARKDOWN:
        return lambda data: _split_markdown(_decode(data))
    if suffix in _CSV:
        return lambda data: _split_csv(_decode(data), tab=suffix == ".tsv")
    return lambda data: [Document(page_content=_decode(data))]


# --- text decoding ---------------------------------------------------------------------------

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _decode(data: bytes) -> str:
    """Bytes → text: BOM, else strict UTF-8, else charset-normalizer's best guess."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return _check_text(data.decode(encoding))
            except UnicodeDecodeError as err:
                raise BadFile(f"not valid {encoding.upper()} text despite its BOM", _ICONV) from err
    if b"\x00" in data:
        raise BadFile(
            "file contains binary data (NUL bytes), not text", "is it really a text file?"
        )
    try:
        return _check_text(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    # UTF-8 with a few damaged bytes stays UTF-8: a guessed code page would garble every other
    # non-ASCII character. Legacy text has next to no valid multi-byte UTF-8 sequences.
    text = data.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd")
    broken = replaced - data.count("\ufffd".encode())
    if len(text) - len(text.encode("ascii", "ignore")) - replaced >= 2 * broken:
        return _check_text(text)
    # Random bytes have ~12% C0 controls; text in any legacy code page has next to none.
    controls = len(data) - len(data.translate(None, _CONTROL_BYTES))
    if controls > 0.05 * len(data):
        raise BadFile("file contains binary data, not text", "convert it to a text format first")

    from charset_normalizer import from_bytes

    results = from_bytes(data)
    best = results.best()
    if best is None:
        raise BadFile("cannot detect the text encoding", _ICONV)
    # Equally scored code pages come back alphabetically, so Western cp1252 text reads as cp1250
    # ("crème" → "crčme"); on a tie prefer cp1252, by far the most common legacy encoding.
    tied = [m for m in results if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
    best = next((m for m in tied if m.encoding == "cp1252"), best)
    return _check_text(str(best))


_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\f\v\x1b")
_ICONV = "convert it to UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 in.txt > out.txt`"


def _check_text(text: str) -> str:
    """Refuse decoded text that is mostly control or replacement characters."""
    text = text.lstrip("\ufeff")
    sample = text[:100_000]  # enough to tell, and cheap on a 50 MB file
    odd = sum(
        1
        for ch in sample
        if ch == "\ufffd" or (unicodedata.category(ch) in ("Cc", "Co") and ch not in "\t\n\r\f\v")
    )
    if odd > 0.05 * max(len(sample), 1):
        raise BadFile("file contains binary data, not text", "convert it to a text format first")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _short(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return first if len(first) <= 120 else first[:117] + "..."


# --- PDF -------------------------------------------------------------------------------------


def _load_pdf(data: bytes) -> list[Document]:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PyPdfError

    # pypdf reports malformed files with its own errors but also with builtin ones from deep
    # inside its parser; the try blocks hold only pypdf calls, so these cannot hide our bugs.
    malformed = (
        PyPdfError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        zlib.error,
    )
    encrypted = BadFile(
        "PDF is encrypted with a password",
        "save a copy without the password (e.g. `qpdf --decrypt --password=PW in.pdf out.pdf`)",
    )
    try:
        reader = PdfReader(io.BytesIO(data))
        # A PDF locked only against editing opens with the empty user password; read it.
        if reader.is_encrypted and not reader.decrypt(""):
            raise encrypted
        texts = [page.extract_text() or "" for page in reader.pages]
    except (FileNotDecryptedError, DependencyError) as err:
        raise encrypted from err
    except RecursionError as err:
        raise BadFile("not a valid PDF (nested too deeply)", "re-export or re-download it") from err
    except malformed as err:
        raise BadFile(f"not a valid PDF ({_short(err)})", "re-export or re-download it") from err
    return [
        Document(page_content=text.strip(), metadata={"page": number})
        for number, text in enumerate(texts, 1)
    ]


# --- DOCX ------------------------------------------------------------------------------------

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def _check_zip(data: bytes, max_bytes: int, max_ratio: float) -> None:
    """Refuse a zip bomb by what its directory declares, before anything is inflated.

    A member that lies about its size gets past this (zipfile inflates a member's compressed data
    before cutting it to the declared size); the parse worker's memory limit stops that one.
    """
    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return  # not a zip: the DOCX loader says what it is
    total = sum(m.file_size for m in members)
    if total > max_bytes:
        raise BadFile(
            f"the file inflates to {_size(total)}, over the {_size(max_bytes)} limit",
            "raise ingest.max_unzipped_mb (LOCALCAT_INGEST__MAX_UNZIPPED_MB) if it is genuine",
        )
    for m in members:
        if m.file_size > 2**20 and m.file_size > max_ratio * max(m.compress_size, 1):
            raise BadFile(
                f"{m.filename} inflates {m.file_size / max(m.compress_size, 1):.0f} times "
                f"(a zip bomb?), over the limit of {max_ratio:g}",
                "raise ingest.max_zip_ratio (LOCALCAT_INGEST__MAX_ZIP_RATIO) if it is genuine",
            )


def _load_docx(data: bytes) -> list[Document]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from lxml.etree import XMLSyntaxError

    if data.startswith(_OLE_MAGIC):
        # Word stores password-protected .docx (and legacy .doc) as OLE compound files, not zip.
        raise BadFile(
            "DOCX is password-protected, or an old binary .doc",
            "save it as .docx without a password and ingest that",
        )
    try:
        document = docx.Document(io.BytesIO(data))
        blocks = list(document.iter_inner_content())
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError, XMLSyntaxError) as err:
        raise BadFile(
            f"not a valid DOCX file ({_short(err)})", "open and re-save it in Word or LibreOffice"
        ) from err

    sections = _Sections()
    for block in blocks:
        if isinstance(block, Table):
            sections.add(_docx_table_text(block))
            continue
        level = _docx_heading_level(block.style.name if block.style is not None else "")
        text = block.text.strip()
        if level is not None and text:
            sections.heading(level, text)
        else:
            sections.add(text)
    return sections.documents()


def _docx_heading_level(style: str) -> int | None:
    if style == "Title":
        return 0
    match = re.fullmatch(r"Heading (\d)", style)
    return int(match.group(1)) if match else None


def _docx_table_text(table) -> str:
    lines = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            # python-docx repeats a merged cell once per grid column it spans.
            if cell._tc is not previous:
                cells.append(" ".join(cell.text.split()))
            previous = cell._tc
        if any(cells):
            lines.append(" | ".join(cells))
    return "\n".join(lines)


# --- sections by heading (DOCX, HTML, Markdown) ----------------------------------------------


class _Sections:
    """Collects text under a heading path; a new heading closes the current section."""

    def __init__(self) -> None:
        self._path: list[tuple[int, str]] = []
        self._title: str | None = None
        self._anchor: str | None = None
        self._parts: list[str] = []
        self._done: list[Document] = []

    def heading(self, level: int, title: str, anchor: str | None = None, line: str | None = None):
        self._close()
        self._path = [(lv, t) for lv, t in self._path if lv < level] + [(level, title)]
        self._title, self._anchor = line or title, anchor

    def add(self, text: str) -> None:
        if text.strip():
            self._parts.append(text)

    def documents(self) -> list[Document]:
        self._close()
        return self._done

    def _close(self) -> None:
        # A heading directly followed by a subheading makes no section of its own: its title
        # lives on in the subheading's path.
        if self._parts:
            metadata: dict[str, str] = {}
            if self._path:
                metadata["heading"] = " > ".join(t for _, t in self._path)
            if self._anchor:
                metadata["anchor"] = self._anchor
            body = "\n\n".join(self._parts)
            text = f"{self._title}\n\n{body}" if self._title else body
            self._done.append(Document(page_content=text, metadata=metadata))
        self._parts = []


# --- HTML ------------------------------------------------------------------------------------

_DROP = ["script", "style", "nav", "noscript", "template", "iframe", "svg", "head"]
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_LINE_TAGS = {"br", "li", "tr", "dt", "dd", "option"}
_BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "caption", "details", "div", "dl", "fieldset",
    "figcaption", "figure", "footer", "form", "header", "hr", "main", "ol", "p", "section",
    "summary", "table", "tbody", "tfoot", "thead", "ul",
}  # fmt: skip


def _split_html(text: str) -> list[Document]:
    from bs4 import (
        BeautifulSoup,
        Comment,
        Declaration,
        Doctype,
        NavigableString,
        ProcessingInstruction,
    )

    soup = BeautifulSoup(text, "lxml")
    for tag in soup(_DROP):
        tag.decompose()
    skip = (Comment, Declaration, Doctype, ProcessingInstruction)
    sections = _Sections()
    buf: list[str] = []

    def flush() -> None:
        sections.add(_tidy_html_text("".join(buf)))
        buf.clear()

    # An explicit stack, not recursion: a file of 200,000 nested <div>s is legal HTML. Items are
    # a node to visit, or a string to emit once its children are done.
    stack: list = [iter((soup.body or soup).children)]
    while stack:
        top = stack[-1]
        if isinstance(top, str):
            stack.pop()
            buf.append(top)
            continue
        child = next(top, None)
        if child is None:
            stack.pop()
            continue
        if isinstance(child, skip):
            continue
        if isinstance(child, NavigableString):
            buf.append(re.sub(r"\s+", " ", str(child)))
        elif child.name in _HEADINGS:
            if title := " ".join(child.get_text(" ").split()):
                flush()
                sections.heading(_HEADINGS[child.name], title, _html_anchor(child))
        elif child.name == "pre":
            # Its own part, so tidying the prose around it keeps the code's indentation.
            flush()
            sections.add(child.get_text().strip("\n"))
        elif child.name in _BLOCK_TAGS:
            buf.append("\n\n")
            stack += ["\n\n", iter(child.children)]
        else:
            # List items, rows and breaks start a line; cells are separated by " | ".
            buf.append("\n" if child.name in _LINE_TAGS else "")
            stack += [" | " if child.name in ("td", "th") else "", iter(child.children)]
    flush()
    return sections.documents()


def _html_anchor(heading) -> str | None:
    """The id to link to: the heading's, one inside it, or its enclosing section's."""
    if heading.get("id"):
        return heading["id"]
    inner = heading.find(attrs={"id": True}) or heading.find("a", attrs={"name": True})
    if inner is not None:
        return inner.get("id") or inner.get("name")
    parent = heading.find_parent(["section", "article"])
    return parent.get("id") if parent is not None and parent.get("id") else None


def _tidy_html_text(text: str) -> str:
    lines = [line.strip().strip("|").strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# --- Markdown --------------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FRONT_MATTER = re.compile(r"\A---\n.*?\n(?:---|\.\.\.)\n", re.DOTALL)


def _split_markdown(text: str) -> list[Document]:
    """Split at ATX and setext headings outside code fences; heading lines stay in the text."""
    lines = _FRONT_MATTER.sub("", text, count=1).split("\n")
    sections = _Sections()
    block: list[str] = []
    fence: str | None = None

    def flush() -> None:
        sections.add("\n".join(block).strip("\n"))
        block.clear()

    i = 0
    while i < len(lines):
        line, stripped = lines[i], lines[i].strip()
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        i += 1
        if fence is not None:
            block.append(line)
            if stripped.startswith(fence) and set(stripped) == {fence[0]}:
                fence = None
        elif match := _FENCE.match(line):
            fence = match.group(1)
            block.append(line)
        elif atx := _ATX.match(line):
            flush()
            if title := (atx.group(2) or "").strip():
                sections.heading(len(atx.group(1)), title, line=stripped)
        elif stripped and not block and _SETEXT.match(nxt) and not _SETEXT.match(line):
            # Setext only for a one-line paragraph; after a longer one "---" is more often
            # meant as a thematic break in hand-written notes.
            level = 1 if nxt.strip().startswith("=") else 2
            sections.heading(level, stripped, line=f"{'#' * level} {stripped}")
            i += 1
        elif not stripped:
            flush()
        else:
            block.append(line)
    flush()
    return sections.documents()


# --- CSV -------------------------------------------------------------------------------------


def _split_csv(text: str, *, tab: bool) -> list[Document]:
    """Groups of rows, each row as "col: value; col: value" so every chunk carries the header."""
    dialect: type[csv.Dialect] | csv.Dialect = csv.excel_tab if tab else csv.excel
    # One column, or too irregular to sniff: keep the suffix's default.
    with contextlib.suppress(csv.Error):
        dialect = csv.Sniffer().sniff(text[:65536], delimiters=",;\t|")
    try:
        # Numbered as a spreadsheet shows them (the header is row 1), blank rows included.
        rows = [
            (number, row)
            for number, row in enumerate(csv.reader(io.StringIO(text), dialect), 1)
            if any(cell.strip() for cell in row)
        ]
    except csv.Error as err:
        raise BadFile(f"not a valid CSV file ({_short(err)})", "check its quoting") from err
    if len(rows) < 2:
        raise BadFile("CSV has a header but no data rows", "add rows or leave it out")

    header = [h.strip() or f"column {i}" for i, h in enumerate(rows[0][1], 1)]
    docs = []
    for start in range(1, len(rows), CSV_ROWS_PER_SECTION):
        group = rows[start : start + CSV_ROWS_PER_SECTION]
        lines = []
        for _, row in group:
            names = header + [f"column {i}" for i in range(len(header) + 1, len(row) + 1)]
            pairs = zip(names, row, strict=False)
            lines.append("; ".join(f"{n}: {v.strip()}" for n, v in pairs if v.strip()))
        anchor = f"rows {group[0][0]}-{group[-1][0]}"
        docs.append(Document(page_content="\n".join(lines), metadata={"anchor": anchor}))
    return docs

"""Sections → chunks: LangChain's recursive splitter, with tidy whitespace and whole code fences."""

from __future__ import annotations

import re

from langchain_core.documents import Document
from langchain_text_splitters import RecursiveCharacterTextSplitter

from core.errors import ConfigError

# A fenced code block: opening ``` or ~~~ (3+), anything, a closing fence of the same kind.
_FENCED = re.compile(
    r"^ {0,3}(?P<fence>`{3,}|~{3,})[^\n]*\n.*?^ {0,3}(?P=fence)[`~]*[ \t]*$",
    re.DOTALL | re.MULTILINE,
)
# Stands in for newlines inside a fence while splitting, so the splitter cannot break there.
# A Unicode noncharacter: never meaningful in documents, and removed from them below.
_GLUE = "\uffff"
_SPACES = re.compile(r"[^\S\n]+")  # whitespace runs other than newlines (incl. NBSP, tabs)
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff" + _GLUE + "]")


def chunk_sections(
    sections: list[Document], *, chunk_size: int, chunk_overlap: int
) -> list[Document]:
    """Split each section into chunks of at most ~chunk_size characters, keeping its metadata."""
    if chunk_overlap >= chunk_size:
        raise ConfigError(
            f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})",
            "lower chunking.chunk_overlap (LOCALCAT_CHUNKING__CHUNK_OVERLAP)",
        )
    splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    chunks = []
    for section in sections:
        text = _glue_fences(normalize_whitespace(section.page_content), chunk_size)
        for piece in splitter.split_text(text):
            piece = piece.replace(_GLUE, "\n")
            if piece.strip():
                chunks.append(Document(page_content=piece, metadata=dict(section.metadata)))
    return chunks


def normalize_whitespace(text: str) -> str:
    """Collapse space runs, trim lines, keep paragraph breaks; code fences stay as written."""
    text = _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n"))
    out, last = [], 0
    for match in _FENCED.finditer(text):
        out.append(_normalize_prose(text[last : match.start()]))
        out.append(match.group(0))
        last = match.end()
    out.append(_normalize_prose(text[last:]))
    return "".join(out).strip()


def _normalize_prose(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def _glue_fences(text: str, chunk_size: int) -> str:
    """Hide the newlines of fences that fit in a chunk, so they stay whole."""

    def glue(match: re.Match[str]) -> str:
        block = match.group(0)
        return block.replace("\n", _GLUE) if len(block) < chunk_size else block

    return _FENCED.sub(glue, text)

"""Typed objects at the boundaries: chunks, citations, answers, ingest reports."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field, computed_field


class Chunk(BaseModel):
    """A piece of a document as stored: text plus where it came from."""

    id: str
    text: str
    source: str = Field(description="Absolute path (or upload name) of the file.")
    file_hash: str
    position: int = Field(description="Index of the chunk within its file.")
    page: int | None = Field(None, description="1-based page, for PDFs.")
    heading: str | None = Field(None, description="Heading path, e.g. 'Install > Linux'.")
    anchor: str | None = Field(None, description="Fragment id in HTML, row range in CSV.")


def chunk_id(source: str, text: str, occurrence: int = 0) -> str:
    """Names what the chunk is: the same id always means the same text from the same file.

    ``occurrence`` tells apart identical chunks of one file (the n-th time that text appears).
    Position, file hash and chunking settings are left out on purpose: with them in, an id
    survived a chunking change while naming other text, and fine-tune data sets rebuilt from
    recorded ids trained on context the model never saw.
    """
    digest = hashlib.sha256(f"{source}\0{occurrence}\0".encode() + text.encode("utf-8", "surrogatepass"))
    return "c2" + digest.hexdigest()[:30]


class Citation(BaseModel):
    """One retrieved chunk as shown to the user beside an answer."""

    n: int = Field(description="The [n] marker used in the prompt and the answer.")
    chunk_id: str
    source: str
    page: int | None = None
    heading: str | None = None
    anchor: str | None = None
    snippet: str
    score: float = Field(description="Fused reciprocal-rank score.")
    similarity: float | None = Field(None, description="Cosine similarity of the dense match.")
    cited: bool = Field(False, description="The answer text refers to this source as [n].")
    reviewed: bool = Field(
        False, description="A user's correction to this question (``source`` says when), not a "
        "document chunk.")
    sentences: list[int] = Field(
        default_factory=list,
        description="Which answer sentences cite this source (indices into Answer.sentences).",
    )

    @property
    def place(self) -> str:
        """Where in the file: page, heading path, anchor (empty when the format has none)."""
        parts = []
        if self.page is not None:
            parts.append(f"p. {self.page}")
        if self.heading:
            parts.append(f"§ {self.heading}")
        if self.anchor:
            parts.append(f"#{self.anchor}")
        return ", ".join(parts)

    @property
    def location(self) -> str:
        return ", ".join(p for p in (self.source, self.place) if p)


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class SentenceAttribution(BaseModel):
    """One sentence of an answer and the shown sources that support it."""

    text: str = Field(description="The sentence as it stands in the answer, its [n] marks included.")
    start: int = Field(description="Offset of the sentence in Answer.answer.")
    end: int = Field(description="End offset (exclusive) in Answer.answer.")
    sources: list[int] = Field(default_factory=list, description="The [n] the sentence carries.")
    model_sources: list[int] = Field(
        default_factory=list, description="The [n] the model wrote itself, right or wrong."
    )
    score: float = Field(0.0, description="Support score of the best-matching shown chunk.")
    supported: bool = Field(description="A shown chunk supports it; False flags the sentence.")


_WORD = re.compile(r"\w+")


def normalize_question(text: str) -> str:
    """Lowercase words only: "How do I X?" and "how do i x" are the same question."""
    return " ".join(_WORD.findall(text.casefold()))


def new_answer_id() -> str:
    return "ans_" + uuid.uuid4().hex


class Answer(BaseModel):
    """A finished answer with what produced it (what feedback snapshots)."""

    id: str = Field(default_factory=new_answer_id)
    question: str
    standalone_question: str
    history: list[Message] = Field(default_factory=list)
    collection: str
    answer: str = Field(description="The answer as shown: the model's text with checked [n] marks.")
    raw_answer: str | None = Field(
        None, description="The model's text as generated (None on answers stored before citations)."
    )
    sentences: list[SentenceAttribution] = Field(
        default_factory=list, description="The answer's sentences with their sources; empty when "
        "nothing was retrieved."
    )
    citations: list[Citation] = Field(default_factory=list)
    grounded: bool = Field(description="False when no retrieved chunk was relevant enough.")
    model: str
    prompt_version: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    latency_s: float | None = Field(
        None, description="Seconds from the question to the finished answer (None on answers "
        "stored before it was measured).")
    user: str | None = Field(
        None, description="Who asked (the key's name); None on a server without keys and on "
        "answers stored before it was kept.")


class FileResult(BaseModel):
    path: str
    status: Literal["added", "updated", "skipped", "removed", "failed"]
    chunks: int = 0
    reason: str | None = None


class IngestReport(BaseModel):
    collection: str
    files: list[FileResult] = Field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    @computed_field
    @property
    def chunks_written(self) -> int:
        return sum(f.chunks for f in self.files if f.status in ("added", "updated"))

    def summary(self) -> dict[str, int]:
        return {s: self.count(s) for s in ("added", "updated", "skipped", "removed", "failed")}

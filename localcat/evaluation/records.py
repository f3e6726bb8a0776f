"""Per-question records of an answer eval (`localcat eval --answers … --records FILE.jsonl`).

One JSON line per question and model: the chunks shown, the model's own text, the marked-up text
and each sentence's attribution. Enough to study citation attribution and score it again offline
(``rescore``) without asking the model again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from core.schemas import Citation, SentenceAttribution
from localcat.evaluation.datasets import AnswerItem

if TYPE_CHECKING:
    from assistant.citations import CitationAttributor


class ShownChunk(BaseModel):
    """A chunk shown to the model as [n]."""

    n: int
    chunk_id: str
    doc: str = Field(description="The document it comes from (BEIR doc id or file name).")
    text: str


class AnswerRecord(BaseModel):
    """One question as the eval asked it, and what came back."""

    model: str = Field(description="The --model value that answered.")
    id: str
    question: str
    reference: str | None = Field(description="The reference answer; None: not answerable.")
    reference_docs: list[str] = Field(default_factory=list)
    kind: str = ""
    shown: list[ShownChunk] = Field(default_factory=list)
    raw_answer: str = Field(description="The model's text as generated.")
    answer: str = Field(description="The answer with its checked [n] marks.")
    sentences: list[SentenceAttribution] = Field(default_factory=list)

    @property
    def item(self) -> AnswerItem:
        return AnswerItem(self.id, self.question, self.reference, tuple(self.reference_docs),
                          self.kind)

    def citations(self, answer: str | None = None) -> list[Citation]:
        """The shown chunks as the pipeline's citations, ``cited`` as ``answer`` marks them."""
        from assistant.citations import cited_numbers

        cited = cited_numbers(self.answer if answer is None else answer)
        return [Citation(n=c.n, chunk_id=c.chunk_id, source=c.doc, snippet="", score=0.0,
                         cited=c.n in cited) for c in self.shown]


class RecordWriter:
    """Writes each record as it comes (``append``), so a run cut short keeps what it answered."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        path.write_text("", encoding="utf-8")

    def append(self, record: AnswerRecord) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(record.model_dump_json() + "\n")


def write_records(path: Path, records: Iterable[AnswerRecord]) -> None:
    writer = RecordWriter(path)
    for r in records:
        writer.append(r)


def read_records(path: Path) -> list[AnswerRecord]:
    return [AnswerRecord.model_validate_json(line)
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def rescore(record: AnswerRecord, attribute: CitationAttributor | Callable) -> AnswerRecord:
    """The record with the model's text marked up again by ``attribute`` (an attributor, or
    anything with its ``attribute(text, chunks)``); answers the pipeline did not mark (nothing
    shown, or its own "not found") stay as they are."""
    from core.prompt import NOT_FOUND

    if not record.shown or record.raw_answer == NOT_FOUND:
        return record
    fn = getattr(attribute, "attribute", attribute)
    result = fn(record.raw_answer, [c.text for c in record.shown])
    return record.model_copy(update={"answer": result.text, "sentences": result.sentences})


def score_record(record: AnswerRecord) -> dict:
    """The eval's per-answer measures for a record (``answering.score_answer``), timings left out."""
    from core.prompt import NOT_FOUND
    from localcat.evaluation.answering import score_answer

    return score_answer(record.item, record.answer, record.citations(), lambda doc: doc,
                        {c.chunk_id: c.text for c in record.shown}, NOT_FOUND)

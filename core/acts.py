"""What a caller asks the use cases (localcat/usecases/) to do: typed requests that every edge
(API, page, CLI) builds the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO, Literal

from core.schemas import Message


@dataclass(frozen=True)
class Question:
    text: str
    history: list[Message] = field(default_factory=list)
    collection: str | None = None  # None: chroma.collection
    model: str | None = None  # None: the served model


@dataclass(frozen=True)
class Incoming:
    """One uploaded file: the name the client gave and its content, read once."""

    name: str
    content: BinaryIO


@dataclass(frozen=True)
class Verdict:
    answer_id: str
    rating: Literal["up", "down"] | None = None
    correction: str | None = None
    comment: str | None = None


@dataclass(frozen=True)
class FeedbackFilter:
    latest_only: bool = False
    rating: str | None = None  # 'up', 'down' or 'correction'
    collection: str | None = None
    model: str | None = None

"""Reviewed answers at work: a question that means the same as one a user corrected gets that
correction among its sources, first, at once (a fine-tune takes minutes to hours).

"Means the same": the same words once normalised, or a question embedding whose cosine to the
corrected question reaches ``retrieval.reviewed_min_similarity`` (measured in BENCHMARKS.md on
hand-written paraphrases and on unrelated questions).

Served to everyone: approved corrections only. A user's own correction, pending an admin's
approval, is served to that user alone: a correction is text put in front of the model, so one
user must not be able to put it before another.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from assistant.feedback import FeedbackStore, Reviewed
from core.schemas import normalize_question

REVIEWED_PREFIX = "reviewed:"


@dataclass(frozen=True)
class Match:
    reviewed: Reviewed
    similarity: float  # 1.0 for the same normalised words

    def document(self) -> Document:
        """The reviewed answer as a source: first in the prompt, cited like any other."""
        r = self.reviewed
        source = (f"corrected by a user on {r.created_at:%Y-%m-%d}" if r.status == "approved"
                  else f"your correction of {r.created_at:%Y-%m-%d}, awaiting an admin's approval")
        return Document(page_content=r.answer, id=f"{REVIEWED_PREFIX}{r.id}", metadata={
            "chunk_id": f"{REVIEWED_PREFIX}{r.id}", "reviewed": True, "source": source,
            "score": 1.0, "similarity": self.similarity, "question": r.question})


@dataclass
class _Index:
    version: tuple[int, ...]
    checked: float
    items: list[Reviewed]  # approved and pending, newest first
    normalized: dict[str, list[int]]  # newest first
    vectors: np.ndarray | None  # unit rows, one per item; None until a question needs them
    approved: np.ndarray = field(init=False)  # bool per item
    authors: np.ndarray = field(init=False)  # a pending item's user, else None

    def __post_init__(self) -> None:
        self.approved = np.array([r.status == "approved" for r in self.items], dtype=bool)
        self.authors = np.array([r.user if r.status == "pending" else None for r in self.items],
                                dtype=object)

    def servable(self, user: str | None) -> np.ndarray:
        """Which items ``user`` may be served: the approved, and their own pending ones."""
        return self.approved if user is None else self.approved | (self.authors == user)


class ReviewedMatcher:
    """Per collection and embedder: the approved and pending reviewed answers and their
    questions' vectors, re-read when the store's reviewed answers change (asked at most every
    ``refresh_s``); who may be served which is decided per question."""

    def __init__(self, store: FeedbackStore, min_similarity: float, refresh_s: float = 1.0):
        self.store = store
        self.min_similarity = min_similarity
        self.refresh_s = refresh_s
        self._indexes: dict[tuple[str, int], _Index] = {}
        self._lock = threading.Lock()

    def match(self, collection: str, question: str, embeddings: Embeddings,
              user: str | None = None) -> Match | None:
        """The reviewed answer to serve ``user`` (None: anonymous) for ``question``, if any."""
        index = self._index(collection, embeddings)
        servable = index.servable(user)
        if not servable.any():
            return None
        exact = next((i for i in index.normalized.get(normalize_question(question), ())
                      if servable[i]), None)
        if exact is not None:
            return Match(index.items[exact], 1.0)
        if index.vectors is None:
            with self._lock:
                if index.vectors is None:
                    # Question to question: both as queries (e5 and the like prefix them).
                    index.vectors = _unit([embeddings.embed_query(r.question)
                                           for r in index.items])
        sims = np.where(servable, index.vectors @ _unit([embeddings.embed_query(question)])[0],
                        -np.inf)
        best = int(np.argmax(sims))
        if sims[best] < self.min_similarity:
            return None
        return Match(index.items[best], round(float(sims[best]), 4))

    def _index(self, collection: str, embeddings: Embeddings) -> _Index:
        key = (collection, id(embeddings))
        now = time.monotonic()
        index = self._indexes.get(key)
        if index is not None and now - index.checked < self.refresh_s:
            return index
        version = self.store.reviewed_version(collection)
        if index is not None and index.version == version:
            index.checked = now
            return index
        # Newest first: the newest wins a tie.
        items = sorted([*self.store.reviewed(collection),
                        *self.store.reviewed(collection, pending=True)], key=lambda r: -r.id)
        normalized: dict[str, list[int]] = {}
        for i, r in enumerate(items):
            normalized.setdefault(normalize_question(r.question), []).append(i)
        index = _Index(version, now, items, normalized, None)
        self._indexes[key] = index
        return index


def _unit(vectors) -> np.ndarray:
    m = np.asarray(vectors, dtype=np.float32)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)

"""Reviewed answers at work: a question that means the same as one a user corrected gets that
correction among its sources, first, at once (a fine-tune takes minutes to hours).

"Means the same": the same words once normalised, or a question embedding whose cosine to the
corrected question reaches ``retrieval.reviewed_min_similarity`` (measured in BENCHMARKS.md on
hand-written paraphrases and on unrelated questions).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

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
        return Document(page_content=r.answer, id=f"{REVIEWED_PREFIX}{r.id}", metadata={
            "chunk_id": f"{REVIEWED_PREFIX}{r.id}", "reviewed": True,
            "source": f"corrected by a user on {r.created_at:%Y-%m-%d}",
            "score": 1.0, "similarity": self.similarity, "question": r.question})


@dataclass
class _Index:
    version: tuple[int, int]
    checked: float
    items: list[Reviewed]
    normalized: dict[str, int]
    vectors: np.ndarray | None  # unit rows, one per item; None until a question needs them


class ReviewedMatcher:
    """Per collection and embedder: the active reviewed answers and their questions' vectors,
    re-read when the store's reviewed answers change (asked at most every ``refresh_s``)."""

    def __init__(self, store: FeedbackStore, min_similarity: float, refresh_s: float = 1.0):
        self.store = store
        self.min_similarity = min_similarity
        self.refresh_s = refresh_s
        self._indexes: dict[tuple[str, int], _Index] = {}
        self._lock = threading.Lock()

    def match(self, collection: str, question: str, embeddings: Embeddings) -> Match | None:
        index = self._index(collection, embeddings)
        if not index.items:
            return None
        exact = index.normalized.get(normalize_question(question))
        if exact is not None:
            return Match(index.items[exact], 1.0)
        if index.vectors is None:
            with self._lock:
                if index.vectors is None:
                    # Question to question: both as queries (e5 and the like prefix them).
                    index.vectors = _unit([embeddings.embed_query(r.question)
                                           for r in index.items])
        sims = index.vectors @ _unit([embeddings.embed_query(question)])[0]
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
        items = self.store.reviewed(collection)  # newest first: the newest wins a tie
        normalized: dict[str, int] = {}
        for i, r in enumerate(items):
            normalized.setdefault(normalize_question(r.question), i)
        index = _Index(version, now, items, normalized, None)
        self._indexes[key] = index
        return index


def _unit(vectors) -> np.ndarray:
    m = np.asarray(vectors, dtype=np.float32)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)

"""Reviewed answers: a correction is kept with its question, superseded, revoked, and matched."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

from assistant.feedback import FeedbackStore
from assistant.reviewed import ReviewedMatcher
from core.errors import BadRequest
from core.schemas import normalize_question
from tests.fixtures.legacy import legacy_file
from tests.unit.test_feedback import make_answer


class Words(Embeddings):
    """Bag of words over a fixed vocabulary: cosine = shared words (enough to test the bar)."""

    VOCAB = ["vacation", "days", "year", "laptop", "replaced", "holiday", "espresso", "many"]

    def _vec(self, text: str) -> list[float]:
        words = set(re.findall(r"\w+", text.lower()))
        return [1.0 if w in words else 0.0 for w in self.VOCAB] + [1e-3]

    def embed_documents(self, texts):
        return [self._vec(t) for t in texts]

    def embed_query(self, text):
        return self._vec(text)


@pytest.fixture
def store(tmp_path: Path):
    with FeedbackStore(tmp_path / "feedback.sqlite") as s:
        yield s


def correct(store: FeedbackStore, answer_id: str, question: str, correction: str,
            collection: str = "docs"):
    store.record_answer(make_answer(question, id=answer_id, standalone_question=question,
                                    collection=collection))
    return store.add_feedback(answer_id, "down", correction=correction, user="ann")


def test_normalized_questions_ignore_case_and_punctuation() -> None:
    assert normalize_question("How many vacation DAYS, per year?!") == "how many vacation days per year"


def test_a_correction_becomes_the_reviewed_answer_and_a_later_one_supersedes_it(store) -> None:
    correct(store, "ans_1", "How many vacation days?", "27 days.")
    store.record_answer(make_answer("Where is the espresso machine?", id="ans_2"))
    store.add_feedback("ans_2", "up")  # a thumbs-up alone reviews nothing
    [first] = store.reviewed("docs")
    assert (first.question, first.answer, first.user) == ("How many vacation days?", "27 days.", "ann")
    before = store.reviewed_version("docs")
    correct(store, "ans_3", "how many vacation days", "28 days from 2027.")
    assert [r.answer for r in store.reviewed("docs")] == ["28 days from 2027."]
    old = [r for r in store.reviewed("docs", revoked=True) if r.id == first.id][0]
    assert old.revoked_by == f"superseded by #{first.id + 1}"
    assert store.reviewed_version("docs") != before
    assert store.reviewed("other") == []


def test_revoking_stops_serving_and_says_so_twice(store) -> None:
    correct(store, "ans_1", "How many vacation days?", "27 days.")
    [r] = store.reviewed()
    assert store.revoke_reviewed(r.id, by="admin-key").revoked_by == "admin-key"
    assert store.reviewed() == []
    with pytest.raises(BadRequest, match="already revoked"):
        store.revoke_reviewed(r.id)
    with pytest.raises(BadRequest, match="localcat reviewed list"):
        store.revoke_reviewed(999)


def test_the_matcher_finds_same_words_and_near_questions_but_not_others(store) -> None:
    correct(store, "ans_1", "How many vacation days per year?", "27 days.")
    correct(store, "ans_2", "When is my laptop replaced?", "Every 36 months.")
    matcher = ReviewedMatcher(store, min_similarity=0.7, refresh_s=0)
    emb = Words()
    exact = matcher.match("docs", "how many VACATION days per year", emb)
    assert exact.similarity == 1.0 and exact.reviewed.answer == "27 days."
    near = matcher.match("docs", "vacation days in a year?", emb)  # 3 of 4 words: cosine 0.87
    assert near.reviewed.answer == "27 days." and 0.7 <= near.similarity < 1
    assert matcher.match("docs", "is the espresso machine descaled?", emb) is None
    assert matcher.match("other", "How many vacation days per year?", emb) is None
    doc = near.document()
    assert doc.metadata["reviewed"] and doc.metadata["source"].startswith("corrected by a user on 20")
    # A revoke takes effect at the next question (the store is asked again).
    store.revoke_reviewed(near.reviewed.id)
    assert matcher.match("docs", "vacation days in a year?", emb) is None


def test_corrections_from_before_the_table_are_backfilled(tmp_path: Path) -> None:
    path = tmp_path / "feedback.sqlite"
    legacy_file(path, "feedback", 1)
    with closing(sqlite3.connect(path)) as db:
        db.execute("INSERT INTO answers VALUES ('a1', 'q?', 'Vacation days?', '[]', 'docs', 'x', "
                   "'[]', 1, 'm', 'rag-v2', '2026-01-01', '{}')")
        db.execute("INSERT INTO feedback (answer_id, rating, correction, created_at) "
                   "VALUES ('a1', 'down', '27 days.', '2026-01-02')")
        db.execute("INSERT INTO answers VALUES ('a2', 'q?', 'Laptops?', '[]', 'docs', 'x', "
                   "'[]', 1, 'm', 'rag-v2', '2026-01-01', '{}')")
        db.execute("INSERT INTO feedback (answer_id, rating, correction, created_at) "
                   "VALUES ('a2', 'down', 'Every 36 months.', '2026-01-02')")
        db.execute("INSERT INTO feedback (answer_id, rating, created_at) "  # latest verdict: up
                   "VALUES ('a2', 'up', '2026-01-03')")
        db.commit()
    [r] = FeedbackStore(path).reviewed()
    assert (r.question, r.answer) == ("Vacation days?", "27 days.")
    assert np.isclose(ReviewedMatcher(FeedbackStore(path), 0.9).match(
        "docs", "vacation days", Words()).similarity, 1.0)

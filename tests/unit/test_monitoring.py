"""Monitoring of what is served: answers per day, model version and collection, with their thumbs-up,
correction and "not found" rates and latency, counted by the feedback store (SQLite here; the same
query on PostgreSQL in tests/integration/test_postgres.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from assistant.feedback import FeedbackStore, Served, first_day, served_totals
from assistant.pipeline import RagPipeline
from core.errors import BadRequest
from core.prompt import NOT_FOUND, PROMPT_VERSION
from core.schemas import Answer
from tests.unit.test_pipeline import FixedRetriever, doc, fake_llm

TODAY = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


def answer(n: int, *, days_ago: int = 0, model: str = "base", collection: str = "kbase",
           text: str = "Yes [1].", grounded: bool = True, latency_s: float | None = 1.0) -> Answer:
    return Answer(id=f"ans_{n}", question=f"q{n}?", standalone_question=f"q{n}?",
                  collection=collection, answer=text, grounded=grounded, model=model,
                  prompt_version=PROMPT_VERSION, created_at=TODAY - timedelta(days=days_ago),
                  latency_s=latency_s)


def seed(store: FeedbackStore) -> None:
    """Two days of 'base' on kbase, and today 'base+lora:v1' on kbase and 'base' on faq."""
    # Yesterday, base on kbase: 4 answers, 1 up, 1 down then up (verdict up), 1 corrected, 1 unrated.
    for n, lat in zip(range(1, 5), (1.0, 2.0, 3.0, None), strict=True):
        store.record_answer(answer(n, days_ago=1, latency_s=lat))
    store.add_feedback("ans_1", "up")
    store.add_feedback("ans_2", "down")
    store.add_feedback("ans_2", "up")
    store.add_feedback("ans_3", "down", correction="No [1].", trusted=True)
    # Today, the same model: a "not found" (as the pipeline says it) and one the model refused.
    store.record_answer(answer(5, text=NOT_FOUND, grounded=False, latency_s=0.5))
    store.record_answer(answer(6, text=NOT_FOUND, latency_s=1.5))
    store.add_feedback("ans_5", "down")
    # Today, a fine-tuned version and another collection.
    store.record_answer(answer(7, model="base+lora:v1", latency_s=0.25))
    store.add_feedback("ans_7", "up")
    # The verdict is the latest row: a correction then a thumbs-up still counts as corrected.
    store.record_answer(answer(8, collection="faq"))
    store.add_feedback("ans_8", None, correction="Better.", trusted=True)
    store.add_feedback("ans_8", "up")
    # Long ago: outside a 30-day window.
    store.record_answer(answer(9, days_ago=90))


@pytest.fixture
def store(tmp_path: Path):
    with FeedbackStore(tmp_path / "feedback.sqlite") as s:
        seed(s)
        yield s


def key(r: Served) -> tuple:
    return (r.day, r.model, r.collection)


def test_per_day_model_and_collection(store: FeedbackStore) -> None:
    today, yesterday = TODAY.date().isoformat(), (TODAY - timedelta(days=1)).date().isoformat()
    rows = {key(r): r for r in store.monitoring(first_day(30))}
    assert list(rows) == [(yesterday, "base", "kbase"), (today, "base", "faq"),
                          (today, "base", "kbase"), (today, "base+lora:v1", "kbase")]

    y = rows[(yesterday, "base", "kbase")]
    assert (y.answers, y.rated, y.up, y.down, y.corrected, y.not_found) == (4, 3, 2, 1, 1, 0)
    assert (y.up_rate, y.correction_rate, y.not_found_rate) == (pytest.approx(2 / 3, abs=1e-4),
                                                                0.25, 0.0)
    # Latency from the answers that have one (recorded since it is measured).
    assert (y.timed, y.latency_mean_s, y.latency_max_s) == (3, 2.0, 3.0)

    t = rows[(today, "base", "kbase")]
    assert (t.answers, t.rated, t.down, t.not_found, t.not_found_rate) == (2, 1, 1, 2, 1.0)
    assert (t.latency_mean_s, t.latency_max_s) == (1.0, 1.5)
    faq = rows[(today, "base", "faq")]
    assert (faq.corrected, faq.up, faq.up_rate, faq.correction_rate) == (1, 1, 1.0, 1.0)
    lora = rows[(today, "base+lora:v1", "kbase")]
    assert (lora.answers, lora.up_rate, lora.correction_rate, lora.latency_mean_s) == (
        1, 1.0, 0.0, 0.25)


def test_totals_filters_and_window(store: FeedbackStore) -> None:
    totals = {(r.model, r.collection): r for r in served_totals(store.monitoring(first_day(30)))}
    kb = totals[("base", "kbase")]
    assert kb.day is None and (kb.answers, kb.rated, kb.up, kb.corrected, kb.not_found) == (
        6, 4, 2, 1, 2)
    # The mean over every timed answer, not the mean of the daily means.
    assert kb.timed == 5 and kb.latency_mean_s == pytest.approx((1 + 2 + 3 + 0.5 + 1.5) / 5)
    assert kb.latency_max_s == 3.0 and kb.up_rate == 0.5

    assert {r.model for r in store.monitoring(None)} == {"base", "base+lora:v1"}
    assert sum(r.answers for r in store.monitoring(None)) == 9  # the old one too
    assert sum(r.answers for r in store.monitoring(first_day(1))) == 4  # today only
    only = store.monitoring(first_day(30), model="base+lora:v1")
    assert [(r.model, r.answers) for r in only] == [("base+lora:v1", 1)]
    assert {r.collection for r in store.monitoring(first_day(30), collection="faq")} == {"faq"}
    dumped = only[0].model_dump()
    assert dumped["up_rate"] == 1.0 and "not_found_rate" in dumped
    with pytest.raises(BadRequest, match="days must be"):
        first_day(0)


def test_an_empty_store_has_no_figures(tmp_path: Path) -> None:
    with FeedbackStore(tmp_path / "f.sqlite") as empty:
        assert empty.monitoring(first_day(30)) == [] and served_totals([]) == []


def test_the_pipeline_records_its_latency(tmp_path: Path) -> None:
    with FeedbackStore(tmp_path / "f.sqlite") as store:
        pipe = RagPipeline(fake_llm("27 days [1]."), FixedRetriever(docs=[doc(1, "27 days.")]),
                           model_tag="fake", on_answer=store.record_answer)
        given = pipe.ask("How many days?")
        assert given.latency_s is not None and 0 <= given.latency_s < 30
        # Kept in the answers' extra JSON (no migration), read back and counted.
        assert store.get_answer(given.id).latency_s == given.latency_s
        (row,) = store.monitoring(None)
        assert row.timed == 1 and row.latency_mean_s == round(given.latency_s, 3)

"""The feedback store: schema migrations, answer snapshots, validation, export and stats."""

from __future__ import annotations

import io
import json
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from assistant.feedback import MAX_TEXT_CHARS, Feedback, FeedbackStore
from core.db import head, version_table
from core.errors import BadRequest, StoreUnavailable
from core.schemas import Answer, Citation, Message


def make_answer(question: str = "How do I install it?", **kw: object) -> Answer:
    fields: dict[str, object] = {
        "question": question,
        "standalone_question": f"{question} (standalone)",
        "history": [
            Message(role="user", content="Hi — ça va?"),
            Message(role="assistant", content="Bonjour."),
        ],
        "collection": "docs",
        "answer": "Run `pip install localcat` [1].",
        "citations": [
            Citation(
                n=1,
                chunk_id="c1",
                source="/d/install.md",
                heading="Install",
                snippet="pip…",
                score=0.032,
                similarity=0.71,
                cited=True,
            ),
            Citation(n=2, chunk_id="c2", source="/d/guide.pdf", page=3, snippet="…", score=0.016),
        ],
        "grounded": True,
        "model": "llama3.2",
        "prompt_version": "rag-v1",
    }
    fields.update(kw)
    return Answer.model_validate(fields)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "feedback.sqlite"


@pytest.fixture
def store(db_path: Path):
    with FeedbackStore(db_path) as s:
        yield s


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def tables(path: Path) -> set[str]:
    with closing(raw(path)) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_open_is_lazy(db_path: Path) -> None:
    FeedbackStore(db_path)
    assert not db_path.exists()


def test_migrations_create_schema_once(db_path: Path) -> None:
    with FeedbackStore(db_path) as s:
        s.record_answer(make_answer())
    with closing(raw(db_path)) as db:
        table = version_table("feedback")
        assert db.execute(f"SELECT version_num FROM {table}").fetchall() == [(head("feedback"),)]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"answers", "feedback"} <= tables(db_path)
    with FeedbackStore(db_path) as s:  # re-opening migrates nothing and keeps the rows
        assert s.stats()["answers"] == 1


def test_switch_to_wal_waits_for_another_writer(db_path: Path) -> None:
    # SQLite fails this switch at once while another connection writes, ignoring busy_timeout.
    db_path.parent.mkdir(parents=True)
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE other_app (x)")
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, other.execute, ("COMMIT",))
    release.start()
    with FeedbackStore(db_path) as s:
        assert s.stats()["answers"] == 0
    release.join()
    other.close()
    with closing(raw(db_path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unopenable_file_says_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "feedback.sqlite"
    path.write_bytes(b"not a database, just some bytes " * 100)
    with pytest.raises(StoreUnavailable, match="LOCALCAT_DATA_DIR"):
        FeedbackStore(path).stats()


def test_answer_round_trip(store: FeedbackStore) -> None:
    answer = make_answer()
    store.record_answer(answer)
    assert store.get_answer(answer.id) == answer
    assert store.get_answer("ans_unknown") is None


def test_an_answer_keeps_who_asked(store: FeedbackStore, db_path: Path) -> None:
    asked, anonymous = make_answer("mine?", user="ann"), make_answer("anyone's?")
    store.record_answer(asked)
    store.record_answer(anonymous)
    assert store.get_answer(asked.id).user == "ann" and store.get_answer(anonymous.id).user is None
    store.add_feedback(asked.id, "up", user="ann")
    [row] = store.iter_feedback()
    assert row["answer"]["user"] == row["user"] == "ann"
    with closing(raw(db_path)) as db:  # a column (the server checks it), not in the extra JSON
        assert db.execute('SELECT "user", extra FROM answers WHERE id = ?', (asked.id,)).fetchone()[0] == "ann"
        assert "user" not in json.loads(db.execute("SELECT extra FROM answers").fetchone()[0])


def test_recording_an_answer_twice_keeps_the_first(store: FeedbackStore) -> None:
    first = make_answer()
    store.record_answer(first)
    store.record_answer(first.model_copy(update={"answer": "something else"}))
    assert store.get_answer(first.id) == first
    assert store.stats()["answers"] == 1


def test_add_feedback_returns_it_and_latest_wins(store: FeedbackStore) -> None:
    answer = make_answer()
    store.record_answer(answer)
    down = store.add_feedback(answer.id, "down", comment="wrong version", user="ann")
    assert isinstance(down, Feedback)
    assert (down.answer_id, down.rating, down.comment, down.user) == (
        answer.id,
        "down",
        "wrong version",
        "ann",
    )
    assert down.correction is None
    assert store.latest_feedback(answer.id) == down
    fixed = store.add_feedback(answer.id, None, correction="Run `uv tool install localcat`.")
    assert fixed.id > down.id
    assert store.latest_feedback(answer.id) == fixed
    assert store.latest_feedback("ans_unknown") is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"answer_id": "ans_nope", "rating": "up"}, "no answer with id 'ans_nope'"),
        ({"rating": "meh"}, "rating must be 'up' or 'down'"),
        ({"rating": None}, "needs a rating or a correction"),
        ({"rating": None, "correction": "   ", "comment": "hm"}, "needs a rating or a correction"),
        ({"rating": "down", "correction": "x" * (MAX_TEXT_CHARS + 1)}, "correction is 20,001"),
        ({"rating": "down", "comment": "x" * (MAX_TEXT_CHARS + 1)}, "comment is 20,001"),
        ({"rating": "up", "user": "u" * 1000}, "user is 1,000"),
    ],
)
def test_add_feedback_refuses_bad_input(store: FeedbackStore, kwargs: dict, match: str) -> None:
    answer = make_answer()
    store.record_answer(answer)
    with pytest.raises(BadRequest, match=match) as info:
        store.add_feedback(**{"answer_id": answer.id, **kwargs})
    assert info.value.fix  # every refusal says what to send instead
    assert info.value.status == 400
    assert store.stats()["feedback"] == 0


def test_export_jsonl(store: FeedbackStore) -> None:
    a, b = make_answer("first?"), make_answer("second?", grounded=False, citations=[])
    store.record_answer(a)
    store.record_answer(b)
    store.record_answer(make_answer("never rated"))
    store.add_feedback(a.id, "up")
    store.add_feedback(b.id, "down", comment="made up")
    store.add_feedback(a.id, "down", correction="Better: ça marche.", user="bob")

    out = io.StringIO()
    assert store.export_jsonl(out) == 3
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["answer_id"], r["rating"]) for r in rows] == [
        (a.id, "up"),
        (b.id, "down"),
        (a.id, "down"),
    ]
    assert rows[2]["correction"] == "Better: ça marche."
    assert rows[2]["user"] == "bob"
    # The snapshot is the whole answer: enough to rebuild the prompt for a fine-tune example.
    assert Answer.model_validate(rows[0]["answer"]) == a
    assert rows[0]["answer"]["citations"][0]["chunk_id"] == "c1"
    assert rows[0]["answer"]["history"][0]["content"] == "Hi — ça va?"
    assert "ça marche" in out.getvalue()  # UTF-8 kept readable, not \u-escaped

    latest = io.StringIO()
    assert store.export_jsonl(latest, latest_only=True) == 2
    assert [json.loads(line)["id"] for line in latest.getvalue().splitlines()] == [
        rows[1]["id"],
        rows[2]["id"],
    ]


def test_iter_feedback_pages_through_many_rows(store: FeedbackStore) -> None:
    answer = make_answer()
    store.record_answer(answer)
    for i in range(1203):  # more than two pages
        store.add_feedback(answer.id, "up" if i % 2 else "down")
    ids = [r["id"] for r in store.iter_feedback()]
    assert len(ids) == 1203 and ids == sorted(set(ids))


def test_stats(store: FeedbackStore) -> None:
    assert store.stats() == {"answers": 0, "feedback": 0, "up": 0, "down": 0, "corrections": 0}
    a, b, c = make_answer("a"), make_answer("b"), make_answer("c")
    for x in (a, b, c):
        store.record_answer(x)
    store.add_feedback(a.id, "down")
    store.add_feedback(a.id, "up")  # a changes its mind: counted once, as up
    store.add_feedback(b.id, "down", correction="fixed")
    store.add_feedback(c.id, None, correction="also fixed")
    assert store.stats() == {"answers": 3, "feedback": 4, "up": 1, "down": 1, "corrections": 2}


def test_close_then_reuse(store: FeedbackStore) -> None:
    answer = make_answer()
    store.record_answer(answer)
    store.close()
    assert store.get_answer(answer.id) == answer

"""Feedback store: a snapshot of every answer and the ratings and corrections users give it.

SQLite in WAL mode, so the server's worker processes can all write to one file: readers never block,
writers queue on the busy timeout. The schema grows only by appending to ``MIGRATIONS``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from pydantic import BaseModel, Field

from core.errors import BadRequest
from core.schemas import Answer
from core.sqlite import Database, Migration, migrate, migrations  # noqa: F401 - re-exported

MAX_TEXT_CHARS = 20_000
MAX_USER_CHARS = 200
_PAGE = 500

Rating = Literal["up", "down"]


class Feedback(BaseModel):
    """One user's verdict on an answer. An answer may get several; the latest wins."""

    id: int
    answer_id: str
    rating: Rating | None = None
    correction: str | None = Field(None, description="What the answer should have said.")
    comment: str | None = None
    user: str | None = None
    created_at: datetime


# --- migrations -----------------------------------------------------------------------------------

MIGRATIONS, _migration = migrations()

@_migration
def m001_answers_and_feedback(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE answers (
            id TEXT PRIMARY KEY,
            question TEXT NOT NULL,
            standalone_question TEXT NOT NULL,
            history TEXT NOT NULL,          -- JSON list of Message
            collection TEXT NOT NULL,
            answer TEXT NOT NULL,
            citations TEXT NOT NULL,        -- JSON list of Citation: chunk ids, scores, snippets
            grounded INTEGER NOT NULL,
            model TEXT NOT NULL,
            prompt_version TEXT NOT NULL,
            created_at TEXT NOT NULL,
            extra TEXT NOT NULL DEFAULT '{}' -- JSON: Answer fields added after this schema
        )
        """
    )
    # INTEGER PRIMARY KEY so ids keep insertion order (VACUUM may renumber an implicit rowid):
    # "latest feedback wins" is the highest id.
    db.execute(
        """
        CREATE TABLE feedback (
            id INTEGER PRIMARY KEY,
            answer_id TEXT NOT NULL REFERENCES answers(id),
            rating TEXT CHECK (rating IN ('up', 'down')),
            correction TEXT,
            comment TEXT,
            user TEXT,
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX feedback_answer_id ON feedback(answer_id)")


# --- the store ------------------------------------------------------------------------------------

_ANSWER_COLUMNS = (
    "id",
    "question",
    "standalone_question",
    "history",
    "collection",
    "answer",
    "citations",
    "grounded",
    "model",
    "prompt_version",
    "created_at",
)


def _answer_row(answer: Answer) -> tuple[Any, ...]:
    data = answer.model_dump(mode="json")
    extra = {k: v for k, v in data.items() if k not in _ANSWER_COLUMNS}
    data["history"] = json.dumps(data["history"], ensure_ascii=False)
    data["citations"] = json.dumps(data["citations"], ensure_ascii=False)
    data["grounded"] = int(answer.grounded)
    return (*(data[c] for c in _ANSWER_COLUMNS), json.dumps(extra, ensure_ascii=False))


def _answer_dict(row: sqlite3.Row, prefix: str = "") -> dict[str, Any]:
    """The JSON form of a stored answer (what ``Answer.model_dump(mode="json")`` gave)."""
    data = {c: row[prefix + c] for c in _ANSWER_COLUMNS}
    data["history"] = json.loads(data["history"])
    data["citations"] = json.loads(data["citations"])
    data["grounded"] = bool(data["grounded"])
    return {**json.loads(row[prefix + "extra"]), **data}


def _feedback_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {k: row[k] for k in Feedback.model_fields}


def _text(name: str, value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be text", f"send {name} as a string")
    if not value.strip():
        return None
    if len(value) > limit:
        raise BadRequest(
            f"{name} is {len(value):,} characters, more than the {limit:,} allowed",
            f"shorten the {name} to at most {limit:,} characters",
        )
    return value


class FeedbackStore(Database):
    """Answers and their feedback in one SQLite file; safe across threads and processes."""

    MIGRATIONS = MIGRATIONS
    KIND = "feedback database"

    # --- writes: each is one IMMEDIATE transaction ------------------------------------------------

    def record_answer(self, answer: Answer) -> None:
        """Keep a snapshot of what produced ``answer``; recording the same id again keeps the first."""
        columns = (*_ANSWER_COLUMNS, "extra")
        sql = (
            f"INSERT INTO answers ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            "ON CONFLICT(id) DO NOTHING"
        )
        with self.transaction() as db:
            db.execute(sql, _answer_row(answer))

    def add_feedback(
        self,
        answer_id: str,
        rating: Rating | None,
        correction: str | None = None,
        comment: str | None = None,
        user: str | None = None,
    ) -> Feedback:
        """Add a verdict on a recorded answer: a rating, a correction, or both, plus a comment."""
        if rating not in ("up", "down", None):
            raise BadRequest(
                f"rating must be 'up' or 'down', not {rating!r}",
                "send rating 'up' or 'down', or no rating together with a correction",
            )
        correction = _text("correction", correction, MAX_TEXT_CHARS)
        comment = _text("comment", comment, MAX_TEXT_CHARS)
        user = _text("user", user, MAX_USER_CHARS)
        if rating is None and correction is None:
            raise BadRequest(
                "feedback needs a rating or a correction",
                "send rating 'up' or 'down', or the corrected answer as `correction`",
            )
        created_at = datetime.now(UTC)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM answers WHERE id = ?", (answer_id,)).fetchone() is None:
                raise BadRequest(
                    f"no answer with id {answer_id!r}",
                    "send the `id` returned with the answer; only answers this LocalCat gave "
                    "can be rated",
                )
            cursor = db.execute(
                "INSERT INTO feedback (answer_id, rating, correction, comment, user, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (answer_id, rating, correction, comment, user, created_at.isoformat()),
            )
        return Feedback(
            id=cursor.lastrowid,
            answer_id=answer_id,
            rating=rating,
            correction=correction,
            comment=comment,
            user=user,
            created_at=created_at,
        )

    # --- reads ------------------------------------------------------------------------------------

    def get_answer(self, answer_id: str) -> Answer | None:
        row = self.db.execute("SELECT * FROM answers WHERE id = ?", (answer_id,)).fetchone()
        return None if row is None else Answer.model_validate(_answer_dict(row))

    def latest_feedback(self, answer_id: str) -> Feedback | None:
        """The verdict on an answer: its most recent feedback."""
        row = self.db.execute(
            "SELECT * FROM feedback WHERE answer_id = ? ORDER BY id DESC LIMIT 1", (answer_id,)
        ).fetchone()
        return None if row is None else Feedback.model_validate(_feedback_dict(row))

    def iter_feedback(self, latest_only: bool = False) -> Iterator[dict[str, Any]]:
        """Feedback rows oldest first, JSON-ready, each with its answer snapshot under ``"answer"``.

        ``latest_only`` keeps one row per answer, its verdict. Rows are read a page at a time so a
        slow consumer (the data-set builder) holds no read transaction open between pages.
        """
        answer_cols = ", ".join(f"a.{c} AS a_{c}" for c in (*_ANSWER_COLUMNS, "extra"))
        sql = f"SELECT f.*, {answer_cols} FROM feedback f JOIN answers a ON a.id = f.answer_id WHERE f.id > ?"
        if latest_only:
            sql += " AND f.id = (SELECT max(g.id) FROM feedback g WHERE g.answer_id = f.answer_id)"
        sql += " ORDER BY f.id LIMIT ?"
        last = 0
        while rows := self.db.execute(sql, (last, _PAGE)).fetchall():
            for row in rows:
                yield {**_feedback_dict(row), "answer": _answer_dict(row, prefix="a_")}
            last = rows[-1]["id"]

    def export_jsonl(self, fp: TextIO, latest_only: bool = False) -> int:
        """Write ``iter_feedback`` to ``fp``, one JSON object a line; return the number of lines."""
        n = 0
        for row in self.iter_feedback(latest_only=latest_only):
            fp.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
        return n

    def stats(self) -> dict[str, int]:
        """Counts of answers and feedback rows; up/down/corrections count answers by their verdict."""
        row = self.db.execute(
            """
            WITH verdict AS (
                SELECT rating, correction FROM feedback f
                WHERE f.id = (SELECT max(g.id) FROM feedback g WHERE g.answer_id = f.answer_id)
            )
            SELECT
                (SELECT count(*) FROM answers) AS answers,
                (SELECT count(*) FROM feedback) AS feedback,
                (SELECT count(*) FROM verdict WHERE rating = 'up') AS up,
                (SELECT count(*) FROM verdict WHERE rating = 'down') AS down,
                (SELECT count(*) FROM verdict WHERE correction IS NOT NULL) AS corrections
            """
        ).fetchone()
        return dict(row)

"""Feedback store: a snapshot of every answer and the ratings and corrections users give it.

SQLite in WAL mode, so the server's worker processes can all write to one file: readers never block,
writers queue on the busy timeout. The schema grows only by appending to ``MIGRATIONS``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import BaseModel, Field

from assistant.errors import BadRequest, StoreUnavailable
from assistant.schemas import Answer

MAX_TEXT_CHARS = 20_000
MAX_USER_CHARS = 200
BUSY_TIMEOUT_S = 30.0
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

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []
"""Applied in order; the number done is kept in ``PRAGMA user_version``. Append, never edit."""


def _migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


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


def _user_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # IMMEDIATE takes the write lock up front. A deferred transaction that reads and then writes
    # has to upgrade its lock, and SQLite answers SQLITE_BUSY at once there instead of waiting,
    # because waiting could deadlock against another upgrading reader.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the migrations past ``PRAGMA user_version`` in one transaction; return how many ran.

    The version is read again under the write lock, so when several processes open a fresh file at
    once one of them migrates and the others wait for it, then find nothing left to do.
    """
    if _user_version(db) == len(migrations):
        return 0
    with _transaction(db):
        done = _user_version(db)
        if done > len(migrations):
            path = db.execute("PRAGMA database_list").fetchone()[2]
            raise StoreUnavailable(
                f"{path} has schema version {done}; this LocalCat knows only up to "
                f"{len(migrations)}",
                "upgrade LocalCat, or point LOCALCAT_DATA_DIR at another folder",
            )
        for fn in migrations[done:]:
            fn(db)
        db.execute(f"PRAGMA user_version = {len(migrations)}")
    return len(migrations) - done


def _enable_wal(db: sqlite3.Connection) -> None:
    # Switching a file to WAL needs an exclusive lock, and SQLite does not wait for it: while
    # another connection holds a write lock (say a second process switching the same fresh file)
    # it answers "database is locked" at once, whatever busy_timeout says. Wait here instead.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


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


class FeedbackStore:
    """Answers and their feedback in one SQLite file; safe across threads and processes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # One connection per thread: sqlite3 connections must not be used by two threads at once.
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[tuple[int, sqlite3.Connection]] = []

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # timeout= is SQLite's busy timeout: a writer waits for another process's write
            # transaction instead of failing with "database is locked".
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            try:
                db.row_factory = sqlite3.Row
                _enable_wal(db)
                # Durable against crashes in WAL mode; a power cut may lose only the last commits.
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA foreign_keys=ON")
                migrate(db)
            except BaseException:
                db.close()
                raise
        except (OSError, sqlite3.DatabaseError) as e:
            raise StoreUnavailable(
                f"Cannot open the feedback database {self.path}: {e}",
                "check that the folder is writable and the file is a LocalCat feedback database, "
                "or set LOCALCAT_DATA_DIR",
            ) from e
        return db

    @property
    def _db(self) -> sqlite3.Connection:
        pid = os.getpid()
        db = getattr(self._local, "db", None)
        # A connection inherited through fork() is left alone, not closed: closing it in the child
        # could checkpoint and delete the WAL the parent is still using.
        if db is None or self._local.pid != pid:
            db = self._connect()
            self._local.db, self._local.pid = db, pid
            with self._lock:
                self._connections.append((pid, db))
        return db

    def close(self) -> None:
        """Close this process's connections (at shutdown); the store reopens lazily if used again."""
        pid = os.getpid()
        with self._lock:
            mine = [db for p, db in self._connections if p == pid]
            self._connections = [(p, db) for p, db in self._connections if p != pid]
        for db in mine:
            db.close()
        self._local = threading.local()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes: each is one IMMEDIATE transaction ------------------------------------------------

    def record_answer(self, answer: Answer) -> None:
        """Keep a snapshot of what produced ``answer``; recording the same id again keeps the first."""
        columns = (*_ANSWER_COLUMNS, "extra")
        sql = (
            f"INSERT INTO answers ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            "ON CONFLICT(id) DO NOTHING"
        )
        with _transaction(self._db) as db:
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
        with _transaction(self._db) as db:
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
        row = self._db.execute("SELECT * FROM answers WHERE id = ?", (answer_id,)).fetchone()
        return None if row is None else Answer.model_validate(_answer_dict(row))

    def latest_feedback(self, answer_id: str) -> Feedback | None:
        """The verdict on an answer: its most recent feedback."""
        row = self._db.execute(
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
        while rows := self._db.execute(sql, (last, _PAGE)).fetchall():
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
        row = self._db.execute(
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

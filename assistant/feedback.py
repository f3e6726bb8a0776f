"""Feedback store: a snapshot of every answer and the ratings and corrections users give it.

A SQLite file in WAL mode by default, so the server's worker processes can all write to it (readers
never block, writers queue on the busy timeout), or the PostgreSQL that several servers share
(core/db.py). The schema grows only by new revisions in core/migrations/feedback/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import sqlalchemy as sa
from pydantic import BaseModel, Field

from core.db import Store, insert_ignore
from core.errors import BadRequest
from core.schemas import Answer, normalize_question

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


# --- the tables as the code queries them; their history is core/migrations/feedback/ -------------

metadata = sa.MetaData()
answers_t = sa.Table(
    "answers", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("standalone_question", sa.Text, nullable=False),
    sa.Column("history", sa.Text, nullable=False),
    sa.Column("collection", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("citations", sa.Text, nullable=False),
    sa.Column("grounded", sa.Integer, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("prompt_version", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("extra", sa.Text, nullable=False, server_default="{}"),
)
feedback_t = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("answer_id", sa.Text, sa.ForeignKey("answers.id"), nullable=False),
    sa.Column("rating", sa.Text),
    sa.Column("correction", sa.Text),
    sa.Column("comment", sa.Text),
    sa.Column("user", sa.Text),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Index("feedback_answer_id", "answer_id"),
)
reviewed_t = sa.Table(
    "reviewed_answers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("collection", sa.Text, nullable=False),
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("normalized", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("answer_id", sa.Text, sa.ForeignKey("answers.id"), nullable=False),
    sa.Column("feedback_id", sa.Integer, sa.ForeignKey("feedback.id"), nullable=False),
    sa.Column("user", sa.Text),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("revoked_at", sa.Text),
    sa.Column("revoked_by", sa.Text),
    sa.Index("reviewed_by_collection", "collection", "revoked_at"),
)


class Reviewed(BaseModel):
    """A correction kept as the answer to its question, for whoever asks it next."""

    id: int
    collection: str
    question: str
    answer: str
    answer_id: str
    user: str | None = None
    created_at: datetime
    revoked_at: str | None = None
    revoked_by: str | None = None


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


def _answer_row(answer: Answer) -> dict[str, Any]:
    data = answer.model_dump(mode="json")
    extra = {k: v for k, v in data.items() if k not in _ANSWER_COLUMNS}
    data["history"] = json.dumps(data["history"], ensure_ascii=False)
    data["citations"] = json.dumps(data["citations"], ensure_ascii=False)
    data["grounded"] = int(answer.grounded)
    return {**{c: data[c] for c in _ANSWER_COLUMNS}, "extra": json.dumps(extra, ensure_ascii=False)}


def _answer_dict(row: Any, prefix: str = "") -> dict[str, Any]:
    """The JSON form of a stored answer (what ``Answer.model_dump(mode="json")`` gave)."""
    row = row._mapping
    data = {c: row[prefix + c] for c in _ANSWER_COLUMNS}
    data["history"] = json.loads(data["history"])
    data["citations"] = json.loads(data["citations"])
    data["grounded"] = bool(data["grounded"])
    return {**json.loads(row[prefix + "extra"]), **data}


def _feedback_dict(row: Any) -> dict[str, Any]:
    return {k: row._mapping[k] for k in Feedback.model_fields}


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


class FeedbackStore(Store):
    """Answers and their feedback; safe across threads, processes and servers."""

    SCHEMA = "feedback"
    KIND = "feedback database"

    # --- writes: each is one write transaction ----------------------------------------------------

    def record_answer(self, answer: Answer) -> None:
        """Keep a snapshot of what produced ``answer``; recording the same id again keeps the first."""
        with self.transaction() as db:
            insert_ignore(db, answers_t, _answer_row(answer), "id")

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
            if db.execute(sa.select(answers_t.c.id).where(answers_t.c.id == answer_id)).first() is None:
                raise BadRequest(
                    f"no answer with id {answer_id!r}",
                    "send the `id` returned with the answer; only answers this LocalCat gave "
                    "can be rated",
                )
            new_id = db.execute(
                sa.insert(feedback_t).values(
                    answer_id=answer_id, rating=rating, correction=correction, comment=comment,
                    user=user, created_at=created_at.isoformat()).returning(feedback_t.c.id)
            ).scalar_one()
            if correction is not None:
                self._review(db, answer_id, correction, new_id, user, created_at.isoformat())
        return Feedback(
            id=new_id,
            answer_id=answer_id,
            rating=rating,
            correction=correction,
            comment=comment,
            user=user,
            created_at=created_at,
        )

    @staticmethod
    def _review(db: sa.Connection, answer_id: str, correction: str, feedback_id: int,
                user: str | None, at: str) -> None:
        """Keep the correction as the reviewed answer to the answer's (standalone) question; an
        earlier one for the same question and collection gives way to it."""
        a, r = answers_t, reviewed_t
        row = db.execute(sa.select(a.c.collection, a.c.standalone_question)
                         .where(a.c.id == answer_id)).one()
        normalized = normalize_question(row.standalone_question)
        new = db.execute(sa.insert(r).values(
            collection=row.collection, question=row.standalone_question, normalized=normalized,
            answer=correction, answer_id=answer_id, feedback_id=feedback_id, user=user,
            created_at=at).returning(r.c.id)).scalar_one()
        db.execute(sa.update(r).where(r.c.collection == row.collection,
                                      r.c.normalized == normalized, r.c.id != new,
                                      r.c.revoked_at.is_(None))
                   .values(revoked_at=at, revoked_by=f"superseded by #{new}"))

    def reviewed(self, collection: str | None = None, *, revoked: bool = False) -> list[Reviewed]:
        """Reviewed answers, newest first; ``revoked`` includes the revoked and superseded."""
        r = reviewed_t
        query = sa.select(r).order_by(r.c.id.desc())
        if collection is not None:
            query = query.where(r.c.collection == collection)
        if not revoked:
            query = query.where(r.c.revoked_at.is_(None))
        return [Reviewed.model_validate(dict(row._mapping)) for row in self.all(query)]

    def reviewed_version(self, collection: str) -> tuple[int, int]:
        """Changes whenever the collection's active reviewed answers do (a cache key)."""
        r = reviewed_t
        row = self.one(sa.select(sa.func.coalesce(sa.func.max(r.c.id), 0),
                                 sa.func.count(r.c.revoked_at))
                       .where(r.c.collection == collection))
        return tuple(row)

    def revoke_reviewed(self, reviewed_id: int, by: str | None = None) -> Reviewed:
        """Stop serving a reviewed answer (an admin's call); it stays listed as revoked."""
        r = reviewed_t
        with self.transaction() as db:
            done = db.execute(sa.update(r).where(r.c.id == reviewed_id, r.c.revoked_at.is_(None))
                              .values(revoked_at=datetime.now(UTC).isoformat(),
                                      revoked_by=by or "an admin")).rowcount
            row = db.execute(sa.select(r).where(r.c.id == reviewed_id)).first()
        if row is None:
            raise BadRequest(f"No reviewed answer #{reviewed_id}",
                             "see `localcat reviewed list` for their numbers")
        if not done:
            raise BadRequest(f"Reviewed answer #{reviewed_id} was already revoked "
                             f"({row.revoked_by}, {row.revoked_at})", "nothing to do")
        return Reviewed.model_validate(dict(row._mapping))

    # --- reads ------------------------------------------------------------------------------------

    def get_answer(self, answer_id: str) -> Answer | None:
        row = self.one(sa.select(answers_t).where(answers_t.c.id == answer_id))
        return None if row is None else Answer.model_validate(_answer_dict(row))

    def latest_feedback(self, answer_id: str) -> Feedback | None:
        """The verdict on an answer: its most recent feedback."""
        f = feedback_t
        row = self.one(sa.select(f).where(f.c.answer_id == answer_id).order_by(f.c.id.desc()).limit(1))
        return None if row is None else Feedback.model_validate(_feedback_dict(row))

    def _latest(self):
        """Feedback rows that are the latest of their answer (its verdict)."""
        g = feedback_t.alias("g")
        return feedback_t.c.id == (sa.select(sa.func.max(g.c.id))
                                   .where(g.c.answer_id == feedback_t.c.answer_id)
                                   .scalar_subquery())

    def iter_feedback(self, latest_only: bool = False,
                      user: str | None = None) -> Iterator[dict[str, Any]]:
        """Feedback rows oldest first, JSON-ready, each with its answer snapshot under ``"answer"``.

        ``latest_only`` keeps one row per answer, its verdict; ``user`` only that user's rows.
        Rows are read a page at a time so a slow consumer (the data-set builder) holds no read
        transaction open between pages.
        """
        f, a = feedback_t, answers_t
        columns = [*f.c, *(c.label(f"a_{c.name}") for c in a.c)]
        query = sa.select(*columns).join(a, a.c.id == f.c.answer_id)
        if latest_only:
            query = query.where(self._latest())
        if user is not None:
            query = query.where(f.c.user == user)
        last = 0
        while rows := self.all(query.where(f.c.id > last).order_by(f.c.id).limit(_PAGE)):
            for row in rows:
                yield {**_feedback_dict(row), "answer": _answer_dict(row, prefix="a_")}
            last = rows[-1].id

    def export_jsonl(self, fp: TextIO, latest_only: bool = False) -> int:
        """Write ``iter_feedback`` to ``fp``, one JSON object a line; return the number of lines."""
        n = 0
        for row in self.iter_feedback(latest_only=latest_only):
            fp.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
        return n

    def stats(self) -> dict[str, int]:
        """Counts of answers and feedback rows; up/down/corrections count answers by their verdict."""
        f = feedback_t
        verdict = sa.select(f.c.rating, f.c.correction).where(self._latest()).subquery()

        def count(table, *where):
            return sa.select(sa.func.count()).select_from(table).where(*where).scalar_subquery()

        row = self.one(sa.select(
            count(answers_t).label("answers"),
            count(f).label("feedback"),
            count(verdict, verdict.c.rating == "up").label("up"),
            count(verdict, verdict.c.rating == "down").label("down"),
            count(verdict, verdict.c.correction.is_not(None)).label("corrections"),
        ))
        return dict(row._mapping)

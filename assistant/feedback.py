"""Feedback store: a snapshot of every answer and the ratings and corrections users give it.

A SQLite file in WAL mode by default, so the server's worker processes can all write to it (readers
never block, writers queue on the busy timeout), or the PostgreSQL that several servers share
(core/db.py). The schema grows only by new revisions in core/migrations/feedback/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn, TextIO

import sqlalchemy as sa
from pydantic import BaseModel, Field, computed_field
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from core.db import Store, insert_ignore
from core.errors import BadRequest
from core.prompt import NOT_FOUND
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
    sa.Column("user", sa.Text),
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
    sa.Column("approved_at", sa.Text),
    sa.Column("approved_by", sa.Text),
    sa.Index("reviewed_by_collection", "collection", "revoked_at"),
)

ReviewedStatus = Literal["approved", "pending", "revoked"]


class Reviewed(BaseModel):
    """A correction kept as the answer to its question, for whoever asks it next.

    An admin's correction is approved at once; a user's is pending (served only to its author)
    until an admin approves it. Revoked covers revoked, rejected and superseded."""

    id: int
    collection: str
    question: str
    answer: str
    answer_id: str
    user: str | None = None
    created_at: datetime
    revoked_at: str | None = None
    revoked_by: str | None = None
    approved_at: str | None = None
    approved_by: str | None = None

    @computed_field
    @property
    def status(self) -> ReviewedStatus:
        if self.revoked_at is not None:
            return "revoked"
        return "pending" if self.approved_at is None else "approved"


class Served(BaseModel):
    """What was served for one model and collection (and one UTC day, or the whole range): how
    many answers, how users judged them, how many said "not found", and how long they took."""

    day: str | None = Field(None, description="YYYY-MM-DD (UTC); None in the totals.")
    model: str
    collection: str
    answers: int
    rated: int = Field(description="Answers whose verdict (latest feedback) has a rating.")
    up: int
    down: int
    corrected: int = Field(description="Answers a user sent a correction for.")
    not_found: int = Field(description='Answers that were "not found" (core.prompt.NOT_FOUND, '
                           "or nothing relevant retrieved).")
    timed: int = Field(description="Answers with a measured latency (recorded since it is).")
    latency_mean_s: float | None = None
    latency_max_s: float | None = None

    @computed_field
    @property
    def up_rate(self) -> float | None:
        """Thumbs up among the rated answers."""
        return _rate(self.up, self.rated)

    @computed_field
    @property
    def correction_rate(self) -> float | None:
        return _rate(self.corrected, self.answers)

    @computed_field
    @property
    def not_found_rate(self) -> float | None:
        return _rate(self.not_found, self.answers)

    @classmethod
    def total(cls, rows: list[Served]) -> Served:
        """The rows (one model and collection) added up over their days."""
        counts = {k: sum(getattr(r, k) for r in rows)
                  for k in ("answers", "rated", "up", "down", "corrected", "not_found", "timed")}
        timed = [r for r in rows if r.timed]
        mean = (sum(r.latency_mean_s * r.timed for r in timed) / counts["timed"]) if timed else None
        return cls(model=rows[0].model, collection=rows[0].collection, **counts,
                   latency_mean_s=None if mean is None else round(mean, 3),
                   latency_max_s=max((r.latency_max_s for r in timed), default=None))


def first_day(days: int) -> str:
    """The first UTC day ('YYYY-MM-DD') of the last ``days`` days, today included."""
    if not 1 <= days <= 3660:
        raise BadRequest(f"days must be between 1 and 3660, not {days}", "ask for days=30, say")
    return (datetime.now(UTC).date() - timedelta(days=days - 1)).isoformat()


def served_totals(rows: list[Served]) -> list[Served]:
    """Per-day rows added up per model and collection."""
    groups: dict[tuple[str, str], list[Served]] = {}
    for r in rows:
        groups.setdefault((r.model, r.collection), []).append(r)
    return [Served.total(g) for _, g in sorted(groups.items())]


def _rate(n: int, of: int) -> float | None:
    return round(n / of, 4) if of else None


class _JsonNumber(FunctionElement):
    """A number stored under ``key`` of a JSON text column (the answers' ``extra``), or NULL."""

    type = sa.Float()
    inherit_cache = True
    name = "json_number"

    def __init__(self, column: Any, key: str):
        assert key.isidentifier()  # rendered into the SQL text
        self.key = key
        super().__init__(column)


@compiles(_JsonNumber)
def _json_number_sqlite(element: _JsonNumber, compiler: Any, **kw: Any) -> str:
    return f"json_extract({compiler.process(element.clauses, **kw)}, '$.{element.key}')"


@compiles(_JsonNumber, "postgresql")
def _json_number_postgresql(element: _JsonNumber, compiler: Any, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"CAST(CAST({column} AS JSON) ->> '{element.key}' AS DOUBLE PRECISION)"


# --- the store ------------------------------------------------------------------------------------

_ANSWER_COLUMNS = (
    "id",
    "user",
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


def _reviewed(row: Any) -> Reviewed:
    return Reviewed.model_validate(dict(row._mapping))


def _is_pending():
    return sa.and_(reviewed_t.c.approved_at.is_(None), reviewed_t.c.revoked_at.is_(None))


def _supersede(db: sa.Connection, reviewed_id: int, at: str) -> None:
    """The approved reviewed answer ``reviewed_id`` becomes the one served for its question and
    collection: the others served so far stop. Pending ones stay for an admin to decide."""
    r = reviewed_t
    row = db.execute(sa.select(r.c.collection, r.c.normalized).where(r.c.id == reviewed_id)).one()
    db.execute(sa.update(r).where(r.c.collection == row.collection,
                                  r.c.normalized == row.normalized, r.c.id != reviewed_id,
                                  r.c.approved_at.is_not(None), r.c.revoked_at.is_(None))
               .values(revoked_at=at, revoked_by=f"superseded by #{reviewed_id}"))


def _refuse(reviewed_id: int, row: Any, act: Literal["approve", "reject"]) -> NoReturn:
    """Why a reviewed answer cannot be approved or rejected: only pending ones can."""
    if row is None:
        raise BadRequest(f"No reviewed answer #{reviewed_id}",
                         "see `localcat reviewed pending` for the ones awaiting approval")
    if row.revoked_at is not None:
        raise BadRequest(f"Cannot {act} reviewed answer #{reviewed_id}: it was revoked "
                         f"({row.revoked_by}, {row.revoked_at})",
                         "nothing to do; to serve its text, correct the answer again as an admin"
                         if act == "approve" else "nothing to do")
    raise BadRequest(f"Cannot {act} reviewed answer #{reviewed_id}: it is already approved "
                     f"({row.approved_by}, {row.approved_at})",
                     "nothing to do" if act == "approve" else
                     f"to stop serving it, revoke it: `localcat reviewed revoke {reviewed_id}`")


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
        *,
        trusted: bool = False,
    ) -> Feedback:
        """Add a verdict on a recorded answer: a rating, a correction, or both, plus a comment.

        A correction becomes a reviewed answer: ``trusted`` (an admin's) serves everyone at once;
        otherwise it waits, pending, for ``approve_reviewed`` and meanwhile serves only ``user``.
        """
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
                self._review(db, answer_id, correction, new_id, user, created_at.isoformat(),
                             trusted)
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
                user: str | None, at: str, trusted: bool) -> None:
        """Keep the correction as the reviewed answer to the answer's (standalone) question;
        trusted, it is approved and an earlier one for the same question and collection gives way
        to it; untrusted, it waits for approval and displaces nothing."""
        a, r = answers_t, reviewed_t
        row = db.execute(sa.select(a.c.collection, a.c.standalone_question)
                         .where(a.c.id == answer_id)).one()
        approved = {"approved_at": at, "approved_by": user or "an admin"} if trusted else {}
        new = db.execute(sa.insert(r).values(
            collection=row.collection, question=row.standalone_question,
            normalized=normalize_question(row.standalone_question), answer=correction,
            answer_id=answer_id, feedback_id=feedback_id, user=user, created_at=at, **approved)
            .returning(r.c.id)).scalar_one()
        if trusted:
            _supersede(db, new, at)

    def reviewed(self, collection: str | None = None, *, revoked: bool = False,
                 pending: bool = False) -> list[Reviewed]:
        """Reviewed answers, newest first: the approved ones being served, or with ``pending``
        those awaiting approval. ``revoked`` adds the ones stopped on that side: revoked and
        superseded after approval, or rejected while pending."""
        r = reviewed_t
        query = sa.select(r).order_by(r.c.id.desc())
        if collection is not None:
            query = query.where(r.c.collection == collection)
        query = query.where(r.c.approved_at.is_(None) if pending else r.c.approved_at.is_not(None))
        if not revoked:
            query = query.where(r.c.revoked_at.is_(None))
        return [_reviewed(row) for row in self.all(query)]

    def reviewed_version(self, collection: str) -> tuple[int, int, int]:
        """Changes whenever the collection's served or pending reviewed answers do (a cache key):
        rows are only added, and approvals and revocations only ever counted up."""
        r = reviewed_t
        row = self.one(sa.select(sa.func.coalesce(sa.func.max(r.c.id), 0),
                                 sa.func.count(r.c.revoked_at), sa.func.count(r.c.approved_at))
                       .where(r.c.collection == collection))
        return tuple(row)

    def approve_reviewed(self, reviewed_id: int, by: str | None = None) -> Reviewed:
        """Serve a pending reviewed answer to everyone (an admin's call); it supersedes the one
        served so far for the same question."""
        r = reviewed_t
        at = datetime.now(UTC).isoformat()
        with self.transaction() as db:
            done = db.execute(sa.update(r).where(r.c.id == reviewed_id, _is_pending())
                              .values(approved_at=at, approved_by=by or "an admin")).rowcount
            if done:
                _supersede(db, reviewed_id, at)
            row = db.execute(sa.select(r).where(r.c.id == reviewed_id)).first()
        if not done:
            _refuse(reviewed_id, row, "approve")
        return _reviewed(row)

    def reject_reviewed(self, reviewed_id: int, by: str | None = None) -> Reviewed:
        """Never serve a pending reviewed answer to anyone, its author included (an admin's call);
        it stays listed with ``pending`` and ``revoked``."""
        r = reviewed_t
        with self.transaction() as db:
            done = db.execute(sa.update(r).where(r.c.id == reviewed_id, _is_pending())
                              .values(revoked_at=datetime.now(UTC).isoformat(),
                                      revoked_by=f"rejected by {by or 'an admin'}")).rowcount
            row = db.execute(sa.select(r).where(r.c.id == reviewed_id)).first()
        if not done:
            _refuse(reviewed_id, row, "reject")
        return _reviewed(row)

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
        return _reviewed(row)

    # --- reads ------------------------------------------------------------------------------------

    def get_answer(self, answer_id: str) -> Answer | None:
        row = self.one(sa.select(answers_t).where(answers_t.c.id == answer_id))
        return None if row is None else Answer.model_validate(_answer_dict(row))

    def latest_feedback(self, answer_id: str) -> Feedback | None:
        """The verdict on an answer: its most recent feedback."""
        f = feedback_t
        row = self.one(sa.select(f).where(f.c.answer_id == answer_id).order_by(f.c.id.desc()).limit(1))
        return None if row is None else Feedback.model_validate(_feedback_dict(row))

    def feedback_for(self, answer_id: str) -> list[Feedback]:
        """Every verdict on an answer, oldest first."""
        f = feedback_t
        rows = self.all(sa.select(f).where(f.c.answer_id == answer_id).order_by(f.c.id))
        return [Feedback.model_validate(_feedback_dict(r)) for r in rows]

    def _latest(self):
        """Feedback rows that are the latest of their answer (its verdict)."""
        g = feedback_t.alias("g")
        return feedback_t.c.id == (sa.select(sa.func.max(g.c.id))
                                   .where(g.c.answer_id == feedback_t.c.answer_id)
                                   .scalar_subquery())

    def _feedback_query(self, latest_only: bool = False, user: str | None = None,
                        rating: str | None = None, collection: str | None = None,
                        model: str | None = None):
        f, a = feedback_t, answers_t
        columns = [*f.c, *(c.label(f"a_{c.name}") for c in a.c)]
        query = sa.select(*columns).join(a, a.c.id == f.c.answer_id)
        if latest_only:
            query = query.where(self._latest())
        if user is not None:
            query = query.where(f.c.user == user)
        if rating == "correction":
            query = query.where(f.c.correction.is_not(None))
        elif rating is not None:
            query = query.where(f.c.rating == rating)
        if collection is not None:
            query = query.where(a.c.collection == collection)
        if model is not None:
            query = query.where(a.c.model == model)
        return query

    def iter_feedback(self, latest_only: bool = False, user: str | None = None, *,
                      rating: str | None = None, collection: str | None = None,
                      model: str | None = None) -> Iterator[dict[str, Any]]:
        """Feedback rows oldest first, JSON-ready, each with its answer snapshot under ``"answer"``.

        ``latest_only`` keeps one row per answer, its verdict; ``user`` only that user's rows;
        ``rating`` ('up', 'down' or 'correction'), ``collection`` and ``model`` filter too.
        Rows are read a page at a time so a slow consumer (the data-set builder) holds no read
        transaction open between pages.
        """
        f = feedback_t
        query = self._feedback_query(latest_only, user, rating, collection, model)
        last = 0
        while rows := self.all(query.where(f.c.id > last).order_by(f.c.id).limit(_PAGE)):
            for row in rows:
                yield {**_feedback_dict(row), "answer": _answer_dict(row, prefix="a_")}
            last = rows[-1].id

    def recent_feedback(self, limit: int = 200, *, latest_only: bool = False,
                        rating: str | None = None, collection: str | None = None,
                        model: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` feedback rows, as ``iter_feedback`` gives them (its filters too)."""
        query = self._feedback_query(latest_only, None, rating, collection, model)
        rows = self.all(query.order_by(feedback_t.c.id.desc()).limit(limit))
        return [{**_feedback_dict(r), "answer": _answer_dict(r, prefix="a_")} for r in rows]

    def answer_facets(self) -> dict[str, list[str]]:
        """The collections and models answers were given from (for filters)."""
        a = answers_t
        return {name: [r[0] for r in self.all(sa.select(column).distinct().order_by(column))]
                for name, column in (("collections", a.c.collection), ("models", a.c.model))}

    def monitoring(self, since: str | None = None, *, model: str | None = None,
                   collection: str | None = None) -> list[Served]:
        """What was served, per UTC day, model (version tag) and collection, oldest day first.

        ``since``: 'YYYY-MM-DD' (UTC), the first day counted (None: every day). Ratings are each
        answer's verdict (its latest feedback); an answer counts as corrected when any of its
        feedback carries a correction. Counted in the database (portable SQL: SQLite and
        PostgreSQL); latencies are read from the answers' ``extra`` JSON.
        """
        a, f = answers_t, feedback_t
        verdict = (sa.select(f.c.rating).where(f.c.answer_id == a.c.id)
                   .order_by(f.c.id.desc()).limit(1).scalar_subquery())
        corrected = sa.exists().where(f.c.answer_id == a.c.id, f.c.correction.is_not(None))
        not_found = sa.or_(a.c.grounded == 0, a.c.answer.startswith(NOT_FOUND, autoescape=True))
        per_answer = sa.select(
            sa.func.substr(a.c.created_at, 1, 10).label("day"), a.c.model, a.c.collection,
            verdict.label("rating"),
            sa.case((corrected, 1), else_=0).label("corrected"),
            sa.case((not_found, 1), else_=0).label("not_found"),
            _JsonNumber(a.c.extra, "latency_s").label("latency"))
        if since is not None:
            per_answer = per_answer.where(a.c.created_at >= since)
        if model is not None:
            per_answer = per_answer.where(a.c.model == model)
        if collection is not None:
            per_answer = per_answer.where(a.c.collection == collection)
        x = per_answer.subquery()

        def count_if(condition):
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        query = (sa.select(
            x.c.day, x.c.model, x.c.collection,
            sa.func.count().label("answers"),
            count_if(x.c.rating.is_not(None)).label("rated"),
            count_if(x.c.rating == "up").label("up"),
            count_if(x.c.rating == "down").label("down"),
            sa.func.coalesce(sa.func.sum(x.c.corrected), 0).label("corrected"),
            sa.func.coalesce(sa.func.sum(x.c.not_found), 0).label("not_found"),
            sa.func.count(x.c.latency).label("timed"),
            sa.func.avg(x.c.latency).label("latency_mean_s"),
            sa.func.max(x.c.latency).label("latency_max_s"))
            .group_by(x.c.day, x.c.model, x.c.collection)
            .order_by(x.c.day, x.c.model, x.c.collection))
        out = []
        for row in self.all(query):
            data = dict(row._mapping)
            for k in ("latency_mean_s", "latency_max_s"):
                data[k] = None if data[k] is None else round(float(data[k]), 3)
            out.append(Served.model_validate(data))
        return out

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

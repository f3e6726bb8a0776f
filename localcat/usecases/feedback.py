"""Rating and correcting answers, reading one's own feedback, exporting everyone's (admins)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from core.acts import FeedbackFilter, Verdict
from core.errors import BadRequest, Forbidden
from localcat.usecases.parts import Caller, Parts


def rate(parts: Parts, caller: Caller, v: Verdict):
    """Rate or correct an answer the caller was given (admins: any). The caller's name is the
    feedback's user; an admin's correction is served to everyone at once, a user's to that user
    until an admin approves it."""
    answer = parts.container.feedback.get_answer(v.answer_id)
    if answer is None:
        raise BadRequest(f"No answer with id {v.answer_id!r}",
                         "send the `id` returned with the answer; only answers this LocalCat "
                         "gave can be rated")
    caller.require_collection(answer.collection)
    if caller.role != "admin" and answer.user != caller.name:
        raise Forbidden(f"{caller.label} may only rate answers it was given",
                        "rate the answers of your own chats (an admin may rate any)")
    parts.take(caller, "feedback")
    row = parts.container.feedback.add_feedback(
        v.answer_id, v.rating, correction=v.correction, comment=v.comment, user=caller.name,
        trusted=caller.role == "admin")
    if v.correction:
        parts.audit(caller, "feedback.correct", v.answer_id)
    return row


def mine(parts: Parts, caller: Caller) -> list[dict[str, Any]]:
    """The feedback the caller gave, oldest first, each with its answer."""
    if caller.name is None:
        raise BadRequest("This server runs without keys, so no feedback is anyone's own",
                         "read all of it with the export, or give users keys "
                         "(`localcat keys add NAME --role user`)")
    return list(parts.container.feedback.iter_feedback(user=caller.name))


def export(parts: Parts, caller: Caller, f: FeedbackFilter | None = None) -> Iterator[dict]:
    """Every feedback row with its answer, oldest first (admins over every collection)."""
    caller.require_admin("export all feedback")
    caller.require_every_collection("export all feedback")
    f = f or FeedbackFilter()
    parts.audit(caller, "feedback.export")
    return parts.container.feedback.iter_feedback(
        f.latest_only, rating=f.rating, collection=f.collection, model=f.model)


def recent(parts: Parts, caller: Caller, f: FeedbackFilter, limit: int = 200) -> list[dict]:
    """The newest feedback rows (the Admin tab's list)."""
    caller.require_admin("read all feedback")
    caller.require_every_collection("read all feedback")
    return parts.container.feedback.recent_feedback(
        limit, latest_only=f.latest_only, rating=f.rating, collection=f.collection,
        model=f.model)


def snapshot(parts: Parts, caller: Caller, answer_id: str):
    """An answer as it was given and every verdict on it (admins)."""
    caller.require_admin("read all feedback")
    answer = parts.container.feedback.get_answer(answer_id)
    if answer is None:
        raise BadRequest(f"No answer {answer_id!r}", "pick a row of the feedback list")
    caller.require_collection(answer.collection)
    return answer, parts.container.feedback.feedback_for(answer_id)

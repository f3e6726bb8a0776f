"""Feedback: rating and correcting answers, one's own feedback, the admins' export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from core.acts import FeedbackFilter, Verdict
from localcat.api.deps import CallerDep, UseCasesDep

router = APIRouter()


class FeedbackRequest(BaseModel):
    answer_id: str = Field(max_length=100)
    rating: Literal["up", "down"] | None = None
    correction: str | None = None
    comment: str | None = None
    user: str | None = Field(None, description="Ignored: the key names the user.")


@router.post("/api/feedback")
def feedback(req: FeedbackRequest, who: CallerDep, uc: UseCasesDep):
    """Rate or correct an answer you were given; the key's name is the feedback's `user`."""
    row = uc.rate(who, Verdict(req.answer_id, req.rating, req.correction, req.comment))
    return row.model_dump(mode="json")


@router.get("/api/feedback/mine")
def my_feedback(who: CallerDep, uc: UseCasesDep):
    """The feedback given with this key, oldest first, each with its answer."""
    return {"feedback": uc.my_feedback(who)}


@router.get("/api/feedback/export")
def export_feedback(who: CallerDep, uc: UseCasesDep, format: Literal["jsonl"] = "jsonl",
                    latest_only: bool = False,
                    rating: Literal["up", "down", "correction"] | None = None,
                    collection: str | None = None, model: str | None = None):
    """Every feedback row with its answer snapshot, as JSON lines (admins)."""
    rows = uc.export_feedback(who, FeedbackFilter(latest_only, rating, collection, model))

    def lines() -> Iterator[str]:
        for row in rows:
            yield json.dumps(row, ensure_ascii=False, default=str) + "\n"
    return StreamingResponse(lines(), media_type="application/x-ndjson",
                             headers={"Content-Disposition": "attachment; filename=feedback.jsonl"})

"""Admin routes: model versions, reviewed answers, monitoring and the audit log."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from localcat.api.deps import CallerDep, UseCasesDep

router = APIRouter()


class ModelUseRequest(BaseModel):
    name: str = Field(description="A registered version (e.g. v3), or 'base' for no adapter.",
                      max_length=200)


@router.post("/api/models/use")
def models_use(req: ModelUseRequest, who: CallerDep, uc: UseCasesDep):
    """Serve a registered model version (or 'base'); running servers follow within
    models.poll_s."""
    return {"serving": uc.use_model(who, req.name)}


@router.post("/api/models/rollback")
def models_rollback(who: CallerDep, uc: UseCasesDep):
    """Serve again what was served before the last switch."""
    return {"serving": uc.rollback_model(who)}


@router.get("/api/reviewed")
def reviewed_list(who: CallerDep, uc: UseCasesDep, collection: str | None = None,
                  revoked: bool = False, pending: bool = False):
    """Reviewed answers (corrections served to questions that mean the same), newest first;
    ``revoked`` includes the revoked and superseded, ``pending`` lists users' corrections that
    wait for an admin's approval."""
    rows = uc.reviewed(who, collection, revoked=revoked, pending=pending)
    return {"reviewed": [r.model_dump(mode="json") for r in rows]}


@router.post("/api/reviewed/{reviewed_id}/{action}")
def reviewed_judge(reviewed_id: int, action: Literal["approve", "reject"], who: CallerDep,
                   uc: UseCasesDep):
    """Approve a user's pending correction (served to everyone from then on), or reject it."""
    return uc.judge_reviewed(who, reviewed_id, action).model_dump(mode="json")


@router.delete("/api/reviewed/{reviewed_id}")
def reviewed_revoke(reviewed_id: int, who: CallerDep, uc: UseCasesDep):
    """Stop serving a reviewed answer; it stays listed as revoked."""
    return uc.judge_reviewed(who, reviewed_id, "revoke").model_dump(mode="json")


@router.get("/api/monitoring")
def monitoring(who: CallerDep, uc: UseCasesDep, days: int = 30, model: str | None = None,
               collection: str | None = None):
    """What was served over the last ``days`` (UTC) days, per day, model version and
    collection: answers, thumbs-up rate (of the rated), correction rate, "not found" rate and
    latency; ``totals`` adds the days up."""
    out = uc.monitoring(who, days, model=model, collection=collection)
    return {"since": out["since"], "days": [r.model_dump() for r in out["days"]],
            "totals": [r.model_dump() for r in out["totals"]]}


@router.get("/api/audit")
def audit(who: CallerDep, uc: UseCasesDep, limit: int = 100):
    """The admin actions, newest first."""
    return {"entries": [e.model_dump() for e in uc.audit_log(who, limit)]}

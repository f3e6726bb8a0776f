"""Admin acts: collections, model and retrieval versions, reviewed answers, monitoring, audit.
Each checks the caller's role (and collections) and writes the audit log."""

from __future__ import annotations

from typing import Any

from localcat.usecases.parts import Caller, Parts


def delete_collection(parts: Parts, caller: Caller, name: str) -> None:
    caller.require_admin("delete collections")
    caller.require_collection(name)
    parts.container.indexer.drop_collection(name)
    parts.audit(caller, "collection.delete", name)


def collections(parts: Parts, caller: Caller) -> list[dict]:
    """The collections the caller may use."""
    return [c for c in parts.container.store.collections() if caller.may_use(c["name"])]


def model_versions(parts: Parts, caller: Caller) -> list:
    caller.require_admin("list model versions")
    return parts.container.registry.versions()


def use_model(parts: Parts, caller: Caller, name: str | None) -> str:
    """Serve a registered model version ('base' or None: no adapter); returns what is served."""
    caller.require_admin("switch models")
    version = parts.container.registry.use(name or "base")
    serving = version.name if version else "base"
    parts.audit(caller, "models.use", serving)
    return serving


def rollback_model(parts: Parts, caller: Caller) -> str:
    caller.require_admin("switch models")
    version = parts.container.registry.rollback()
    serving = version.name if version else "base"
    parts.audit(caller, "models.rollback", serving)
    return serving


def retrieval_versions(parts: Parts, caller: Caller, collection: str) -> list:
    caller.require_admin("list retrieval versions")
    caller.require_collection(collection)
    return parts.container.store.retrieval_versions(collection)


def use_retrieval(parts: Parts, caller: Caller, collection: str, version: str):
    from core.chunkstore import parse_version
    from finetune.retrieval import use_version

    caller.require_admin("switch retrieval versions")
    caller.require_collection(collection)
    v = use_version(parts.container, collection, parse_version(version))
    parts.audit(caller, "retrieval.use", f"{collection} {v.name}")
    return v


def rollback_retrieval(parts: Parts, caller: Caller, collection: str):
    from finetune.retrieval import rollback

    caller.require_admin("switch retrieval versions")
    caller.require_collection(collection)
    v = rollback(parts.container, collection)
    parts.audit(caller, "retrieval.rollback", f"{collection} {v.name}")
    return v


def reviewed(parts: Parts, caller: Caller, collection: str | None = None, *,
             revoked: bool = False, pending: bool = False) -> list:
    """Reviewed answers (corrections served to questions that mean the same), newest first;
    ``pending``: users' corrections waiting for approval."""
    caller.require_admin("list reviewed answers")
    if collection is None:
        caller.require_every_collection("list every collection's reviewed answers")
    else:
        caller.require_collection(collection)
    return parts.container.feedback.reviewed(collection, revoked=revoked, pending=pending)


def judge_reviewed(parts: Parts, caller: Caller, reviewed_id: int,
                   action: str) -> Any:
    """'approve' (served to everyone from now on), 'reject' or 'revoke' a reviewed answer."""
    caller.require_admin(f"{action} reviewed answers")
    store = parts.container.feedback
    act = {"approve": store.approve_reviewed, "reject": store.reject_reviewed,
           "revoke": store.revoke_reviewed}[action]
    row = act(int(reviewed_id), by=caller.label)
    parts.audit(caller, f"reviewed.{action}", str(row.id))
    return row


def monitoring(parts: Parts, caller: Caller, days: int = 30, *, model: str | None = None,
               collection: str | None = None) -> dict:
    """What was served per day, model and collection, with totals."""
    from assistant.feedback import first_day, served_totals

    caller.require_admin("read the monitoring figures")
    if collection is None:
        caller.require_every_collection("read the monitoring figures of every collection")
    else:
        caller.require_collection(collection)
    since = first_day(days)
    rows = parts.container.feedback.monitoring(since, model=model, collection=collection)
    return {"since": since, "days": rows, "totals": served_totals(rows)}


def audit_log(parts: Parts, caller: Caller, limit: int = 100) -> list:
    caller.require_admin("read the audit log")
    return parts.container.keys.audit_log(min(max(limit, 1), 10_000))

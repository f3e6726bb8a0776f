"""The use cases: one function per act (ask, upload, rate, export, admin), shared by the API, the
page and the CLI, each enforcing who may, the limits and the audit in one place."""

from __future__ import annotations

import functools
from collections.abc import Callable

from localcat.usecases import admin as _admin
from localcat.usecases import ask as _ask
from localcat.usecases import feedback as _feedback
from localcat.usecases import upload as _upload
from localcat.usecases.parts import Caller, Parts, operator

__all__ = ["Caller", "Parts", "UseCases", "operator"]


def _bound(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def method(self: UseCases, *args, **kwargs):
        return fn(self.parts, *args, **kwargs)
    return method


class UseCases:
    """Every use case bound to one server's (or CLI run's) parts: ``uc.ask(caller, question)``.
    Edges hold one and only translate to and from it."""

    def __init__(self, parts: Parts):
        self.parts = parts

    ask = _bound(_ask.ask)
    upload = _bound(_upload.upload)
    rate = _bound(_feedback.rate)
    my_feedback = _bound(_feedback.mine)
    export_feedback = _bound(_feedback.export)
    recent_feedback = _bound(_feedback.recent)
    answer_snapshot = _bound(_feedback.snapshot)
    collections = _bound(_admin.collections)
    delete_collection = _bound(_admin.delete_collection)
    model_versions = _bound(_admin.model_versions)
    use_model = _bound(_admin.use_model)
    rollback_model = _bound(_admin.rollback_model)
    retrieval_versions = _bound(_admin.retrieval_versions)
    use_retrieval = _bound(_admin.use_retrieval)
    rollback_retrieval = _bound(_admin.rollback_retrieval)
    reviewed = _bound(_admin.reviewed)
    judge_reviewed = _bound(_admin.judge_reviewed)
    monitoring = _bound(_admin.monitoring)
    audit_log = _bound(_admin.audit_log)

"""The Admin tab's Feedback sub-tab: the feedback list with each answer's snapshot, its JSONL
export, and the reviewed answers an admin approves, rejects or revokes.

No ``from __future__ import annotations`` (see ui/app.py). Only ``build_admin`` imports this
module, as it builds the page, so gradio is imported at the top.
"""

import json
from typing import Any

import gradio as gr

from core.acts import FeedbackFilter
from core.errors import LocalCatError
from ui.admin import (
    ALL,
    FEEDBACK_HEADERS,
    RATINGS,
    REVIEWED_HEADERS,
    AdminContext,
    export_folder,
    feedback_table,
    reviewed_table,
    snapshot_html,
)
from ui.app import _warn

ADMIN_CSS = """
.lc-meta { color: var(--body-text-color-subdued); font-size: 0.9em; }
.lc-answer { white-space: pre-wrap; border-left: 3px solid var(--color-accent); padding-left: 8px; }
.lc-snippet { color: var(--body-text-color-subdued); font-size: 0.85em; white-space: pre-wrap; }
.lc-correction { white-space: pre-wrap; }
"""


class FeedbackTab:
    """The Feedback sub-tab's components and handlers (each handler checks for an admin)."""

    def __init__(self, ctx: AdminContext):
        self.ctx = ctx
        self.uc = ctx.uc

    def layout(self) -> None:
        with gr.Tab("Feedback", id="admin-feedback"):
            with gr.Row():
                self.rating = gr.Dropdown(RATINGS, value=ALL, label="Rating", elem_id="fb-rating")
                self.collection = gr.Dropdown([ALL], value=ALL, label="Collection",
                                              elem_id="fb-collection")
                self.model = gr.Dropdown([ALL], value=ALL, label="Model", elem_id="fb-model")
                self.latest = gr.Checkbox(True, label="Each answer's latest verdict only",
                                          elem_id="fb-latest")
            with gr.Row():
                self.refresh = gr.Button("🔄 Refresh", elem_id="fb-refresh", size="sm")
                self.export_btn = gr.Button("⬇ Export JSONL", elem_id="fb-export", size="sm")
            self.count = gr.Markdown("", elem_id="fb-count")
            self.file = gr.File(label="Export", elem_id="fb-file", visible=False)
            self.table = gr.Dataframe(headers=FEEDBACK_HEADERS, interactive=False, wrap=True,
                                      elem_id="fb-table", max_height=420)
            with gr.Row():
                self.answer = gr.Textbox(label="Answer id", elem_id="fb-answer-id", scale=4,
                                         placeholder="click a row, or paste an answer id")
                self.open = gr.Button("Open snapshot", elem_id="fb-open", scale=1, size="sm")
            self.snapshot = gr.HTML("", elem_id="fb-snapshot", css_template=ADMIN_CSS)

            gr.Markdown("### Reviewed answers (corrections served to questions that mean the "
                        "same; a user's waits, pending, until an admin approves it)")
            with gr.Row():
                self.revoked = gr.Checkbox(False, label="Include revoked", elem_id="rv-revoked")
                self.r_refresh = gr.Button("🔄 Refresh", elem_id="rv-refresh", size="sm")
            self.r_table = gr.Dataframe(headers=REVIEWED_HEADERS, interactive=False, wrap=True,
                                        elem_id="rv-table", max_height=320)
            with gr.Row():
                self.r_id = gr.Number(label="Reviewed answer #", precision=0, elem_id="rv-id")
                self.approve = gr.Button("Approve", variant="primary", elem_id="rv-approve",
                                         size="sm")
                self.reject = gr.Button("Reject", elem_id="rv-reject", size="sm")
                self.revoke = gr.Button("Revoke", variant="stop", elem_id="rv-revoke", size="sm")
            self.r_status = gr.Markdown("", elem_id="rv-status")

    def wire(self, tab: Any) -> None:
        on = self.ctx.on
        inputs = [self.rating, self.collection, self.model, self.latest]
        on([tab.select, self.refresh.click, self.rating.input, self.collection.input,
            self.model.input, self.latest.input], self.feedback_list, inputs,
           [self.table, self.collection, self.model, self.count])
        on([self.open.click, self.answer.submit], self.open_snapshot, [self.answer],
           [self.snapshot])
        on([self.table.select], self.select_feedback, None, [self.answer, self.snapshot])
        on([self.export_btn.click], self.export, inputs, [self.file, self.count])

        on([tab.select, self.r_refresh.click, self.revoked.input], self.reviewed_list,
           [self.revoked], [self.r_table])
        on([self.r_table.select], self.select_reviewed, None, [self.r_id])
        for button, action, done in ((self.revoke, "revoke", "Revoked"),
                                     (self.approve, "approve", "Approved"),
                                     (self.reject, "reject", "Rejected")):
            on([button.click], self.judge(action, done), [self.r_id, self.revoked],
               [self.r_table, self.r_status], api_name=action)

    # --- feedback ---------------------------------------------------------------------------------

    def feedback_list(self, rating, collection, model, latest_only, request: gr.Request):
        pick = self.ctx.pick
        rows = self.ctx.acting(request, self.uc.recent_feedback, FeedbackFilter(
            latest_only, pick(rating), pick(collection), pick(model)))
        facets = self.ctx.container.feedback.answer_facets()
        return (self.ctx.frame(feedback_table(rows), FEEDBACK_HEADERS),
                gr.Dropdown(choices=[ALL, *facets["collections"]]),
                gr.Dropdown(choices=[ALL, *facets["models"]]),
                f"{len(rows)} row(s){' (the newest 200)' if len(rows) == 200 else ''}.")

    def open_snapshot(self, answer_id: str, request: gr.Request):
        self.ctx.require(request, "read all feedback")
        try:
            answer, verdicts = self.uc.answer_snapshot(self.ctx.callers(request),
                                                       (answer_id or "").strip())
        except LocalCatError as err:
            return _warn(err)
        return snapshot_html(answer, verdicts)

    def select_feedback(self, evt: gr.SelectData, request: gr.Request):
        row = evt.row_value or []
        if len(row) < len(FEEDBACK_HEADERS):
            return gr.skip(), gr.skip()
        return row[-1], self.open_snapshot(row[-1], request)

    def export(self, rating, collection, model, latest_only, request: gr.Request):
        pick = self.ctx.pick
        rows = self.ctx.acting(request, self.uc.export_feedback, FeedbackFilter(
            latest_only, pick(rating), pick(collection), pick(model)))
        # In Gradio's cache, where it serves files from without copying them; the page's file
        # route gives EXPORTS to admins only (localcat/api/guards.py), and the cache is cleaned.
        path = export_folder() / "feedback.jsonl"
        n = 0
        with path.open("w", encoding="utf-8") as fp:
            for row in rows:
                fp.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                n += 1
        return gr.File(value=str(path), visible=True), f"Exported {n} row(s) as JSONL."

    # --- reviewed answers -------------------------------------------------------------------------

    def reviewed_list(self, revoked: bool, request: gr.Request):
        rows = self.ctx.acting(request, self.uc.reviewed, revoked=revoked)
        pending = self.ctx.acting(request, self.uc.reviewed, pending=True)
        return self.ctx.frame(reviewed_table(pending + rows), REVIEWED_HEADERS)

    def select_reviewed(self, evt: gr.SelectData, request: gr.Request):
        self.ctx.require(request, "list reviewed answers")
        row = evt.row_value or []
        return row[0] if row else gr.skip()

    def judge(self, action: str, done: str):
        """The handler of one verdict on a reviewed answer (its API name is ``action``)."""
        def handler(reviewed_id, revoked: bool, request: gr.Request):
            self.ctx.require(request, f"{action} reviewed answers")
            if not reviewed_id:
                gr.Warning("Pick a reviewed answer first (click its row).")
                return gr.skip(), gr.skip()
            try:
                row = self.uc.judge_reviewed(self.ctx.callers(request), int(reviewed_id), action)
            except LocalCatError as err:
                return gr.skip(), _warn(err)
            return self.reviewed_list(revoked, request), f"{done} reviewed answer #{row.id}."
        return handler

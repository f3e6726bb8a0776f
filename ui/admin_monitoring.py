"""The Admin tab's Monitoring sub-tab: what is served, per model and collection and per day
(answers, 👍 rate, corrections, "not found", latency), as tables and a plot.

No ``from __future__ import annotations`` (see ui/app.py). Only ``build_admin`` imports this
module, as it builds the page, so gradio is imported at the top.
"""

from typing import Any

import gradio as gr

from core.errors import LocalCatError
from ui.admin import ALL, MONITORING_HEADERS, AdminContext, monitoring_figure, monitoring_table
from ui.app import _warn


class MonitoringTab:
    """The Monitoring sub-tab's components and handlers (each handler checks for an admin)."""

    def __init__(self, ctx: AdminContext):
        self.ctx = ctx

    def layout(self) -> None:
        with gr.Tab("Monitoring", id="admin-monitoring"):
            with gr.Row():
                self.days = gr.Number(30, label="Days", precision=0, elem_id="mon-days")
                self.model = gr.Dropdown([ALL], value=ALL, label="Model", elem_id="mon-model")
                self.collection = gr.Dropdown([ALL], value=ALL, label="Collection",
                                              elem_id="mon-collection")
                self.refresh = gr.Button("🔄 Refresh", elem_id="mon-refresh", size="sm")
            self.summary = gr.Markdown("", elem_id="mon-summary")
            gr.Markdown("Totals per model and collection")
            self.totals = gr.Dataframe(headers=MONITORING_HEADERS, interactive=False,
                                       elem_id="mon-totals")
            self.plot = gr.Plot(label="Over time", elem_id="mon-plot")
            gr.Markdown("Per day")
            self.per_day = gr.Dataframe(headers=MONITORING_HEADERS, interactive=False,
                                        elem_id="mon-days-table", max_height=360)

    def wire(self, tab: Any, finetune_collection: Any) -> None:
        """``finetune_collection``: the Fine-tune tab's collection, filled with the filters."""
        on = self.ctx.on
        on([tab.select], self.facets, None, [self.model, self.collection, finetune_collection])
        on([tab.select, self.refresh.click, self.model.input, self.collection.input,
            self.days.submit], self.monitoring, [self.days, self.model, self.collection],
           [self.totals, self.per_day, self.plot, self.summary])

    def facets(self, request: gr.Request):
        """The models and collections answered with, and the collections a run can learn on."""
        self.ctx.require(request, "read the monitoring figures")
        f = self.ctx.container.feedback.answer_facets()
        names = [c["name"] for c in self.ctx.container.store.collections()]
        default = self.ctx.settings.chroma.collection
        return (gr.Dropdown(choices=[ALL, *f["models"]]),
                gr.Dropdown(choices=[ALL, *f["collections"]]),
                gr.Dropdown(choices=names, value=default if default in names else None))

    def monitoring(self, days, model, collection, request: gr.Request):
        self.ctx.require(request, "read the monitoring figures")
        pick, frame = self.ctx.pick, self.ctx.frame
        try:
            out = self.ctx.uc.monitoring(self.ctx.callers(request), int(days or 30),
                                         model=pick(model), collection=pick(collection))
        except LocalCatError as err:
            return gr.skip(), gr.skip(), gr.skip(), _warn(err)
        since, rows, totals = out["since"], out["days"], out["totals"]
        return (frame(monitoring_table(totals), MONITORING_HEADERS),
                frame(monitoring_table(rows), MONITORING_HEADERS),
                monitoring_figure(rows) if rows else None,
                f"Since {since} (UTC): {sum(t.answers for t in totals)} answer(s).")

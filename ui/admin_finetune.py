"""The Admin tab's Fine-tune sub-tab: a `localcat finetune run` started, followed (its output and
loss curve) and stopped from the page, the runs so far, and the model and retrieval versions an
admin serves or rolls back.

No ``from __future__ import annotations`` (see ui/app.py). Only ``build_admin`` imports this
module, as it builds the page, so gradio is imported at the top.
"""

from pathlib import Path
from typing import Any

import gradio as gr

from core.errors import LocalCatError
from ui.admin import (
    FINETUNE_ONLY,
    RETRIEVAL_HEADERS,
    VERSION_HEADERS,
    AdminContext,
    FinetuneJob,
    eval_summary,
    finetune_argv,
    finetune_env,
    list_runs,
    loss_plot,
    retrieval_table,
    versions_table,
)
from ui.app import _warn


class FinetuneTab:
    """The Fine-tune sub-tab's components and handlers (each handler checks for an admin). One
    run at a time for the whole page, followed by whichever admin has it open."""

    def __init__(self, ctx: AdminContext):
        self.ctx = ctx
        self.uc = ctx.uc
        self.runs_root = ctx.settings.data_dir / "finetune"
        self.job: FinetuneJob | None = None

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def layout(self) -> None:
        with gr.Tab("Fine-tune", id="admin-finetune"):
            with gr.Row():
                self.steps = gr.Number(label="Steps (empty: epochs decide)", precision=0,
                                       elem_id="ft-steps")
                self.min = gr.Number(label="Fewest training examples (empty: settings)",
                                     precision=0, elem_id="ft-min-examples")
                self.only = gr.Radio(FINETUNE_ONLY, value="both", label="Parts", elem_id="ft-only")
                self.collection = gr.Dropdown([], label="Collection (retrieval part)",
                                              allow_custom_value=True, elem_id="ft-collection")
            with gr.Row():
                self.base = gr.Textbox(label="Base (empty: settings / the served model)",
                                       elem_id="ft-base")
                self.force = gr.Checkbox(False, label="--force (register even without a clear "
                                         "gain)", elem_id="ft-force")
                self.ollama = gr.Checkbox(True, label="Also create it in Ollama when one answers",
                                          elem_id="ft-ollama")
            with gr.Row():
                self.start_btn = gr.Button("▶ Start a run", variant="primary", elem_id="ft-start")
                self.stop_btn = gr.Button("⏹ Stop", variant="stop", elem_id="ft-stop")
            self.status = gr.Markdown("", elem_id="ft-status")
            self.log = gr.Textbox(label="Output", lines=12, max_lines=12, autoscroll=True,
                                  interactive=False, elem_id="ft-log")
            with gr.Row():
                self.runs = gr.Dropdown([], label="Run", elem_id="ft-runs", scale=3)
                self.runs_btn = gr.Button("🔄", elem_id="ft-runs-refresh", scale=0, size="sm")
            self.plot = gr.Plot(label="Loss", elem_id="ft-loss")
            self.eval = gr.Markdown("", elem_id="ft-eval")
            self.versions_layout()

    def versions_layout(self) -> None:
        gr.Markdown("### Model versions (eval on each run's held-out test split)")
        self.v_table = gr.Dataframe(headers=VERSION_HEADERS, interactive=False, wrap=True,
                                    elem_id="mv-table")
        with gr.Row():
            self.v_pick = gr.Dropdown(["base"], value="base", label="Version", elem_id="mv-pick",
                                      scale=2)
            self.v_use = gr.Button("Serve this version", variant="primary", elem_id="mv-use",
                                   scale=1)
            self.v_rollback = gr.Button("↩ Roll back", elem_id="mv-rollback", scale=1)
        self.v_status = gr.Markdown("", elem_id="mv-status")

        gr.Markdown("### Retrieval versions (learned embedders of a collection)")
        with gr.Row():
            self.rv_collection = gr.Dropdown([], label="Collection", elem_id="rt-collection",
                                             scale=2)
            self.rv_pick = gr.Dropdown([], label="Version", elem_id="rt-pick", scale=2)
            self.rv_use = gr.Button("Serve this version", elem_id="rt-use", scale=1)
            self.rv_rollback = gr.Button("↩ Roll back", elem_id="rt-rollback", scale=1)
        self.rv_table = gr.Dataframe(headers=RETRIEVAL_HEADERS, interactive=False, wrap=True,
                                     elem_id="rt-table")
        self.rv_status = gr.Markdown("", elem_id="rt-status")

    def wire(self, tab: Any, timer: Any, drawn: Any) -> None:
        """``timer`` ticks while a run goes on; ``drawn`` holds the loss.json mtime plotted."""
        on = self.ctx.on
        versions = [self.v_table, self.v_pick, self.v_status]
        on([tab.select], self.versions, None, versions)
        # Named: a generated name ("handler_2") would shift whenever an event is added.
        on([self.v_use.click], self.switch("use"), [self.v_pick], versions, api_name="use_model")
        on([self.v_rollback.click], self.switch("rollback"), [self.v_pick], versions,
           api_name="rollback_model")

        retrieval = [self.rv_collection, self.rv_table, self.rv_pick]
        on([tab.select, self.rv_collection.input], self.retrieval, [self.rv_collection],
           retrieval)
        on([self.rv_use.click], self.retrieval_switch("use"), [self.rv_collection, self.rv_pick],
           [*retrieval, self.rv_status], api_name="use_retrieval")
        on([self.rv_rollback.click], self.retrieval_switch("rollback"),
           [self.rv_collection, self.rv_pick], [*retrieval, self.rv_status],
           api_name="rollback_retrieval")

        on([tab.select, self.runs_btn.click], self.runs_refresh, [self.runs], [self.runs])
        on([self.runs.change], self.show_run, [self.runs], [self.plot, self.eval])
        on([self.start_btn.click], self.start,
           [self.steps, self.min, self.only, self.collection, self.base, self.force, self.ollama],
           [self.log, self.status, timer, self.runs])
        on([self.stop_btn.click], self.stop, None, [self.status])
        on([timer.tick], self.tick, [drawn],
           [self.log, self.status, self.plot, drawn, self.runs, timer, *versions])

    # --- runs -------------------------------------------------------------------------------------

    def run_dir(self, name: str | None) -> Path | None:
        return self.runs_root / name if name and (self.runs_root / name).is_dir() else None

    def runs_choices(self, value: str | None = None):
        names = list_runs(self.runs_root)
        return gr.Dropdown(choices=names, value=value if value in names else
                           (names[0] if names else None))

    def runs_refresh(self, name: str | None, request: gr.Request):
        self.ctx.require(request, "read fine-tune runs")
        return self.runs_choices(name)

    def show_run(self, name: str | None, request: gr.Request):
        self.ctx.require(request, "read fine-tune runs")
        path = self.run_dir(name)
        try:
            return loss_plot(path), eval_summary(path)
        except LocalCatError as err:
            return None, _warn(err)

    def start(self, steps, min_examples, only, collection, base, force, ollama,
              request: gr.Request):
        from finetune.dataset import new_run_name

        p = self.ctx.require(request, "start fine-tune runs")
        job = self.job
        if job is not None and job.running:
            gr.Warning(f"Run {job.run_dir.name} is still running: stop it first.")
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        name = new_run_name()
        n = 1
        while (self.runs_root / name).exists():
            n += 1
            name = f"{new_run_name()}-{n}"
        argv = finetune_argv(name, steps=steps, min_examples=min_examples, only=only,
                             collection=collection, base=(base or "").strip() or None,
                             force=force, ollama=ollama)
        job = self.job = FinetuneJob(argv, finetune_env(self.ctx.settings), self.runs_root / name)
        self.ctx.log(p, "finetune.run", name)
        return (job.command_line, job.status(), gr.Timer(active=True),
                self.runs_choices(None))

    def stop(self, request: gr.Request):
        self.ctx.require(request, "stop fine-tune runs")
        job = self.job
        if job is None or not job.running:
            gr.Warning("No run is running.")
            return gr.skip()
        job.stop()
        return job.status()

    def tick(self, drawn: float, request: gr.Request):
        self.ctx.require(request, "follow fine-tune runs")
        job = self.job
        if job is None:
            return (gr.skip(), gr.skip(), gr.skip(), drawn, gr.skip(), gr.Timer(active=False),
                    gr.skip(), gr.skip(), gr.skip())
        header = job.command_line
        loss = job.run_dir / "train" / "loss.json"
        mtime = loss.stat().st_mtime if loss.is_file() else 0.0
        plot = gr.skip()
        if mtime != drawn:
            try:
                plot = loss_plot(job.run_dir)
            except LocalCatError:  # written as we read it: the next tick draws it
                mtime = drawn
        if job.running:
            return (header + job.output(), job.status(), plot, mtime, gr.skip(), gr.skip(),
                    gr.skip(), gr.skip(), gr.skip())
        # Done: the run may have registered (and served) a new version.
        return (header + job.output(), job.status(), plot, mtime,
                self.runs_choices(job.run_dir.name), gr.Timer(active=False),
                *self.versions(request))

    # --- model versions ---------------------------------------------------------------------------

    def versions(self, request: gr.Request):
        listed = self.ctx.acting(request, self.uc.model_versions)
        serving = next((v.name for v in listed if v.active), "base")
        return (self.ctx.frame(versions_table(listed), VERSION_HEADERS),
                gr.Dropdown(choices=["base", *[v.name for v in listed]], value=serving),
                f"Serving **{serving}**" + ("" if serving != "base" else " (no adapter)") + ".")

    def switch(self, action: str):
        """The handler that serves a version (``use``) or the one before (``rollback``)."""
        def handler(name: str | None, request: gr.Request):
            self.ctx.require(request, "switch models")
            try:
                who = self.ctx.callers(request)
                serving = (self.uc.use_model(who, name) if action == "use"
                           else self.uc.rollback_model(who))
            except LocalCatError as err:
                return gr.skip(), gr.skip(), _warn(err)
            table, choices, _ = self.versions(request)
            return table, choices, f"Serving **{serving}** from the next answer on."
        return handler

    # --- retrieval versions -----------------------------------------------------------------------

    def retrieval(self, collection: str | None, request: gr.Request):
        self.ctx.require(request, "list retrieval versions")
        names = [c["name"] for c in self.ctx.container.store.collections()]
        default = self.ctx.settings.chroma.collection
        collection = collection if collection in names else (
            default if default in names or not names else names[0])
        if collection not in names:
            return (gr.Dropdown(choices=names, value=None),
                    self.ctx.frame([], RETRIEVAL_HEADERS), gr.Dropdown(choices=[], value=None))
        listed = self.ctx.acting(request, self.uc.retrieval_versions, collection)
        serving = next((v.name for v in listed if v.active), None)
        return (gr.Dropdown(choices=names, value=collection),
                self.ctx.frame(retrieval_table(listed), RETRIEVAL_HEADERS),
                gr.Dropdown(choices=[v.name for v in listed if v.status == "ready"] or
                            [v.name for v in listed], value=serving))

    def retrieval_switch(self, action: str):
        """The handler that serves a collection's retrieval version, or rolls it back."""
        def handler(collection: str | None, version: str | None, request: gr.Request):
            self.ctx.require(request, "switch retrieval versions")
            try:
                if not collection:
                    raise LocalCatError("No collection picked", "pick one first")
                who = self.ctx.callers(request)
                v = (self.uc.use_retrieval(who, collection, version or "r0") if action == "use"
                     else self.uc.rollback_retrieval(who, collection))
            except LocalCatError as err:
                return gr.skip(), gr.skip(), gr.skip(), _warn(err)
            return (*self.retrieval(collection, request),
                    f"Serving retrieval {v.name} on {collection!r}.")
        return handler

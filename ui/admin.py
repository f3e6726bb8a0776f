"""The page's Admin tab: feedback and reviewed answers, fine-tune runs with their loss curve, the
model and retrieval versions, and monitoring of what is served.

Only admins get it: the server hands ``build_ui`` a way to ask who is behind a request (the key
the browser sends by HTTP Basic, checked by the API's own gate), the tab is shown to admins only,
and every handler checks again, since a hidden tab's events can still be called.

No ``from __future__ import annotations`` (see ui/app.py): Gradio reads ``gr.Request`` and
``gr.SelectData`` annotations at runtime.
"""

import codecs
import contextlib
import html
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from core.errors import LocalCatError

ALL = "(all)"
RATINGS = [(ALL, ALL), ("👍 up", "up"), ("👎 down", "down"),
           ("✎ with a correction", "correction")]
FEEDBACK_HEADERS = ["feedback", "when (UTC)", "rating", "correction", "collection", "model",
                    "question", "answer id"]
REVIEWED_HEADERS = ["#", "status", "collection", "question", "corrected answer", "by",
                    "when (UTC)", "revoked"]
EXPORTS = "localcat-export-"
"""Folder prefix of the Admin tab's exports in Gradio's cache: served to admins only."""
VERSION_HEADERS = ["served", "version", "status", "run", "trainer", "train examples",
                   "quality base → adapter", "F1 base → adapter", "key facts base → adapter",
                   "loss base → adapter", "created (UTC)"]
RETRIEVAL_HEADERS = ["served", "version", "status", "embedder", "nDCG@10 served → new",
                     "held-out questions", "created (UTC)"]
MONITORING_HEADERS = ["day", "model", "collection", "answers", "👍 rate", "correction rate",
                      "not found rate", "latency mean (s)", "latency max (s)", "rated", "timed"]
FINETUNE_ONLY = ["both", "generation", "retrieval"]


# --- rendering ------------------------------------------------------------------------------------

def _when(value: Any) -> str:
    """'2025-06-01 12:34' from a stored ISO time."""
    text = str(value or "")
    return text[:16].replace("T", " ")


def _short(text: str | None, limit: int = 80) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.0%}"


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def feedback_table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """The feedback list: one line per feedback row (newest first, as given)."""
    out = []
    for r in rows:
        a = r["answer"]
        rating = {"up": "👍", "down": "👎"}.get(r["rating"] or "", "")
        out.append([r["id"], _when(r["created_at"]), rating, _short(r["correction"], 60),
                    a["collection"], a["model"], _short(a["question"]), r["answer_id"]])
    return out


def reviewed_table(rows: list[Any]) -> list[list[Any]]:
    return [[r.id, r.status, r.collection, _short(r.question), _short(r.answer, 60), r.user or "",
             _when(r.created_at.isoformat()),
             f"{_when(r.revoked_at)} ({r.revoked_by})" if r.revoked_at else ""] for r in rows]


def snapshot_html(answer: Any, feedback: list[Any]) -> str:
    """An answer as it was given (question, answer, citations) and every verdict on it."""
    esc = html.escape
    rows = [
        f"<h4>Answer <code>{esc(answer.id)}</code></h4>",
        f"<p><b>Question:</b> {esc(answer.question)}</p>",
    ]
    if answer.standalone_question != answer.question:
        rows.append(f"<p><b>As searched:</b> {esc(answer.standalone_question)}</p>")
    latency = "" if answer.latency_s is None else f" · {answer.latency_s:.2f} s"
    rows += [
        f"<p class='lc-meta'>{esc(answer.collection)} · {esc(answer.model)} · "
        f"{esc(_when(answer.created_at.isoformat()))} UTC{latency}"
        f"{'' if answer.grounded else ' · nothing relevant retrieved'}</p>",
        f"<div class='lc-answer'>{esc(answer.answer)}</div>",
        "<p><b>Citations</b></p>" if answer.citations else "<p><i>No citations.</i></p>",
    ]
    if answer.citations:
        items = []
        for c in answer.citations:
            place = f" — {esc(c.place)}" if c.place else ""
            mark = " ✓ cited" if c.cited else ""
            what = "✎ " if c.reviewed else ""
            items.append(f"<li>[{c.n}] {what}{esc(c.source)}{place} · score {c.score:.4f}{mark}"
                         f"<div class='lc-snippet'>{esc(c.snippet)}</div></li>")
        rows.append(f"<ol class='lc-citations'>{''.join(items)}</ol>")
    rows.append("<p><b>Feedback</b></p>")
    verdicts = []
    for f in feedback:
        rating = {"up": "👍", "down": "👎"}.get(f.rating or "", "")
        by = f" by {esc(f.user)}" if f.user else ""
        corr = f"<div class='lc-correction'>✎ {esc(f.correction)}</div>" if f.correction else ""
        note = f"<div>💬 {esc(f.comment)}</div>" if f.comment else ""
        verdicts.append(f"<li>#{f.id} {rating} {esc(_when(f.created_at.isoformat()))}{by}"
                        f"{corr}{note}</li>")
    rows.append(f"<ul class='lc-feedback'>{''.join(verdicts)}</ul>" if verdicts
                else "<p><i>None yet.</i></p>")
    return "".join(rows)


def _pair(metrics: dict[str, Any], key: str, digits: int = 2) -> str:
    base, adapter = (metrics.get(side, {}).get(key) for side in ("base", "adapter"))
    if base is None and adapter is None:
        return "–"
    return f"{_num(base, digits)} → {_num(adapter, digits)}"


def versions_table(versions: list[Any]) -> list[list[Any]]:
    """Model versions, each with its eval figures (base → adapter on the run's test split)."""
    out = []
    for v in versions:
        m = v.metrics or {}
        sft = (v.dataset or {}).get("sft") or {}
        out.append(["●" if v.active else "", v.name, v.status, v.run, v.trainer,
                    sft.get("train", "–"), _pair(m, "quality", 3), _pair(m, "answer_f1"),
                    _pair(m, "key_fact_recall"), _pair(m, "loss", 3), _when(v.created_at)])
    return out


def retrieval_table(versions: list[Any]) -> list[list[Any]]:
    out = []
    for v in versions:
        gate = (v.metrics or {}).get("gate") or {}
        ndcg = (f"{_num(gate.get('ndcg_served'), 3)} → {_num(gate.get('ndcg_candidate'), 3)}"
                if gate.get("ndcg_candidate") is not None else "–")
        out.append(["●" if v.active else "", v.name, v.status, v.embedder, ndcg,
                    gate.get("test_questions", "–"), _when(v.created_at)])
    return out


def monitoring_table(rows: list[Any]) -> list[list[Any]]:
    return [[r.day or "all days", r.model, r.collection, r.answers, _pct(r.up_rate),
             _pct(r.correction_rate), _pct(r.not_found_rate), _num(r.latency_mean_s),
             _num(r.latency_max_s), r.rated, r.timed] for r in rows]


def monitoring_figure(rows: list[Any]) -> Any:
    """Four panels over the days, one line per model and collection: 👍 rate, correction rate,
    "not found" rate and mean latency."""
    from datetime import date

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 6), dpi=90, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2, sharex=True)
    panels = [("up_rate", "thumbs-up rate (of the rated)", 100), ("correction_rate", "correction rate", 100),
              ("not_found_rate", '"not found" rate', 100), ("latency_mean_s", "mean latency", 1)]
    series: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        series.setdefault((r.model, r.collection), []).append(r)
    for ax, (field, title, scale) in zip(axes.flat, panels, strict=True):
        for (model, collection), points in sorted(series.items()):
            xs = [date.fromisoformat(p.day) for p in points if getattr(p, field) is not None]
            ys = [getattr(p, field) * scale for p in points if getattr(p, field) is not None]
            ax.plot(xs, ys, marker="o", label=f"{model} · {collection}")
        ax.set_title(title)
        ax.set_ylabel("%" if scale == 100 else "s")
        ax.grid(True, alpha=0.3)
        ax.tick_params(axis="x", labelrotation=30)
    if series:
        axes.flat[0].legend(fontsize="small")
    return figure


def loss_plot(run_dir: Path | None) -> Any:
    """The run's loss curve (train/loss.json, written as it trains); None before its first log."""
    from finetune.artifacts import LossHistory, RunLayout
    from finetune.train import loss_figure

    if run_dir is None:
        return None
    layout = RunLayout(run_dir)
    if not layout.loss_json.is_file():
        return None
    history = LossHistory.read(layout.loss_json, "train the run again")
    return loss_figure(history, title=f"{layout.name} · loss")


def eval_summary(run_dir: Path | None) -> str:
    from finetune.artifacts import RunLayout

    if run_dir is None:
        return ""
    layout = RunLayout(run_dir)
    if not layout.eval_json.is_file():
        return f"`{layout.name}`: not evaluated yet."
    return layout.read_eval().summary()


# --- a command in its own process (a fine-tune run, a model pull) ---------------------------------

class CommandJob:
    """A `localcat` command (``argv``: python -m localcat ...) in a process of its own, so the
    page stays responsive. Its output is kept for the page to show, progress bars included: a
    carriage return replaces the line, as in a terminal. ``title`` names it in the status line."""

    MAX_LINES = 400

    def __init__(self, argv: list[str], env: Mapping[str, str], title: str):
        self.argv = argv
        self.title = title
        self.started = time.monotonic()
        self.ended: float | None = None
        self.stopped = False
        self._lines: list[str] = []
        self._current = ""
        self._overwrite = False
        self._lock = threading.Lock()
        # A session of its own: Stop ends the run and whatever it started, nothing else.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=dict(env),
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, name="localcat-job-output",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(1 << 16):
            self._feed(decoder.decode(chunk))
        self._feed(decoder.decode(b"", final=True) + "\n")
        self.proc.wait()
        self.ended = time.monotonic()

    def _feed(self, text: str) -> None:
        with self._lock:
            for part in re.split(r"(\r\n|\r|\n)", text):
                if part in ("\n", "\r\n"):
                    if self._current:
                        self._lines.append(self._current)
                    self._current, self._overwrite = "", False
                elif part == "\r":
                    self._overwrite = True
                elif part:
                    self._current = part if self._overwrite else self._current + part
                    self._overwrite = False
            del self._lines[:-self.MAX_LINES]

    @property
    def command_line(self) -> str:
        """The command as typed: ``$ localcat finetune run ...``."""
        return "$ localcat " + " ".join(self.argv[3:]) + "\n"

    @property
    def running(self) -> bool:
        return self.ended is None

    @property
    def returncode(self) -> int | None:
        return None if self.running else self.proc.returncode

    def output(self) -> str:
        with self._lock:
            return "\n".join([*self._lines, *([self._current] if self._current else [])])

    def last_line(self) -> str:
        with self._lock:
            return self._current or (self._lines[-1] if self._lines else "")

    def status(self) -> str:
        seconds = (self.ended or time.monotonic()) - self.started
        took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
        if self.running:
            return f"⏳ {self.title} is running ({took})."
        if self.stopped:
            return f"⏹ {self.title} was stopped after {took}."
        if self.returncode == 0:
            return f"✅ {self.title} finished in {took}: {self.last_line()}"
        return f"❌ {self.title} failed after {took} (exit {self.returncode}): {self.last_line()}"

    def stop(self, wait_s: float = 10) -> None:
        """End the command (SIGTERM, then SIGKILL after ``wait_s``): a run's checkpoints stay, a
        pull removes its temporary files."""
        if not self.running:
            return
        self.stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._reader.join(wait_s)


class FinetuneJob(CommandJob):
    """`localcat finetune run` writing into ``run_dir``."""

    def __init__(self, argv: list[str], env: Mapping[str, str], run_dir: Path):
        super().__init__(argv, env, f"Run `{run_dir.name}`")
        self.run_dir = run_dir


def finetune_argv(run: str, *, steps: int | None = None, min_examples: int | None = None,
                  only: str = "both", collection: str | None = None, base: str | None = None,
                  force: bool = False, ollama: bool = True) -> list[str]:
    """The `localcat finetune run` command line the page starts."""
    argv = [sys.executable, "-m", "localcat", "finetune", "run", "--run", run]
    if steps:
        argv += ["--steps", str(int(steps))]
    if min_examples:
        argv += ["--min-examples", str(int(min_examples))]
    if only != "both":
        argv += ["--only", only]
    if collection and only != "generation":
        argv += ["--collection", collection]
    if base:
        argv += ["--base", base]
    if force:
        argv.append("--force")
    if not ollama:
        argv.append("--no-ollama")
    return argv


def finetune_env(settings: Any) -> dict[str, str]:
    """The server's environment, with the settings a command must share with it (the data folder
    and database) spelled out, in case they were given in code rather than by the environment."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LOCALCAT_DATA_DIR": str(settings.data_dir)}
    if settings.database.url:
        env["LOCALCAT_DATABASE__URL"] = settings.database.url
    return env


def list_runs(root: Path) -> list[str]:
    """Run folders, newest first."""
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return [p.name for p in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)]


# --- the tab --------------------------------------------------------------------------------------

ADMIN_CSS = """
.lc-meta { color: var(--body-text-color-subdued); font-size: 0.9em; }
.lc-answer { white-space: pre-wrap; border-left: 3px solid var(--color-accent); padding-left: 8px; }
.lc-snippet { color: var(--body-text-color-subdued); font-size: 0.85em; white-space: pre-wrap; }
.lc-correction { white-space: pre-wrap; }
"""


class AdminGate:
    """Whether the caller behind a page request is an admin, and the admin behind it."""

    def __init__(self, callers: Callable[[Any], Any]):
        self.callers = callers

    def is_admin(self, request: Any) -> bool:
        try:
            return self.callers(request).role == "admin"
        except LocalCatError:
            return False

    def require(self, request: Any, what: str) -> Any:
        """The admin behind ``request``, or a ``gr.Error`` saying why they may not do ``what``."""
        import gradio as gr

        try:
            p = self.callers(request)
            p.require_admin(what)
        except LocalCatError as err:  # not an admin, or an unknown or revoked key
            raise gr.Error(str(err), title=type(err).__name__) from err
        return p


def export_folder() -> Path:
    """A new folder for one export, in Gradio's cache under an unguessable name."""
    import secrets

    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder()) / f"{EXPORTS}{secrets.token_hex(16)}"
    folder.mkdir(parents=True)
    return folder


def build_admin(uc: Any, callers: Callable[[Any], Any]) -> tuple[Any, Callable[..., Any], list]:
    """Lay out the Admin tab inside the page's ``gr.Tabs``; returns the tab, and the page-load
    handler that shows it to admins only with its outputs."""
    import gradio as gr
    import pandas as pd

    from core.acts import FeedbackFilter
    from ui.app import _warn

    container = uc.parts.container
    settings = container.settings
    runs_root = settings.data_dir / "finetune"
    jobs: dict[str, FinetuneJob | None] = {"current": None}

    gate = AdminGate(callers)
    is_admin, require_admin = gate.is_admin, gate.require

    def log(p: Any, action: str, target: str | None = None) -> None:
        uc.parts.audit(p, action, target)

    def acting(request: Any, act: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run use case ``act`` as the caller; its refusal becomes the page's error."""
        try:
            return act(callers(request), *args, **kwargs)
        except LocalCatError as err:
            raise gr.Error(str(err), title=type(err).__name__) from err

    def frame(rows: list[list[Any]], headers: list[str]) -> Any:
        return pd.DataFrame(rows, columns=headers)

    def pick(value: str | None) -> str | None:
        return None if value in (None, "", ALL) else value

    # --- feedback ---------------------------------------------------------------------------------

    def feedback_list(rating, collection, model, latest_only, request: gr.Request):
        rows = acting(request, uc.recent_feedback, FeedbackFilter(
            latest_only, pick(rating), pick(collection), pick(model)))
        facets = container.feedback.answer_facets()
        return (frame(feedback_table(rows), FEEDBACK_HEADERS),
                gr.Dropdown(choices=[ALL, *facets["collections"]]),
                gr.Dropdown(choices=[ALL, *facets["models"]]),
                f"{len(rows)} row(s){' (the newest 200)' if len(rows) == 200 else ''}.")

    def open_snapshot(answer_id: str, request: gr.Request):
        require_admin(request, "read all feedback")
        try:
            answer, verdicts = uc.answer_snapshot(callers(request), (answer_id or "").strip())
        except LocalCatError as err:
            return _warn(err)
        return snapshot_html(answer, verdicts)

    def select_feedback(evt: gr.SelectData, request: gr.Request):
        row = evt.row_value or []
        if len(row) < len(FEEDBACK_HEADERS):
            return gr.skip(), gr.skip()
        return row[-1], open_snapshot(row[-1], request)

    def export(rating, collection, model, latest_only, request: gr.Request):
        import json

        rows = acting(request, uc.export_feedback, FeedbackFilter(
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

    def reviewed_list(revoked: bool, request: gr.Request):
        rows = acting(request, uc.reviewed, revoked=revoked)
        pending = acting(request, uc.reviewed, pending=True)
        return frame(reviewed_table(pending + rows), REVIEWED_HEADERS)

    def select_reviewed(evt: gr.SelectData, request: gr.Request):
        require_admin(request, "list reviewed answers")
        row = evt.row_value or []
        return row[0] if row else gr.skip()

    def judge(action: str, done: str):
        def handler(reviewed_id, revoked: bool, request: gr.Request):
            require_admin(request, f"{action} reviewed answers")
            if not reviewed_id:
                gr.Warning("Pick a reviewed answer first (click its row).")
                return gr.skip(), gr.skip()
            try:
                row = uc.judge_reviewed(callers(request), int(reviewed_id), action)
            except LocalCatError as err:
                return gr.skip(), _warn(err)
            return reviewed_list(revoked, request), f"{done} reviewed answer #{row.id}."
        return handler

    # --- model versions ---------------------------------------------------------------------------

    def versions(request: gr.Request):
        listed = acting(request, uc.model_versions)
        serving = next((v.name for v in listed if v.active), "base")
        return (frame(versions_table(listed), VERSION_HEADERS),
                gr.Dropdown(choices=["base", *[v.name for v in listed]], value=serving),
                f"Serving **{serving}**" + ("" if serving != "base" else " (no adapter)") + ".")

    def switch(action: str):
        def handler(name: str | None, request: gr.Request):
            require_admin(request, "switch models")
            try:
                serving = (uc.use_model(callers(request), name) if action == "use"
                           else uc.rollback_model(callers(request)))
            except LocalCatError as err:
                return gr.skip(), gr.skip(), _warn(err)
            table, choices, _ = versions(request)
            return table, choices, f"Serving **{serving}** from the next answer on."
        return handler

    # --- retrieval versions -----------------------------------------------------------------------

    def retrieval(collection: str | None, request: gr.Request):
        require_admin(request, "list retrieval versions")
        names = [c["name"] for c in container.store.collections()]
        collection = collection if collection in names else (
            settings.chroma.collection if settings.chroma.collection in names or not names
            else names[0])
        if collection not in names:
            return (gr.Dropdown(choices=names, value=None), frame([], RETRIEVAL_HEADERS),
                    gr.Dropdown(choices=[], value=None))
        listed = acting(request, uc.retrieval_versions, collection)
        serving = next((v.name for v in listed if v.active), None)
        return (gr.Dropdown(choices=names, value=collection),
                frame(retrieval_table(listed), RETRIEVAL_HEADERS),
                gr.Dropdown(choices=[v.name for v in listed if v.status == "ready"] or
                            [v.name for v in listed], value=serving))

    def retrieval_switch(action: str):
        def handler(collection: str | None, version: str | None, request: gr.Request):
            require_admin(request, "switch retrieval versions")
            try:
                if not collection:
                    raise LocalCatError("No collection picked", "pick one first")
                who = callers(request)
                v = (uc.use_retrieval(who, collection, version or "r0") if action == "use"
                     else uc.rollback_retrieval(who, collection))
            except LocalCatError as err:
                return gr.skip(), gr.skip(), gr.skip(), _warn(err)
            return (*retrieval(collection, request),
                    f"Serving retrieval {v.name} on {collection!r}.")
        return handler

    # --- monitoring -------------------------------------------------------------------------------

    def monitoring(days, model, collection, request: gr.Request):
        require_admin(request, "read the monitoring figures")
        try:
            out = uc.monitoring(callers(request), int(days or 30), model=pick(model),
                                collection=pick(collection))
        except LocalCatError as err:
            return gr.skip(), gr.skip(), gr.skip(), _warn(err)
        since, rows, totals = out["since"], out["days"], out["totals"]
        return (frame(monitoring_table(totals), MONITORING_HEADERS),
                frame(monitoring_table(rows), MONITORING_HEADERS),
                monitoring_figure(rows) if rows else None,
                f"Since {since} (UTC): {sum(t.answers for t in totals)} answer(s).")

    # --- fine-tune --------------------------------------------------------------------------------

    def run_dir(name: str | None) -> Path | None:
        return runs_root / name if name and (runs_root / name).is_dir() else None

    def runs_choices(value: str | None = None):
        names = list_runs(runs_root)
        return gr.Dropdown(choices=names, value=value if value in names else
                           (names[0] if names else None))

    def show_run(name: str | None, request: gr.Request):
        require_admin(request, "read fine-tune runs")
        path = run_dir(name)
        try:
            return loss_plot(path), eval_summary(path)
        except LocalCatError as err:
            return None, _warn(err)

    def start(steps, min_examples, only, collection, base, force, ollama,
              request: gr.Request):
        from finetune.dataset import new_run_name

        p = require_admin(request, "start fine-tune runs")
        job = jobs["current"]
        if job is not None and job.running:
            gr.Warning(f"Run {job.run_dir.name} is still running: stop it first.")
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        name = new_run_name()
        n = 1
        while (runs_root / name).exists():
            n += 1
            name = f"{new_run_name()}-{n}"
        argv = finetune_argv(name, steps=steps, min_examples=min_examples, only=only,
                             collection=collection, base=(base or "").strip() or None,
                             force=force, ollama=ollama)
        job = jobs["current"] = FinetuneJob(argv, finetune_env(settings), runs_root / name)
        log(p, "finetune.run", name)
        return (job.command_line, job.status(), gr.Timer(active=True),
                runs_choices(None))

    def stop(request: gr.Request):
        require_admin(request, "stop fine-tune runs")
        job = jobs["current"]
        if job is None or not job.running:
            gr.Warning("No run is running.")
            return gr.skip()
        job.stop()
        return job.status()

    def tick(drawn: float, request: gr.Request):
        require_admin(request, "follow fine-tune runs")
        job = jobs["current"]
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
        return (header + job.output(), job.status(), plot, mtime, runs_choices(job.run_dir.name),
                gr.Timer(active=False), *versions(request))

    # --- layout -----------------------------------------------------------------------------------

    with gr.Tab("Admin", id="admin", elem_id="admin-tab", visible=False) as tab:
        # Here, not in the Fine-tune tab: a run is followed whichever admin tab is open.
        timer = gr.Timer(1.0, active=False)
        t_drawn = gr.State(0.0)
        with gr.Tabs():
            with gr.Tab("Feedback", id="admin-feedback"):
                with gr.Row():
                    f_rating = gr.Dropdown(RATINGS, value=ALL, label="Rating",
                                           elem_id="fb-rating")
                    f_collection = gr.Dropdown([ALL], value=ALL, label="Collection",
                                               elem_id="fb-collection")
                    f_model = gr.Dropdown([ALL], value=ALL, label="Model", elem_id="fb-model")
                    f_latest = gr.Checkbox(True, label="Each answer's latest verdict only",
                                           elem_id="fb-latest")
                with gr.Row():
                    f_refresh = gr.Button("🔄 Refresh", elem_id="fb-refresh", size="sm")
                    f_export = gr.Button("⬇ Export JSONL", elem_id="fb-export", size="sm")
                f_count = gr.Markdown("", elem_id="fb-count")
                f_file = gr.File(label="Export", elem_id="fb-file", visible=False)
                f_table = gr.Dataframe(headers=FEEDBACK_HEADERS, interactive=False, wrap=True,
                                       elem_id="fb-table", max_height=420)
                with gr.Row():
                    f_answer = gr.Textbox(label="Answer id", elem_id="fb-answer-id", scale=4,
                                          placeholder="click a row, or paste an answer id")
                    f_open = gr.Button("Open snapshot", elem_id="fb-open", scale=1, size="sm")
                f_snapshot = gr.HTML("", elem_id="fb-snapshot", css_template=ADMIN_CSS)

                gr.Markdown("### Reviewed answers (corrections served to questions that mean the "
                            "same; a user's waits, pending, until an admin approves it)")
                with gr.Row():
                    r_revoked = gr.Checkbox(False, label="Include revoked",
                                            elem_id="rv-revoked")
                    r_refresh = gr.Button("🔄 Refresh", elem_id="rv-refresh", size="sm")
                r_table = gr.Dataframe(headers=REVIEWED_HEADERS, interactive=False, wrap=True,
                                       elem_id="rv-table", max_height=320)
                with gr.Row():
                    r_id = gr.Number(label="Reviewed answer #", precision=0, elem_id="rv-id")
                    r_approve = gr.Button("Approve", variant="primary", elem_id="rv-approve",
                                          size="sm")
                    r_reject = gr.Button("Reject", elem_id="rv-reject", size="sm")
                    r_revoke = gr.Button("Revoke", variant="stop", elem_id="rv-revoke",
                                         size="sm")
                r_status = gr.Markdown("", elem_id="rv-status")

            with gr.Tab("Fine-tune", id="admin-finetune"):
                with gr.Row():
                    t_steps = gr.Number(label="Steps (empty: epochs decide)", precision=0,
                                        elem_id="ft-steps")
                    t_min = gr.Number(label="Fewest training examples (empty: settings)",
                                      precision=0, elem_id="ft-min-examples")
                    t_only = gr.Radio(FINETUNE_ONLY, value="both", label="Parts",
                                      elem_id="ft-only")
                    t_collection = gr.Dropdown([], label="Collection (retrieval part)",
                                               allow_custom_value=True, elem_id="ft-collection")
                with gr.Row():
                    t_base = gr.Textbox(label="Base (empty: settings / the served model)",
                                        elem_id="ft-base")
                    t_force = gr.Checkbox(False, label="--force (register even without a "
                                          "clear gain)", elem_id="ft-force")
                    t_ollama = gr.Checkbox(True, label="Also create it in Ollama when one answers",
                                           elem_id="ft-ollama")
                with gr.Row():
                    t_start = gr.Button("▶ Start a run", variant="primary", elem_id="ft-start")
                    t_stop = gr.Button("⏹ Stop", variant="stop", elem_id="ft-stop")
                t_status = gr.Markdown("", elem_id="ft-status")
                t_log = gr.Textbox(label="Output", lines=12, max_lines=12, autoscroll=True,
                                   interactive=False, elem_id="ft-log")
                with gr.Row():
                    t_runs = gr.Dropdown([], label="Run", elem_id="ft-runs", scale=3)
                    t_runs_refresh = gr.Button("🔄", elem_id="ft-runs-refresh", scale=0,
                                               size="sm")
                t_plot = gr.Plot(label="Loss", elem_id="ft-loss")
                t_eval = gr.Markdown("", elem_id="ft-eval")

                gr.Markdown("### Model versions (eval on each run's held-out test split)")
                v_table = gr.Dataframe(headers=VERSION_HEADERS, interactive=False, wrap=True,
                                       elem_id="mv-table")
                with gr.Row():
                    v_pick = gr.Dropdown(["base"], value="base", label="Version",
                                         elem_id="mv-pick", scale=2)
                    v_use = gr.Button("Serve this version", variant="primary",
                                      elem_id="mv-use", scale=1)
                    v_rollback = gr.Button("↩ Roll back", elem_id="mv-rollback", scale=1)
                v_status = gr.Markdown("", elem_id="mv-status")

                gr.Markdown("### Retrieval versions (learned embedders of a collection)")
                with gr.Row():
                    rv_collection = gr.Dropdown([], label="Collection", elem_id="rt-collection",
                                                scale=2)
                    rv_pick = gr.Dropdown([], label="Version", elem_id="rt-pick", scale=2)
                    rv_use = gr.Button("Serve this version", elem_id="rt-use", scale=1)
                    rv_rollback = gr.Button("↩ Roll back", elem_id="rt-rollback", scale=1)
                rv_table = gr.Dataframe(headers=RETRIEVAL_HEADERS, interactive=False, wrap=True,
                                        elem_id="rt-table")
                rv_status = gr.Markdown("", elem_id="rt-status")

            with gr.Tab("Monitoring", id="admin-monitoring"):
                with gr.Row():
                    m_days = gr.Number(30, label="Days", precision=0, elem_id="mon-days")
                    m_model = gr.Dropdown([ALL], value=ALL, label="Model", elem_id="mon-model")
                    m_collection = gr.Dropdown([ALL], value=ALL, label="Collection",
                                               elem_id="mon-collection")
                    m_refresh = gr.Button("🔄 Refresh", elem_id="mon-refresh", size="sm")
                m_summary = gr.Markdown("", elem_id="mon-summary")
                gr.Markdown("Totals per model and collection")
                m_totals = gr.Dataframe(headers=MONITORING_HEADERS, interactive=False,
                                        elem_id="mon-totals")
                m_plot = gr.Plot(label="Over time", elem_id="mon-plot")
                gr.Markdown("Per day")
                m_days_table = gr.Dataframe(headers=MONITORING_HEADERS, interactive=False,
                                            elem_id="mon-days-table", max_height=360)

    # --- events (hidden from the API docs; each handler checks the caller is an admin) ---------

    def on(triggers, fn, inputs, outputs, **kw):
        return gr.on(triggers, fn, inputs, outputs, api_visibility="undocumented", **kw)

    f_inputs = [f_rating, f_collection, f_model, f_latest]
    f_outputs = [f_table, f_collection, f_model, f_count]
    on([tab.select, f_refresh.click, f_rating.input, f_collection.input, f_model.input,
        f_latest.input], feedback_list, f_inputs, f_outputs)
    on([f_open.click, f_answer.submit], open_snapshot, [f_answer], [f_snapshot])
    on([f_table.select], select_feedback, None, [f_answer, f_snapshot])
    on([f_export.click], export, f_inputs, [f_file, f_count])

    on([tab.select, r_refresh.click, r_revoked.input], reviewed_list, [r_revoked], [r_table])
    on([r_table.select], select_reviewed, None, [r_id])
    for button, action, done in ((r_revoke, "revoke", "Revoked"), (r_approve, "approve", "Approved"),
                                 (r_reject, "reject", "Rejected")):
        on([button.click], judge(action, done), [r_id, r_revoked], [r_table, r_status],
           api_name=action)

    def facets(request: gr.Request):
        require_admin(request, "read the monitoring figures")
        f = container.feedback.answer_facets()
        names = [c["name"] for c in container.store.collections()]
        return (gr.Dropdown(choices=[ALL, *f["models"]]),
                gr.Dropdown(choices=[ALL, *f["collections"]]),
                gr.Dropdown(choices=names, value=settings.chroma.collection
                            if settings.chroma.collection in names else None))

    on([tab.select], facets, None, [m_model, m_collection, t_collection])
    m_inputs = [m_days, m_model, m_collection]
    on([tab.select, m_refresh.click, m_model.input, m_collection.input, m_days.submit],
       monitoring, m_inputs, [m_totals, m_days_table, m_plot, m_summary])

    on([tab.select], versions, None, [v_table, v_pick, v_status])
    on([v_use.click], switch("use"), [v_pick], [v_table, v_pick, v_status])
    on([v_rollback.click], switch("rollback"), [v_pick], [v_table, v_pick, v_status])

    on([tab.select, rv_collection.input], retrieval, [rv_collection],
       [rv_collection, rv_table, rv_pick])
    on([rv_use.click], retrieval_switch("use"), [rv_collection, rv_pick],
       [rv_collection, rv_table, rv_pick, rv_status])
    on([rv_rollback.click], retrieval_switch("rollback"), [rv_collection, rv_pick],
       [rv_collection, rv_table, rv_pick, rv_status])

    def runs_refresh(name: str | None, request: gr.Request):
        require_admin(request, "read fine-tune runs")
        return runs_choices(name)

    on([tab.select, t_runs_refresh.click], runs_refresh, [t_runs], [t_runs])
    on([t_runs.change], show_run, [t_runs], [t_plot, t_eval])
    on([t_start.click], start,
       [t_steps, t_min, t_only, t_collection, t_base, t_force, t_ollama],
       [t_log, t_status, timer, t_runs])
    on([t_stop.click], stop, None, [t_status])
    on([timer.tick], tick, [t_drawn],
       [t_log, t_status, t_plot, t_drawn, t_runs, timer, v_table, v_pick, v_status])

    def on_load(request: gr.Request):
        """Show the tab to admins; pick up a run that is going on."""
        if not is_admin(request):
            return gr.Tab(visible=False), gr.skip()
        job = jobs["current"]
        return gr.Tab(visible=True), gr.Timer(active=job is not None and job.running)

    return tab, on_load, [tab, timer]

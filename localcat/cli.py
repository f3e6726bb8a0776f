"""The `localcat` command."""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from core.clikit import LazyGroup, parts
from core.errors import ConfigError, LocalCatError


def container():
    from localcat.container import Container

    return Container()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="localcat")
@click.option("--verbose", "-v", is_flag=True,
              help="Show third-party logs, warnings and progress bars (hidden by default).")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """LocalCat: a self-hosted assistant over your own documents.

    \b
      localcat ingest samples/             # index documents
      localcat ask "How many vacation days do I get?"
      localcat chat                        # interactive, with history

    Settings come from ./localcat.toml and LOCALCAT_* variables (see `localcat config`).
    """
    from core.logs import quiet_third_party

    if verbose:  # in the environment, so worker processes and servers see it too
        os.environ["LOCALCAT_VERBOSE"] = "1"
    quiet_third_party(verbose or os.environ.get("LOCALCAT_VERBOSE", "").lower() in ("1", "true"))
    # One container per command, built on first use; stage commands take it via clikit.parts().
    ctx.obj = functools.cache(container)
    # Parse workers stop with the command (a built container only: never build one to close it).
    ctx.call_on_close(lambda: ctx.obj.cache_info().currsize and ctx.obj().close())


def _collection_option(f):
    return click.option("--collection", "-c", default=None,
                        help="Collection to use (default: settings' chroma.collection).")(f)


def _print_sources(citations, out=sys.stdout) -> None:
    if not citations:
        return
    click.echo("\nSources:", file=out)
    for c in citations:
        mark = "*" if c.cited else " "
        click.echo(f" {mark}[{c.n}] {c.location}  (score {c.score:.4f})", file=out)
        if c.sentences:
            which = ", ".join(str(i + 1) for i in c.sentences)
            click.echo(f"      cited by sentence{'s' if len(c.sentences) > 1 else ''} {which}",
                       file=out)
        click.echo(f"      {c.snippet[:160]}", file=out)


FLAG = "[?]"  # where a sentence no shown source supports would carry its [n]


def render_answer(answer) -> str:
    """The answer with its [n] marks highlighted and unsupported sentences dimmed and flagged.

    The styles are ANSI codes, which click.echo drops when the output is not a terminal."""
    from assistant.citations import MARK, insert_mark

    def marks(text: str) -> str:
        return MARK.sub(lambda m: click.style(m.group(0), fg="cyan", bold=True), text)

    out, pos = [], 0
    for s in answer.sentences:
        out.append(marks(answer.answer[pos:s.start]))
        if s.supported:
            out.append(marks(s.text))
        else:
            out.append(click.style(insert_mark(s.text, FLAG), dim=True))
        pos = s.end
    out.append(marks(answer.answer[pos:]))
    return "".join(out)


def _print_unsupported(answer) -> None:
    flagged = [i + 1 for i, s in enumerate(answer.sentences) if not s.supported]
    if flagged:
        which = ", ".join(map(str, flagged))
        click.echo(f"\n{FLAG} No shown source supports sentence{'s' if len(flagged) > 1 else ''} "
                   f"{which} of {len(answer.sentences)}.")


class _LiveAnswer:
    """Tokens as the model writes them (on a terminal), replaced by the checked answer at the end.

    Off a terminal only the final answer is printed: a pipe gets the text once, marks included.
    """

    def __init__(self, prefix: str = ""):
        self.live = sys.stdout.isatty()
        self.prefix = prefix
        self.shown = prefix
        if self.live and prefix:
            click.echo(prefix, nl=False)

    def token(self, text: str) -> None:
        if self.live:
            click.echo(text, nl=False)
            sys.stdout.flush()
            self.shown += text

    def finish(self, answer) -> None:
        if self.live:
            import shutil

            rows = _rows(self.shown)
            if rows < shutil.get_terminal_size().lines:
                # Back to the first streamed row, clear below it, write the checked answer there.
                click.echo("\r" + (f"\x1b[{rows - 1}A" if rows > 1 else "") + "\x1b[J", nl=False)
            else:  # its start scrolled away: the checked answer goes below instead
                click.echo("\n")
        click.echo(self.prefix + render_answer(answer))
        _print_unsupported(answer)
        _print_sources(answer.citations)


def _rows(text: str) -> int:
    """Terminal rows ``text`` took, counting wrapped lines and double-width characters."""
    import shutil
    import unicodedata

    width = max(shutil.get_terminal_size().columns, 1)
    rows = 0
    for line in text.split("\n"):
        cells = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in line)
        rows += max(1, -(-cells // width))
    return rows


@main.command()
@click.argument("question")
@_collection_option
@click.option("--model", "-m", default=None, help="Model name (Ollama runtime).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the answer, its sentences and sources as JSON.")
def ask(question: str, collection: str | None, model: str | None, as_json: bool) -> None:
    """Answer QUESTION from the ingested documents, with cited sources.

    Each sentence a source supports carries its [n]; a sentence no source supports is marked [?].

    Example: localcat ask "What is the per-diem for travel?" --collection handbook
    """
    from assistant.pipeline import Done, Token

    c = parts()
    pipeline = c.pipeline(collection, model)
    click.echo(f"[{pipeline.model_tag}]", err=True)
    live = None if as_json else _LiveAnswer()
    for event in pipeline.stream(question):
        if isinstance(event, Token) and live:
            live.token(event.text)
        elif isinstance(event, Done):
            if live:
                live.finish(event.answer)
            else:
                click.echo(event.answer.model_dump_json(indent=2))


@main.command()
@_collection_option
@click.option("--model", "-m", default=None, help="Model name (Ollama runtime).")
def chat(collection: str | None, model: str | None) -> None:
    """Chat in the terminal; follow-up questions use the conversation so far.

    Type /reset to forget the history, /quit (or Ctrl-D) to leave.
    """
    from assistant.pipeline import Done, Token
    from core.schemas import Message

    pipeline = parts().pipeline(collection, model)
    click.echo(f"LocalCat [{pipeline.model_tag}] on collection "
               f"{pipeline.retriever.collection!r}. /reset, /quit", err=True)
    history: list[Message] = []
    while True:
        try:
            question = click.prompt("you", prompt_suffix="> ").strip()
        except (EOFError, click.Abort):
            click.echo(err=True)
            return
        if question in ("/quit", "/exit"):
            return
        if question == "/reset":
            history.clear()
            continue
        if not question:
            continue
        live = _LiveAnswer("localcat> ")
        try:
            for event in pipeline.stream(question, history):
                if isinstance(event, Token):
                    live.token(event.text)
                elif isinstance(event, Done):
                    live.finish(event.answer)
                    history += [Message(role="user", content=question),
                                Message(role="assistant", content=event.answer.answer)]
        except LocalCatError as exc:  # keep the session alive: the runtime may come back
            from core.redact import redact

            click.secho(f"\nError: {redact(str(exc))}", fg="red", err=True)


@main.command()
@click.option("--host", default=None, help="Bind address (default: settings' server.host).")
@click.option("--port", "-p", type=int, default=None, help="Port (default: settings' server.port).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Worker processes; use a Chroma server (LOCALCAT_CHROMA__URL) with more than one.")
@click.option("--no-ui", is_flag=True, help="Serve the API only, without the Gradio page.")
def serve(host: str | None, port: int | None, workers: int, no_ui: bool) -> None:
    """Serve the API (OpenAI-compatible /v1/chat/completions, /api/...) and the chat page (/ui).

    Example: localcat serve --port 8080, then open http://127.0.0.1:8080/
    """
    import os

    import uvicorn

    from core.settings import Settings

    s = Settings()
    # Workers build their own app from the environment, so pass overrides through it.
    if host:
        os.environ["LOCALCAT_SERVER__HOST"] = host
    if port:
        os.environ["LOCALCAT_SERVER__PORT"] = str(port)
    if no_ui:
        os.environ["LOCALCAT_SERVER__UI"] = "false"
    host, port = host or s.server.host, port or s.server.port
    if workers > 1 and not s.chroma.url:
        raise ConfigError("Several workers cannot share the embedded Chroma store",
                          "run `chroma run` and set LOCALCAT_CHROMA__URL, or use --workers 1")
    from localcat.server import create_app, run

    app = create_app()  # fails fast on bad settings (e.g. no API keys off loopback)
    click.echo(f"LocalCat on http://{host}:{port}/  (API docs at /docs)", err=True)
    if workers == 1:
        run(app, host=host, port=port)
    else:
        # Each worker cancels its ingests at lifespan shutdown, after the grace period.
        uvicorn.run("localcat.server:app_factory", factory=True, host=host, port=port,
                    workers=workers, log_level="info",
                    timeout_graceful_shutdown=s.server.shutdown_timeout_s)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def config(as_json: bool) -> None:
    """Show the effective settings (defaults + localcat.toml + LOCALCAT_* variables)."""
    from core.settings import Settings

    data = _shown_settings(Settings().model_dump(mode="json"))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    def walk(d: dict, prefix: str = "") -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                click.echo(f"{prefix}{k} = {v!r}")
    walk(data)


def _shown_settings(value: object) -> object:
    """Settings as `localcat config` prints them: keys as one ``***`` each (their count shows),
    and every URL (database, Chroma, Ollama hosts, pip mirrors) without user-info or tokens."""
    from core.redact import redact

    if isinstance(value, dict):
        return {k: ["***"] * len(v) if k in ("api_keys", "user_keys") and isinstance(v, list)
                else _shown_settings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown_settings(v) for v in value]
    return redact(value) if isinstance(value, str) else value


def _finetune() -> click.Command:
    from finetune.cli import finetune
    from finetune.retrieval_cli import learn_command

    finetune.add_command(learn_command)
    return finetune


def _models() -> click.Command:
    from finetune.cli import models
    from localcat.models_cli import register_commands

    register_commands(models)
    return models


def _attr(module: str, name: str):
    """A loader of ``module.name``, imported when the command runs (or --help lists it)."""
    def load() -> click.Command:
        import importlib

        return getattr(importlib.import_module(module), name)
    return load


main.lazy.update({
    "ingest": _attr("ingest.cli", "ingest"),
    "remove": _attr("ingest.cli", "remove"),
    "watch": _attr("ingest.cli", "watch"),
    "collections": _attr("ingest.cli", "collections"),
    "eval": _attr("localcat.evaluation.command", "eval_command"),
    "finetune": _finetune,
    "models": _models,
    "retrieval": _attr("finetune.retrieval_cli", "retrieval"),
    "keys": _attr("localcat.keys_cli", "keys"),
    "audit": _attr("localcat.keys_cli", "audit"),
    "reviewed": _attr("localcat.reviewed_cli", "reviewed"),
})

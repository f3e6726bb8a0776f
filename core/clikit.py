"""What every LocalCat click command shares."""

from __future__ import annotations

from collections.abc import Callable

import click

from core.errors import LocalCatError
from core.redact import redact


class ErrorGroup(click.Group):
    """Turns LocalCat errors into one clear line and exit code 1 instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LocalCatError as exc:
            # Messages are redacted where they are made; this catches one that names a URL anyway.
            click.secho(f"Error: {redact(str(exc))}", fg="red", err=True)
            ctx.exit(1)


def parts():
    """The composition root's container for this command, as the ``localcat`` group set it.

    Stage commands (ingest, finetune) are registered into that group and take their parts from
    it instead of importing the composition root back (STYLE.md: three layers, no cycles).
    """
    ctx = click.get_current_context()
    factory = ctx.find_root().obj
    if not callable(factory):
        raise RuntimeError("run this command through the `localcat` command group")
    return factory()


class LazyGroup(ErrorGroup):
    """A group whose subcommands are imported when run: `localcat ingest` loads only the ingest
    stage's command, not every stage's (a re-ingest of unchanged files is mostly start-up)."""

    def __init__(self, *args, lazy: dict[str, Callable[[], click.Command]] | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            self.add_command(self.lazy.pop(name)(), name)
        return super().get_command(ctx, name)

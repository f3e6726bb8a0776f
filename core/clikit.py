"""What every LocalCat click command shares."""

from __future__ import annotations

import click

from core.errors import LocalCatError


class ErrorGroup(click.Group):
    """Turns LocalCat errors into one clear line and exit code 1 instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LocalCatError as exc:
            click.secho(f"Error: {exc}", fg="red", err=True)
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

"""What every LocalCat click command shares."""

from __future__ import annotations

import click

from assistant.errors import LocalCatError


class ErrorGroup(click.Group):
    """Turns LocalCat errors into one clear line and exit code 1 instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LocalCatError as exc:
            click.secho(f"Error: {exc}", fg="red", err=True)
            ctx.exit(1)

"""`localcat reviewed list|revoke`: the corrections served as answers to questions that mean the same."""

from __future__ import annotations

import json

import click

from core.clikit import parts


@click.group()
def reviewed() -> None:
    """Users' corrections, served first to questions that mean the same (retrieval.reviewed)."""


@reviewed.command("list")
@click.option("--collection", "-c", default=None, help="Only this collection's.")
@click.option("--all", "show_all", is_flag=True, help="Also the revoked and superseded ones.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_reviewed(collection: str | None, show_all: bool, as_json: bool) -> None:
    """List reviewed answers, newest first: number, collection, question, who, when."""
    rows = parts().feedback.reviewed(collection, revoked=show_all)
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    if not rows:
        click.echo("No reviewed answers yet: a correction (rating with `correction`) makes one.")
    for r in rows:
        state = f"  [revoked: {r.revoked_by}]" if r.revoked_at else ""
        click.echo(f"#{r.id}  {r.collection}  {r.created_at:%Y-%m-%d}  {r.user or 'anonymous'}  "
                   f"{r.question!r}{state}")
        click.echo(f"      → {' '.join(r.answer.split())[:100]}")


@reviewed.command()
@click.argument("number", type=int)
@click.option("--by", default=None, help="Who revokes it (kept with it).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def revoke(number: int, by: str | None, as_json: bool) -> None:
    """Stop serving reviewed answer NUMBER (see `localcat reviewed list`); it stays listed."""
    r = parts().feedback.revoke_reviewed(number, by=by or "localcat reviewed revoke")
    if as_json:
        click.echo(json.dumps(r.model_dump(mode="json"), indent=2))
    else:
        click.echo(f"Revoked #{r.id}: {r.question!r} is answered from the documents again.")

"""`localcat reviewed list|pending|approve|reject|revoke`: the corrections served as answers to
questions that mean the same."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from core.clikit import parts

if TYPE_CHECKING:  # the store's imports (SQLAlchemy) wait until a command runs
    from assistant.feedback import Reviewed


@click.group()
def reviewed() -> None:
    """Users' corrections, served first to questions that mean the same (retrieval.reviewed).

    An admin's correction is served to everyone at once; a user's waits for approval
    (`localcat reviewed pending`, then `approve N` or `reject N`) and meanwhile is served only
    to that user.
    """


def _echo(rows: list[Reviewed], as_json: bool, empty: str) -> None:
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    if not rows:
        click.echo(empty)
    for r in rows:
        state = f"  [revoked: {r.revoked_by}]" if r.revoked_at else f"  [{r.status}]"
        click.echo(f"#{r.id}  {r.collection}  {r.created_at:%Y-%m-%d}  {r.user or 'anonymous'}  "
                   f"{r.question!r}{state}")
        click.echo(f"      → {' '.join(r.answer.split())[:100]}")


def _echo_one(r: Reviewed, as_json: bool, message: str) -> None:
    click.echo(json.dumps(r.model_dump(mode="json"), indent=2) if as_json else message)


@reviewed.command("list")
@click.option("--collection", "-c", default=None, help="Only this collection's.")
@click.option("--all", "show_all", is_flag=True, help="Also the revoked and superseded ones.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_reviewed(collection: str | None, show_all: bool, as_json: bool) -> None:
    """List the approved reviewed answers, newest first: number, collection, question, who, when,
    status. Those awaiting approval: `localcat reviewed pending`."""
    rows = parts().feedback.reviewed(collection, revoked=show_all)
    _echo(rows, as_json, "No reviewed answers yet: a correction (rating with `correction`) "
          "makes one; a user's waits in `localcat reviewed pending` for approval.")


@reviewed.command()
@click.option("--collection", "-c", default=None, help="Only this collection's.")
@click.option("--all", "show_all", is_flag=True, help="Also the rejected ones.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def pending(collection: str | None, show_all: bool, as_json: bool) -> None:
    """List users' corrections awaiting approval, newest first; each is served only to its
    author until approved. Example: `localcat reviewed pending -c handbook`."""
    rows = parts().feedback.reviewed(collection, revoked=show_all, pending=True)
    _echo(rows, as_json, "No corrections await approval.")


def _judge(number: int, action: str, by: str | None) -> Reviewed:
    """The admin use case every edge shares (audited), as the machine's operator."""
    from localcat.usecases import Parts, UseCases, operator

    return UseCases(Parts(parts())).judge_reviewed(operator(by), number, action)


_BY = click.option("--by", default=None, help="Who does it, for the record and the audit log "
                   "(default: cli:<login name>).")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print as JSON.")


@reviewed.command()
@click.argument("number", type=int)
@_BY
@_JSON
def approve(number: int, by: str | None, as_json: bool) -> None:
    """Serve pending correction NUMBER to everyone (see `localcat reviewed pending`); it replaces
    the one served so far for the same question. Example: `localcat reviewed approve 12`."""
    r = _judge(number, "approve", by)
    _echo_one(r, as_json, f"Approved #{r.id}: {r.question!r} is answered with it for everyone.")


@reviewed.command()
@click.argument("number", type=int)
@_BY
@_JSON
def reject(number: int, by: str | None, as_json: bool) -> None:
    """Never serve pending correction NUMBER, not even to its author (see `localcat reviewed
    pending`); it stays listed with `pending --all`."""
    r = _judge(number, "reject", by)
    _echo_one(r, as_json, f"Rejected #{r.id}: it is served to no one.")


@reviewed.command()
@click.argument("number", type=int)
@_BY
@_JSON
def revoke(number: int, by: str | None, as_json: bool) -> None:
    """Stop serving reviewed answer NUMBER (see `localcat reviewed list`); it stays listed."""
    r = _judge(number, "revoke", by)
    _echo_one(r, as_json, f"Revoked #{r.id}: {r.question!r} is answered from the documents again.")

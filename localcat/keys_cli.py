"""`localcat keys add/list/revoke` and `localcat audit`: API keys with roles, and the audit log.

The commands work on the key store directly (data_dir/auth.sqlite or database.url), so whoever
runs them is an admin; a running server sees a new or revoked key within server.keys_poll_s.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import re

import click

from core.clikit import parts
from core.errors import BadRequest


def _actor() -> str:
    """Who ran the command, for the audit log."""
    user = "unknown"
    with contextlib.suppress(Exception):  # no login name (a container without /etc/passwd entry)
        user = getpass.getuser()
    return f"cli:{user}"


def _per_minute(value: str | None) -> int | None:
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:/\s*min(?:ute)?)?\s*", value)
    if not m:
        raise BadRequest(f"--rate-limit {value!r} is not a rate",
                         "give chats (and uploads) a minute, e.g. --rate-limit 30 or 30/min")
    return int(m.group(1))


@click.group()
def keys() -> None:
    """API keys with roles: `admin` (everything) or `user` (chat, upload, rate answers).

    \b
      localcat keys add alice --role user --collection handbook   # prints the key, once
      localcat keys list --json
      localcat keys revoke alice

    Only each key's sha256 is stored. Keys in the settings (server.api_keys: admin,
    server.user_keys: user) work too; any key, there or here, turns authentication on.
    """


@keys.command(name="add")
@click.argument("name")
@click.option("--role", type=click.Choice(["user", "admin"]), default="user", show_default=True)
@click.option("--collection", "-c", "collections", multiple=True,
              help="A collection the key may use (repeat for more); none given: every collection.")
@click.option("--rate-limit", default=None, metavar="N[/min]",
              help="Chats and uploads a minute for this key (default: server.chat_per_minute "
                   "and server.uploads_per_minute).")
@click.option("--json", "as_json", is_flag=True, help="Print the key and its settings as JSON.")
def keys_add(name: str, role: str, collections: tuple[str, ...], rate_limit: str | None,
             as_json: bool) -> None:
    """Make key NAME and print it. It is shown this once: only its hash is kept.

    Example: localcat keys add alice --role user --collection handbook --rate-limit 30/min
    """
    from core.chunkstore import check_collection_name

    store = parts().keys
    scope = [check_collection_name(x) for x in collections] or None
    key, secret = store.add(name, role, scope, _per_minute(rate_limit))
    store.audit(_actor(), "admin", "keys.add", name,
                {"role": role, "collections": key.collections, "per_minute": key.per_minute})
    if as_json:
        click.echo(json.dumps({**key.model_dump(), "key": secret}, indent=2))
        return
    click.echo(secret)
    where = ", ".join(key.collections) if key.collections else "every collection"
    click.echo(f"Key {name!r} ({role}, {where}) made. Store it now: it is not shown again.",
               err=True)


@keys.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def keys_list(as_json: bool) -> None:
    """List the keys made with `keys add`, revoked ones included (never the keys themselves)."""
    rows = parts().keys.keys()
    if as_json:
        click.echo(json.dumps([k.model_dump() for k in rows], indent=2))
        return
    if not rows:
        click.echo("No keys yet: `localcat keys add NAME --role user` makes one.")
        return
    for k in rows:
        where = ",".join(k.collections) if k.collections else "*"
        limit = f"{k.per_minute}/min" if k.per_minute else "default rate"
        state = f"revoked {k.revoked_at}" if k.revoked_at else "active"
        click.echo(f"{k.name:<24} {k.role:<5}  collections {where:<20} {limit:<12} "
                   f"created {k.created_at}  {state}")


@keys.command(name="revoke")
@click.argument("name")
def keys_revoke(name: str) -> None:
    """Revoke key NAME; running servers refuse it within server.keys_poll_s."""
    store = parts().keys
    key = store.revoke(name)
    store.audit(_actor(), "admin", "keys.revoke", name)
    click.echo(f"Revoked {name!r} at {key.revoked_at} UTC.")


@click.command()
@click.option("--limit", "-n", type=int, default=50, show_default=True, help="Newest entries shown.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def audit(limit: int, as_json: bool) -> None:
    """Show the audit log of admin actions, newest first: deleted collections, feedback exports,
    model switches, keys made and revoked.

    Example: localcat audit -n 20
    """
    entries = parts().keys.audit_log(limit)
    if as_json:
        click.echo(json.dumps([e.model_dump() for e in entries], indent=2))
        return
    if not entries:
        click.echo("No admin actions recorded yet.")
        return
    for e in entries:
        detail = f"  {json.dumps(e.detail)}" if e.detail else ""
        click.echo(f"{e.at}  {e.key_name or '(no key)'} ({e.role})  {e.action}"
                   f"{'  ' + e.target if e.target else ''}{detail}")

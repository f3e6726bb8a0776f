"""What every use case acts on and guards with: the container's parts, the key gate (rate limits,
audit) and the upload queue. The edges build one ``Parts`` and hand each call its caller."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from core.errors import BadRequest
from core.settings import Settings
from localcat.auth import Gate, Principal
from localcat.container import Container
from localcat.uploads import IngestQueue, Journal

Caller = Principal
"""Who is asking: a key's principal, or ``OPEN`` (a keyless loopback server, the local CLI)."""

def operator(name: str | None = None) -> Principal:
    """The CLI's caller: the machine's own operator, an admin over every collection, named in the
    audit log as ``cli:<login>`` (or ``name``)."""
    import contextlib
    import getpass

    login = "unknown"
    with contextlib.suppress(Exception):  # no login name (a container without a passwd entry)
        login = getpass.getuser()
    return Principal(name or f"cli:{login}", "admin", local=True)


@dataclass
class Parts:
    container: Container
    gate: Gate | None = None  # None: no keys to check (the CLI)
    ingests: IngestQueue | None = None  # None: ingest in this call, unqueued (the CLI)
    journal: Journal | None = None

    @property
    def settings(self) -> Settings:
        return self.container.settings

    def take(self, caller: Caller, kind: str) -> None:
        """Count a chat or an upload against the caller's per-minute limit (429 past it)."""
        if self.gate is not None:
            self.gate.take(caller, kind)

    def audit(self, caller: Caller, action: str, target: str | None = None,
              detail: dict[str, Any] | None = None) -> None:
        if self.gate is not None:
            self.gate.audit(caller, action, target, detail)
        elif caller.local:  # the CLI's admin acts land in the same log
            self.container.keys.audit(caller.name, caller.role, action, target, detail)


def check_length(what: str, text: str, limit: int, setting: str) -> str:
    if len(text) > limit:
        raise BadRequest(f"The {what} is {len(text):,} characters, more than the {limit:,} "
                         "allowed", f"shorten it, or ask an admin to raise {setting}")
    return text


def shown_source(source: str, uploads: PurePath | None = None) -> str:
    """A source path as users see it: an upload by its name, a file by its folder and name —
    never the server's absolute path."""
    path = PurePath(source)
    if not path.is_absolute():
        return source
    if uploads is not None and path.is_relative_to(uploads):
        return str(path.relative_to(uploads))
    return str(PurePath(*path.parts[-2:]))

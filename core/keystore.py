"""API keys with roles, and the audit log of admin actions.

A key is shown once, when it is made; only its sha256 is stored, so the database (or a copy of it)
gives no key away. ``data_dir/auth.sqlite`` by default, or the shared database (core/db.py). The
schema grows only by new revisions in core/migrations/auth/.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field

from core.db import Store, now_text
from core.errors import BadRequest

Role = Literal["admin", "user"]
ROLES: tuple[str, ...] = ("admin", "user")
KEY_PREFIX = "lc_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKey(BaseModel):
    """A key as stored: everything but the key itself."""

    name: str
    role: Role
    collections: list[str] | None = Field(None, description="Collections it may use; None: all.")
    per_minute: int | None = Field(None, description="Chats and uploads a minute, each; None: "
                                   "server.chat_per_minute / server.uploads_per_minute.")
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class AuditEntry(BaseModel):
    id: int
    at: str
    key_name: str | None
    role: str
    action: str
    target: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


# --- the tables as the code queries them; their history is core/migrations/auth/ ----------------

metadata = sa.MetaData()
keys_t = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("sha256", sa.Text, nullable=False, unique=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("collections", sa.Text),
    sa.Column("per_minute", sa.Integer),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("revoked_at", sa.Text),
)
audit_t = sa.Table(
    "audit_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", sa.Text, nullable=False),
    sa.Column("key_name", sa.Text),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("target", sa.Text),
    sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
)


def _key(row: Any) -> ApiKey:
    data = dict(row._mapping)
    data["collections"] = None if data["collections"] is None else json.loads(data["collections"])
    return ApiKey.model_validate({k: data[k] for k in ApiKey.model_fields})


class KeyStore(Store):
    """API keys and the audit log; safe across threads, processes and servers."""

    SCHEMA = "auth"
    KIND = "key store"

    def add(self, name: str, role: str, collections: list[str] | None = None,
            per_minute: int | None = None) -> tuple[ApiKey, str]:
        """Make a key; returns it with its text, which is never stored nor shown again."""
        if not _NAME.match(name or ""):
            raise BadRequest(f"Key name {name!r} is not usable",
                             "use 1-64 letters, digits, '.', '_', '@' or '-', starting with a "
                             "letter or digit")
        if role not in ROLES:
            raise BadRequest(f"Role {role!r} is not a role", "use --role user or --role admin")
        if per_minute is not None and per_minute < 1:
            raise BadRequest(f"--rate-limit {per_minute} allows nothing",
                             "give at least 1 (a minute), or leave it out for the settings' limits")
        if collections is not None:
            collections = sorted(set(collections))
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.transaction() as db:
            old = db.execute(sa.select(keys_t).where(keys_t.c.name == name)).first()
            if old is not None:
                state = f"revoked {old.revoked_at}" if old.revoked_at else "active"
                raise BadRequest(f"A key named {name!r} exists already ({state})",
                                 "choose another name (names stay taken after `localcat keys "
                                 "revoke`, so the audit log stays unambiguous)")
            db.execute(sa.insert(keys_t).values(
                name=name, sha256=key_hash(secret), role=role, per_minute=per_minute,
                collections=None if collections is None else json.dumps(collections),
                created_at=now_text()))
        return self.get(name), secret

    def revoke(self, name: str) -> ApiKey:
        with self.transaction() as db:
            row = db.execute(sa.select(keys_t).where(keys_t.c.name == name)).first()
            if row is None:
                raise BadRequest(f"No key named {name!r}", "see `localcat keys list`")
            if row.revoked_at is not None:
                raise BadRequest(f"Key {name!r} was revoked already ({row.revoked_at})",
                                 "see `localcat keys list`")
            db.execute(sa.update(keys_t).where(keys_t.c.name == name).values(revoked_at=now_text()))
        return self.get(name)

    def get(self, name: str) -> ApiKey:
        row = self.one(sa.select(keys_t).where(keys_t.c.name == name))
        if row is None:
            raise BadRequest(f"No key named {name!r}", "see `localcat keys list`")
        return _key(row)

    def keys(self) -> list[ApiKey]:
        """Every key made here, revoked ones included, oldest first."""
        return [_key(r) for r in self.all(sa.select(keys_t).order_by(keys_t.c.id))]

    def by_hash(self) -> dict[str, ApiKey]:
        """Every key (revoked ones too, to say so) by its sha256: what a server checks keys with."""
        return {r.sha256: _key(r) for r in self.all(sa.select(keys_t))}

    # --- the audit log ----------------------------------------------------------------------------

    def audit(self, key_name: str | None, role: str, action: str, target: str | None = None,
              detail: dict[str, Any] | None = None) -> None:
        with self.transaction() as db:
            db.execute(sa.insert(audit_t).values(
                at=now_text(), key_name=key_name, role=role, action=action, target=target,
                detail=json.dumps(detail or {}, ensure_ascii=False, default=str)))

    def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first."""
        query = sa.select(audit_t).order_by(audit_t.c.id.desc()).limit(limit)
        return [AuditEntry.model_validate({**r._mapping, "detail": json.loads(r.detail)})
                for r in self.all(query)]

"""Who is asking the server, and what they may do.

Keys come from the settings (``server.api_keys`` are admin keys, ``server.user_keys`` user keys)
and from the key store (`localcat keys add`, core/keystore.py), re-read every
``server.keys_poll_s`` so a key made or revoked on a running server counts at once. A user chats,
uploads, rates answers and reads their own feedback; an admin also deletes collections, exports
all feedback, switches models and reads the audit log, where each of those actions is written. A
key limited to some collections is refused (403) on any other. Chats and uploads are rate-limited
per key with token buckets in this process.
"""

from __future__ import annotations

import base64
import contextlib
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import Busy, Forbidden, Unauthorized
from core.settings import ServerSettings

ADMIN_FIX = ("use an admin key: one of server.api_keys, or one made with "
             "`localcat keys add NAME --role admin`")


@dataclass(frozen=True)
class Principal:
    """The key behind a request. ``name`` None: no key (a loopback server without any keys)."""

    name: str | None
    role: str
    collections: frozenset[str] | None = None  # None: every collection
    per_minute: int | None = None  # None: the settings' limits
    local: bool = False  # the machine's operator at the command line, not a key

    @property
    def label(self) -> str:
        if self.local:
            return f"{self.name} (command line)"
        return f"Key {self.name!r}" if self.name else "A request without a key"

    def require_admin(self, what: str) -> None:
        if self.role != "admin":
            raise Forbidden(f"{self.label} has role {self.role} and may not {what}", ADMIN_FIX)

    def may_use(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def require_collection(self, collection: str) -> None:
        if not self.may_use(collection):
            allowed = ", ".join(sorted(self.collections or ())) or "none"
            raise Forbidden(f"{self.label} may not use collection {collection!r} (it may use: "
                            f"{allowed})", "name one of those collections, or use a key made "
                            "without --collection")

    def require_every_collection(self, what: str) -> None:
        if self.collections is not None:
            raise Forbidden(f"{self.label} is limited to some collections and may not {what}",
                            "use the API (/v1/chat/completions with `collection`), or a key made "
                            "without --collection")


OPEN = Principal(None, "admin")
"""A loopback server with no keys anywhere is open, as before keys had roles."""


class RateLimited(Busy):
    """A key went over its chats or uploads a minute."""


class RateLimiter:
    """Token buckets per key and kind: ``per_minute`` tokens, refilled evenly over a minute, so a
    key may burst up to its limit and then goes at the limit's pace."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # → (tokens, at)

    def take(self, key: str, kind: str, per_minute: int, setting: str) -> None:
        if per_minute <= 0:
            return
        now = self._clock()
        rate = per_minute / 60.0
        with self._lock:
            tokens, at = self._buckets.get((key, kind), (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - at) * rate)
            if tokens < 1:
                self._buckets[(key, kind)] = (tokens, now)
                wait = max(1, math.ceil((1 - tokens) / rate))
                raise RateLimited(
                    f"Key {key!r} went over its {per_minute} {kind}s a minute",
                    f"retry in {wait} s (Retry-After), or ask an admin for a higher limit "
                    f"({setting}, or `localcat keys add NAME --rate-limit N` for one key)",
                    retry_after=wait)
            self._buckets[(key, kind)] = (tokens - 1, now)


class Gate:
    """Turns the key of a request into a ``Principal``; knows the keys of settings and store."""

    def __init__(self, settings: ServerSettings, keystore: Callable[[], Any],
                 store_exists: Callable[[], bool], *, loopback: bool,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self._keystore = keystore
        self._store_exists = store_exists
        self._loopback = loopback
        self._clock = clock
        self._configured = (
            [(k, Principal(f"api_keys[{i}]", "admin")) for i, k in enumerate(settings.api_keys)]
            + [(k, Principal(f"user_keys[{i}]", "user")) for i, k in enumerate(settings.user_keys)])
        self._stored: dict[str, Any] = {}  # sha256 → ApiKey, revoked ones too
        self._read_at = -math.inf
        self._lock = threading.Lock()
        self.limits = RateLimiter(clock)

    # --- the key store, read at most every keys_poll_s -------------------------------------------

    def stale(self) -> bool:
        return self._clock() - self._read_at >= self.settings.keys_poll_s

    def refresh(self) -> None:
        with self._lock:
            if not self.stale():
                return
            # No store file yet: no key was ever made here, and reading must not create one.
            self._stored = self._keystore().by_hash() if self._store_exists() else {}
            self._read_at = self._clock()

    def enabled(self) -> bool:
        """Whether requests need a key: some key is configured or active in the store."""
        if self.stale():
            self.refresh()
        return bool(self._configured) or any(k.active for k in self._stored.values())

    def identify(self, given: str | None) -> Principal:
        """The principal behind key ``given`` (None: no key sent); Unauthorized when it has none."""
        from core.keystore import key_hash

        if not self.enabled():
            if self._loopback:
                return OPEN
            raise Unauthorized(
                "This server has no API keys and is not bound to loopback, so it serves no one",
                "make one with `localcat keys add NAME --role admin`, or set "
                "LOCALCAT_SERVER__API_KEYS")
        if not given:
            raise Unauthorized("This server needs an API key", _SEND_KEY)
        found = None
        for key, principal in self._configured:  # each compared, in constant time
            if secrets.compare_digest(given.encode(), key.encode()):
                found = principal
        if found is not None:
            return found
        # A lookup by sha256 tells nothing about the key from its timing.
        stored = self._stored.get(key_hash(given))
        if stored is None:
            raise Unauthorized("Unknown API key", _SEND_KEY)
        if not stored.active:
            raise Unauthorized(f"API key {stored.name!r} was revoked at {stored.revoked_at} UTC",
                               "ask an admin for a new one (`localcat keys add NAME`)")
        return Principal(stored.name, stored.role,
                         None if stored.collections is None else frozenset(stored.collections),
                         stored.per_minute)

    # --- what a principal may do ------------------------------------------------------------------

    def take(self, principal: Principal, kind: str) -> None:
        """Count a chat, a rating or an upload against the key's limit; RateLimited (429) past it."""
        if principal.name is None:
            return
        # Ratings and corrections count at the chats' rate, in a bucket of their own.
        setting = {"chat": "server.chat_per_minute", "feedback": "server.chat_per_minute",
                   "upload": "server.uploads_per_minute"}[kind]
        limit = principal.per_minute or getattr(self.settings, setting.split(".")[1])
        self.limits.take(principal.name, kind, limit, setting)

    def audit(self, principal: Principal, action: str, target: str | None = None,
              detail: dict[str, Any] | None = None) -> None:
        self._keystore().audit(principal.name, principal.role, action, target, detail)


def request_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: Bearer, HTTP Basic (the key as password) or X-API-Key."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            return base64.b64decode(value.strip()).decode().partition(":")[2]
    return headers.get("x-api-key")


_SEND_KEY = ("send `Authorization: Bearer <key>` (or `X-API-Key: <key>`, or HTTP Basic with the "
             "key as password); an admin makes keys with `localcat keys add NAME --role user`")

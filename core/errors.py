"""One error family. Every message says what went wrong and how to fix it.

Edges translate these: the CLI prints the message and exits non-zero, the HTTP API maps ``status``
to a response code, the page raises ``gr.Error``. Nothing else catches them.
"""

from __future__ import annotations


class LocalCatError(Exception):
    """Base error: ``str(err)`` is the problem followed by the fix."""

    status: int = 500

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} — {fix}" if fix else problem)


class ConfigError(LocalCatError):
    status = 400


class MissingDependency(LocalCatError):
    """An optional heavy part is not installed."""

    status = 503

    def __init__(self, what: str, install: str):
        super().__init__(f"{what} is not installed", f"install it with `{install}`")


class RuntimeUnavailable(LocalCatError):
    """The model runtime (Ollama or the embedded model) cannot serve requests."""

    status = 503


class ModelNotFound(RuntimeUnavailable):
    status = 404


class StoreUnavailable(LocalCatError):
    """Chroma (embedded or server) cannot be opened or reached."""

    status = 503


class CollectionNotFound(LocalCatError):
    status = 404


class Unauthorized(LocalCatError):
    """No API key, or one this server does not know (or that was revoked)."""

    status = 401


class Forbidden(LocalCatError):
    """The key is known but its role or its collections do not allow this."""

    status = 403


class BadFile(LocalCatError):
    """A file that cannot be ingested; the batch goes on without it."""

    status = 422


class BadRequest(LocalCatError):
    status = 400


class Busy(LocalCatError):
    """Too much work queued already; ``retry_after`` (seconds) goes out as HTTP Retry-After."""

    status = 429

    def __init__(self, problem: str, fix: str | None = None, *, retry_after: int = 5):
        super().__init__(problem, fix)
        self.retry_after = retry_after


class Cancelled(LocalCatError):
    """Work stopped before it finished because the process is stopping; what it had written
    is whole, and running it again finishes the rest."""

    status = 503

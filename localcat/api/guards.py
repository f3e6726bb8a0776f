"""What every request passes before any route or the page sees it: a trusted Host (DNS
rebinding), a same-site Origin for state-changing methods (cross-site forms), a bounded body
(413 before it is read) and a known key (401/403)."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import BadRequest, Forbidden, LocalCatError
from core.settings import ServerSettings
from localcat.api.errors import error
from localcat.auth import Gate, request_key

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# Routes that take files: their bodies may reach the upload limits, the rest server.max_request_kb.
UPLOAD_PATHS = ("/api/ingest", "/ui/gradio_api/upload")


class TooLarge(LocalCatError):
    status = 413


def trusted_hosts(settings: ServerSettings) -> set[str] | None:
    """The Host names answered; None: any."""
    if settings.trusted_hosts is not None:
        names = {h.strip().lower().strip("[]") for h in settings.trusted_hosts}
        return None if "*" in names else names
    return set(LOOPBACK_NAMES) if settings.host in LOOPBACK_NAMES else None


def _host_name(hostport: str) -> str:
    return (urlsplit(f"//{hostport}").hostname or "").lower()


class RequestGuard:
    """Pure ASGI, outermost: refuses before a body is read or a route runs."""

    def __init__(self, app: ASGIApp, settings: ServerSettings):
        self.app = app
        self.settings = settings
        self.hosts = trusted_hosts(settings)
        self.origins = {o.rstrip("/").lower() for o in settings.trusted_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self._check_host(headers)
            self._check_origin(scope["method"], headers)
            limit = self._limit(scope["path"])
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                raise self._too_large(limit)
            if length is None and scope["method"] in _UNSAFE_METHODS:
                receive = await self._bounded(receive, limit)
        except LocalCatError as exc:
            from localcat.api.errors import from_exception

            return await from_exception(exc)(scope, receive, send)
        await self.app(scope, receive, send)

    def _check_host(self, headers: dict[str, str]) -> None:
        if self.hosts is None:
            return
        name = _host_name(headers.get("host", ""))
        if name not in self.hosts:
            raise BadRequest(f"This server does not answer for host {name or '(none)'!r}",
                             "use one of its names (" + ", ".join(sorted(self.hosts)) + "), or "
                             "list the name in server.trusted_hosts (behind a reverse proxy)")

    def _check_origin(self, method: str, headers: dict[str, str]) -> None:
        if method not in _UNSAFE_METHODS:
            return
        # Browsers send Origin (and Sec-Fetch-Site) with cross-site POSTs; programs send neither.
        origin = headers.get("origin")
        site = headers.get("sec-fetch-site")
        if origin is None or origin == "null":
            if site == "cross-site" or origin == "null":
                raise self._cross_site(origin or "a cross-site page")
            return
        o = urlsplit(origin)
        own = f"{o.hostname}:{o.port}" if o.port else o.hostname
        host = headers.get("host", "").lower()
        if host in (o.netloc.lower(), own) or origin.rstrip("/").lower() in self.origins:
            return
        raise self._cross_site(origin)

    @staticmethod
    def _cross_site(origin: str) -> Forbidden:
        return Forbidden(f"A page from {origin} may not change anything here (cross-site request)",
                         "use LocalCat's own page or the API from a program, or list that origin "
                         "in server.trusted_origins")

    def _limit(self, path: str) -> int:
        s = self.settings
        if path.startswith(UPLOAD_PATHS):
            # Multipart framing adds a little per file.
            return int((s.max_upload_mb * s.max_files_per_upload + 1) * 1024 * 1024)
        return s.max_request_kb * 1024

    def _too_large(self, limit: int) -> TooLarge:
        size = f"{limit / 1024 / 1024:g} MB" if limit >= 1024 * 1024 else f"{limit // 1024} KB"
        return TooLarge(f"The request body is larger than the {size} this route takes",
                        "send less (files: at most server.max_upload_mb each and "
                        "server.max_files_per_upload at once; other requests: "
                        "server.max_request_kb)")

    async def _bounded(self, receive: Receive, limit: int) -> Receive:
        """A body without Content-Length (chunked), read up to ``limit`` and then replayed."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                raise self._too_large(limit)
            if not message.get("more_body"):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()
        return replay


def key_middleware(gate: Gate):
    """Who is behind each request (``request.state.principal``); the page and its files only for
    keys over every collection. /health answers anyone, with less when keys are needed."""
    from fastapi import Request

    async def require_key(request: Request, call_next):
        path = request.url.path
        try:
            if gate.stale():
                await asyncio.to_thread(gate.refresh)
            if path == "/health":
                request.state.principal = None
                if gate.enabled():
                    # A key, if given, shows the details; none: only that the server is up.
                    try:
                        request.state.principal = gate.identify(request_key(request.headers))
                    except LocalCatError:
                        return _up_only()
                return await call_next(request)
            who = gate.identify(request_key(request.headers))
            if path == "/" or path.startswith("/ui"):
                who.require_every_collection("use the page, which can reach every collection")
                if path.startswith("/ui/gradio_api/file=") and _is_export(path):
                    who.require_admin("read the Admin tab's exports")
        except LocalCatError as exc:
            resp = error(exc.status, str(exc), type(exc).__name__)
            if exc.status == 401:
                browser = not path.startswith(("/v1/", "/api/"))
                resp.headers["WWW-Authenticate"] = 'Basic realm="LocalCat"' if browser else "Bearer"
            return resp
        request.state.principal = who
        return await call_next(request)
    return require_key


def _is_export(path: str) -> bool:
    from urllib.parse import unquote

    from ui.admin import EXPORTS

    return EXPORTS in unquote(path)


def _up_only():
    from fastapi.responses import Response

    return Response(json.dumps({"status": "ok"}), media_type="application/json")

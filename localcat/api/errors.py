"""The one error shape of every HTTP answer (OpenAI's ``{"error": {...}}``), with URL secrets
redacted; the handlers that translate LocalCat's errors and FastAPI's own into it."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import Busy, LocalCatError
from localcat.openai_schemas import ErrorDetail, ErrorResponse

log = logging.getLogger("localcat.server")


def error_body(status: int, message: str, kind: str) -> ErrorResponse:
    from core.redact import redact

    return ErrorResponse(error=ErrorDetail(message=redact(message), type=kind, code=status))


def error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, kind).model_dump(), status_code=status,
                        headers=headers)


def from_exception(exc: LocalCatError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Busy) else None
    return error(exc.status, str(exc), type(exc).__name__, headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(LocalCatError)
    async def _localcat_error(request: Request, exc: LocalCatError):
        return from_exception(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI's own shape is {"detail": [...]}; ours is the one error shape of every answer.
        where = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}"
                          for e in exc.errors()[:5])
        return error(422, f"Invalid request: {where} — send the fields as /docs shows them",
                     "ValidationError")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            resp = error(404, f"No such route: {where} — see /docs for the routes", "NotFound")
        elif exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "another method")
            resp = error(405, f"{request.url.path} does not take {request.method} — use {allow}",
                         "MethodNotAllowed")
        else:
            resp = error(exc.status_code, str(exc.detail), "HTTPError")
        resp.headers.update(exc.headers or {})
        return resp

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error(500, "Internal error; the server log has the details", "InternalError")

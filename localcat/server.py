"""The HTTP API (FastAPI): OpenAI-compatible chat with RAG, ingest, collections, feedback, health.

Citations ride along as documented extensions, so any OpenAI client works unchanged (the wire
models are in ``localcat/openai_schemas.py``): ``choices[0].message.citations`` (non-streaming), a
``citations`` field on the first stream chunk and the final one, and a top-level ``localcat`` object
with the answer id for feedback. Stream deltas carry the text as the model writes it; the final
chunk's ``localcat.answer`` is the answer with its checked [n] marks (the non-streaming ``content``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import BadRequest, Busy, ConfigError, LocalCatError
from core.schemas import Message, new_answer_id
from localcat.auth import Gate, Principal, request_key
from localcat.container import Container
from localcat.openai_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    ErrorDetail,
    ErrorResponse,
    LocalCatExtension,
    ModelCard,
    ModelList,
    Usage,
)
from localcat.uploads import IngestQueue, Journal, ingest_upload, resume

log = logging.getLogger("localcat.server")

DEFAULT_MODEL = "localcat"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# --- request / response models -------------------------------------------------------------

class ChatMessageIn(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model: str = DEFAULT_MODEL
    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    collection: str | None = Field(None, description="LocalCat extension: collection to search.")
    user: str | None = None


class FeedbackRequest(BaseModel):
    answer_id: str
    rating: Literal["up", "down"] | None = None
    correction: str | None = None
    comment: str | None = None
    user: str | None = None


class ModelUseRequest(BaseModel):
    name: str = Field(description="A registered version (e.g. v3), or 'base' for no adapter.")


def _split_messages(messages: list[ChatMessageIn]) -> tuple[str, list[Message]]:
    """The last user message is the question; earlier user/assistant turns are the history."""
    if messages[-1].role != "user" or not messages[-1].text().strip():
        raise BadRequest("The last message must be a non-empty user message",
                         "end `messages` with {'role': 'user', 'content': '...'}")
    history = [Message(role=m.role, content=m.text()) for m in messages[:-1]
               if m.role in ("user", "assistant")]
    return messages[-1].text().strip(), history


# --- the app ----------------------------------------------------------------------------------

def create_app(container: Container | None = None, *, with_ui: bool | None = None) -> FastAPI:
    c = container or Container()
    settings = c.settings
    with_ui = settings.server.ui if with_ui is None else with_ui
    # Keys of the settings and of the key store (localcat/auth.py); the store is read again every
    # server.keys_poll_s, so `localcat keys add` on a running server takes effect.
    loopback = settings.server.host in _LOOPBACK
    gate = Gate(settings.server, lambda: c.keys,
                lambda: c.database is not None or settings.auth_db.is_file(), loopback=loopback)
    if not loopback and not gate.enabled():
        raise ConfigError(
            f"Refusing to serve on {settings.server.host} without API keys",
            "set LOCALCAT_SERVER__API_KEYS='[\"a-long-secret\"]', make one with `localcat keys "
            "add NAME --role admin`, or bind 127.0.0.1",
        )

    # Uploads wait their turn here (localcat/uploads.py); the journal outlives a restart.
    ingests = IngestQueue(settings.server.max_concurrent_ingests, settings.server.ingest_queue)
    journal = Journal(settings.uploads_dir / ".unfinished")
    app = FastAPI(title="LocalCat", version="0.1.0",
                  lifespan=_lifespan(c, ingests, journal, owns_container=container is None),
                  description="Self-hosted RAG assistant: OpenAI-compatible chat with citations.")
    app.state.container = c
    app.state.ingests = ingests
    app.state.gate = gate

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        # One gate for the API, the page and its source links: Bearer or X-API-Key for
        # programs, HTTP Basic (any user, the key as password) so a browser can log in.
        path = request.url.path
        if path == "/health":
            return await call_next(request)
        try:
            if gate.stale():
                await asyncio.to_thread(gate.refresh)
            who = gate.identify(_request_key(request))
            if path == "/" or path.startswith("/ui"):
                who.require_every_collection("use the page, which can reach every collection")
        except LocalCatError as exc:
            resp = _error(exc.status, str(exc), type(exc).__name__)
            if exc.status == 401:
                browser = not path.startswith(("/v1/", "/api/"))
                resp.headers["WWW-Authenticate"] = 'Basic realm="LocalCat"' if browser else "Bearer"
            return resp
        request.state.principal = who
        return await call_next(request)

    def admin(request: Request, what: str) -> Principal:
        who: Principal = request.state.principal
        who.require_admin(what)
        return who

    @app.exception_handler(LocalCatError)
    async def _localcat_error(request: Request, exc: LocalCatError):
        resp = _error(exc.status, str(exc), type(exc).__name__)
        if isinstance(exc, Busy):
            resp.headers["Retry-After"] = str(exc.retry_after)
        return resp

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI's own shape is {"detail": [...]}; ours is the one error shape of every answer.
        where = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}"
                          for e in exc.errors()[:5])
        return _error(422, f"Invalid request: {where} — send the fields as /docs shows them",
                      "ValidationError")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            resp = _error(404, f"No such route: {where} — see /docs for the routes", "NotFound")
        elif exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "another method")
            resp = _error(405, f"{request.url.path} does not take {request.method} — use {allow}",
                          "MethodNotAllowed")
        else:
            resp = _error(exc.status_code, str(exc.detail), "HTTPError")
        resp.headers.update(exc.headers or {})
        return resp

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, "Internal error; the server log has the details", "InternalError")

    # --- OpenAI-compatible --------------------------------------------------------------------

    @app.get("/v1/models", response_model=ModelList)
    def list_models():
        from core.llm import list_models as runtime_models

        names = [DEFAULT_MODEL, *runtime_models(c.served_llm, c.ollama_hosts)]
        return ModelList(data=[ModelCard(id=n) for n in dict.fromkeys(names)])

    @app.post("/v1/chat/completions", response_model=ChatCompletion,
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "A ChatCompletion, or with `stream` ChatCompletionChunk "
                                              "events"}})
    def chat_completions(req: ChatCompletionRequest, request: Request):
        from assistant.pipeline import Done

        who: Principal = request.state.principal
        who.require_collection(req.collection or settings.chroma.collection)
        question, history = _split_messages(req.messages)
        gate.take(who, "chat")
        model = None if req.model in ("", DEFAULT_MODEL) else req.model
        pipeline = c.pipeline(req.collection, model, record=True)
        created = int(time.time())
        answer_id = new_answer_id()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _in_thread(_sse(pipeline.stream(question, history, answer_id=answer_id),
                                answer_id, req.model, created, include_usage)),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        events = pipeline.stream(question, history, answer_id=answer_id)
        done = [e for e in events if isinstance(e, Done)][-1]
        answer = done.answer
        return ChatCompletion(
            id=answer.id, created=created, model=req.model,
            choices=[Choice(finish_reason=done.finish_reason,
                            message=AssistantMessage(content=answer.answer, citations=answer.citations))],
            usage=_usage(done.usage), localcat=LocalCatExtension.of(answer, final=True),
        )

    # --- LocalCat API -------------------------------------------------------------------------

    @app.post("/api/ingest")
    def ingest_files(request: Request, files: list[UploadFile] = File(...),
                     collection: str | None = Form(None)):
        from core.chunkstore import check_collection_name

        name = check_collection_name(collection or settings.chroma.collection)
        who: Principal = request.state.principal
        who.require_collection(name)
        gate.take(who, "upload")
        limit = int(settings.server.max_upload_mb * 1024 * 1024)
        folder = settings.uploads_dir / name

        def save() -> list[Path]:
            folder.mkdir(parents=True, exist_ok=True)
            return [_save_upload(f, folder, limit) for f in files]

        # 429 when the queue is full; 503 when the server stops before it is done (the files
        # are kept and ingested at the next start).
        report = ingest_upload(ingests, journal, name, save, lambda paths, cancel: c.indexer.ingest(
            paths, name, prune=False, cancel=cancel))
        return {**report.model_dump(mode="json"), "summary": report.summary()}

    @app.get("/api/ingest/queue")
    def ingest_queue():
        """Uploads being ingested and waiting, and the limits (server.max_concurrent_ingests,
        server.ingest_queue)."""
        return ingests.status()

    @app.get("/api/collections")
    def collections(request: Request):
        """The collections this key may use."""
        who: Principal = request.state.principal
        return {"collections": [x for x in c.store.collections() if who.may_use(x["name"])]}

    @app.delete("/api/collections/{name}")
    def delete_collection(name: str, request: Request):
        who = admin(request, "delete collections")
        who.require_collection(name)
        c.indexer.drop_collection(name)
        gate.audit(who, "collection.delete", name)
        return {"deleted": name}

    @app.get("/files/{collection}/{chunk_id}")
    def source_file(collection: str, chunk_id: str, request: Request):
        """The file a cited chunk came from, when it still exists and is an ingested file."""
        request.state.principal.require_collection(collection)
        chunk = c.store.chunks(collection, [chunk_id]).get(chunk_id)
        if chunk is None or c.store.file(collection, chunk.source) is None:
            return _error(404, "No such source; it may have been re-ingested", "NotFound")
        path = Path(chunk.source)
        if not path.is_file():
            return _error(404, f"{path.name} is no longer on disk", "NotFound")
        return FileResponse(path, filename=path.name, content_disposition_type="inline")

    @app.post("/api/feedback")
    def feedback(req: FeedbackRequest, request: Request):
        """Rate an answer; with a key, the key's name is the feedback's `user`."""
        who: Principal = request.state.principal
        answer = c.feedback.get_answer(req.answer_id)
        if answer is not None:
            who.require_collection(answer.collection)
        row = c.feedback.add_feedback(req.answer_id, req.rating, correction=req.correction,
                                      comment=req.comment, user=who.name or req.user)
        return row.model_dump(mode="json")

    @app.get("/api/feedback/mine")
    def my_feedback(request: Request):
        """The feedback given with this key, oldest first, each with its answer."""
        who: Principal = request.state.principal
        if who.name is None:
            raise BadRequest("This server runs without keys, so no feedback is anyone's own",
                             "read all of it at /api/feedback/export, or give users keys "
                             "(`localcat keys add NAME --role user`)")
        return {"feedback": list(c.feedback.iter_feedback(user=who.name))}

    @app.get("/api/feedback/export")
    def export_feedback(request: Request, format: Literal["jsonl"] = "jsonl"):
        who = admin(request, "export all feedback")
        who.require_every_collection("export all feedback")
        gate.audit(who, "feedback.export")

        def lines() -> Iterator[str]:
            for row in c.feedback.iter_feedback():
                yield json.dumps(row, default=str) + "\n"
        return StreamingResponse(lines(), media_type="application/x-ndjson",
                                 headers={"Content-Disposition": "attachment; filename=feedback.jsonl"})

    @app.post("/api/models/use")
    def models_use(req: ModelUseRequest, request: Request):
        """Serve a registered model version (or 'base'); running servers follow within
        models.poll_s."""
        who = admin(request, "switch models")
        version = c.registry.use(req.name)
        serving = version.name if version else "base"
        gate.audit(who, "models.use", serving)
        return {"serving": serving}

    @app.post("/api/models/rollback")
    def models_rollback(request: Request):
        """Serve again what was served before the last switch."""
        who = admin(request, "switch models")
        version = c.registry.rollback()
        serving = version.name if version else "base"
        gate.audit(who, "models.rollback", serving)
        return {"serving": serving}

    @app.get("/api/reviewed")
    def reviewed_list(request: Request, collection: str | None = None, revoked: bool = False):
        """Reviewed answers (users' corrections served to questions that mean the same), newest
        first; ``revoked`` includes the revoked and superseded."""
        admin(request, "list reviewed answers")
        return {"reviewed": [r.model_dump(mode="json")
                             for r in c.feedback.reviewed(collection, revoked=revoked)]}

    @app.delete("/api/reviewed/{reviewed_id}")
    def reviewed_revoke(reviewed_id: int, request: Request):
        """Stop serving a reviewed answer; it stays listed as revoked."""
        who = admin(request, "revoke reviewed answers")
        row = c.feedback.revoke_reviewed(reviewed_id, by=who.label)
        gate.audit(who, "reviewed.revoke", str(reviewed_id))
        return row.model_dump(mode="json")

    @app.get("/api/monitoring")
    def monitoring(request: Request, days: int = 30, model: str | None = None,
                   collection: str | None = None):
        """What was served over the last ``days`` (UTC) days, per day, model version and
        collection: answers, thumbs-up rate (of the rated), correction rate, "not found" rate and
        latency; ``totals`` adds the days up."""
        from assistant.feedback import first_day, served_totals

        who = admin(request, "read the monitoring figures")
        if collection is None:
            who.require_every_collection("read the monitoring figures of every collection")
        else:
            who.require_collection(collection)
        since = first_day(days)
        rows = c.feedback.monitoring(since, model=model, collection=collection)
        return {"since": since, "days": [r.model_dump() for r in rows],
                "totals": [r.model_dump() for r in served_totals(rows)]}

    @app.get("/api/audit")
    def audit(request: Request, limit: int = 100):
        """The admin actions, newest first."""
        admin(request, "read the audit log")
        return {"entries": [e.model_dump() for e in c.keys.audit_log(min(max(limit, 1), 10_000))]}

    @app.get("/health")
    def health():
        out: dict = {"status": "ok", "runtime": settings.llm.runtime}
        try:
            out["collections"] = len(c.store.collections())
            out["store"] = "chroma server" if settings.chroma.url else "embedded chroma"
            c.vectors.heartbeat()
        except LocalCatError as exc:
            out.update(status="degraded", store_error=str(exc))
        if settings.llm.runtime in ("auto", "ollama"):
            urls = settings.llm.ollama_urls
            up = c.ollama_hosts.answering(urls)  # probes at most every few seconds
            out["ollama"] = (c.ollama_hosts.version(up[0]) if up else None) or "unreachable"
            # Each host's url, healthy, in_flight and last_error; requests in flight are counted
            # where they are routed, over several hosts.
            hosts = c.ollama_hosts.snapshot(urls, counted=len(urls) > 1)
            out["ollama_hosts"] = hosts
            if settings.llm.runtime == "ollama" and not any(h["healthy"] for h in hosts):
                out["status"] = "degraded"
        out["model"] = c.loaded_model_tags() or "not loaded yet"
        return out

    if with_ui:
        import gradio as gr

        from ui.app import build_ui

        # The page asks the same gate who is behind each of its requests (the browser sends the
        # key by HTTP Basic): only admins get its Admin tab.
        gr.mount_gradio_app(app, build_ui(
            c, principal=lambda headers: gate.identify(request_key(headers)), audit=gate.audit,
            uploads=lambda name, save, run: ingest_upload(ingests, journal, name, save, run)),
            path="/ui")

        @app.get("/", include_in_schema=False)
        def root():
            return RedirectResponse("/ui")

    return app


def _request_key(request: Request) -> str | None:
    return request_key(request.headers)


def _error_body(status: int, message: str, kind: str) -> ErrorResponse:
    return ErrorResponse(error=ErrorDetail(message=message, type=kind, code=status))


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(_error_body(status, message, kind).model_dump(), status_code=status)


def _usage(usage) -> Usage:
    """The pipeline's token counts (zeros when the runtime reported none)."""
    if usage is None:
        return Usage()
    return Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                 total_tokens=usage.total_tokens)


def _sse(events, cid: str, model: str, created: int, include_usage: bool = False) -> Iterator[str]:
    """OpenAI chat.completion.chunk events; errors after the first byte become an error event.

    With ``include_usage`` (OpenAI's ``stream_options``) a last chunk with no choices carries the
    token counts, as OpenAI sends it."""
    from assistant.pipeline import Done, Sources, Token

    def chunk(delta: Delta, finish: str | None = None, **extra) -> str:
        return ChatCompletionChunk(id=cid, created=created, model=model,
                                   choices=[ChunkChoice(delta=delta, finish_reason=finish)],
                                   **extra).sse()

    try:
        for event in events:
            if isinstance(event, Sources):
                yield chunk(Delta(role="assistant", content=""), citations=event.citations)
            elif isinstance(event, Token):
                yield chunk(Delta(content=event.text))
            elif isinstance(event, Done):
                yield chunk(Delta(), event.finish_reason, citations=event.answer.citations,
                            localcat=LocalCatExtension.of(event.answer, final=True))
                if include_usage:
                    yield ChatCompletionChunk(id=cid, created=created, model=model, choices=[],
                                              usage=_usage(event.usage)).sse()
    except LocalCatError as exc:
        yield _error_body(exc.status, str(exc), type(exc).__name__).sse()
    except Exception:
        log.exception("stream failed")
        yield _error_body(500, "Internal error; see the server log", "InternalError").sse()
    finally:
        events.close()
    yield "data: [DONE]\n\n"


async def _in_thread(gen: Iterator[str]) -> AsyncIterator[str]:
    """Drive a blocking generator from its own thread instead of the shared thread pool.

    Starlette would call ``next()`` on a pool thread per item; the embedded model holds its lock
    between tokens, so with more streams than pool threads every thread could end up waiting for a
    lock whose holder needs a pool thread to continue. A thread per stream cannot deadlock.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    done = object()

    def put(item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the server is shutting down
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def produce() -> None:
        try:
            for item in gen:
                if stop.is_set():  # the client went away: stop generating, free the model
                    break
                put(item)
        finally:
            gen.close()
            put(done)

    threading.Thread(target=produce, name="localcat-stream", daemon=True).start()
    try:
        while (item := await queue.get()) is not done:
            yield item
    finally:
        stop.set()


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _save_upload(upload: UploadFile, folder: Path, limit: int) -> Path:
    """Write an upload under ``folder`` with a sanitised name, refusing oversized bodies."""
    raw = Path(upload.filename or "upload").name  # drops any directory part, '../' included
    name = _SAFE.sub("_", raw).strip("._") or "upload"
    target = (folder / name[:200]).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise BadRequest(f"Unsafe file name {raw!r}", "rename the file")
    tmp = target.with_name(target.name + ".part")
    size = 0
    with tmp.open("wb") as out:
        while block := upload.file.read(1 << 20):
            size += len(block)
            if size > limit:
                out.close()
                tmp.unlink(missing_ok=True)
                raise _TooLarge(raw, limit)
            out.write(block)
    tmp.replace(target)
    return target


class _TooLarge(LocalCatError):
    status = 413

    def __init__(self, name: str, limit: int):
        super().__init__(f"{name} is larger than the {limit // (1024 * 1024)} MB upload limit",
                         "split it, or raise LOCALCAT_SERVER__MAX_UPLOAD_MB")


def app_factory() -> FastAPI:
    """For `uvicorn --factory localcat.server:app_factory` and multi-worker serving."""
    return create_app()


_SETTLE_S = 1.0
"""How long the lifespan's end waits for cancelled ingests (SIGTERM to exit must stay under 5 s)."""


def _lifespan(c: Container, ingests: IngestQueue, journal: Journal, *, owns_container: bool):
    """Follow settings' ingest.watch folders (ingest/watch.py) and finish the uploads an earlier
    run left unfinished while the server runs; on the way out, cancel what is still ingesting."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from ingest.watch import start_watchers, stop_all

        watchers = (await asyncio.to_thread(start_watchers, c.indexer, c.settings)
                    if c.settings.ingest.watch else [])
        resuming = threading.Thread(
            target=resume, name="localcat-resume-uploads", daemon=True,
            args=(ingests, journal, lambda paths, name, cancel: c.indexer.ingest(
                paths, name, prune=False, cancel=cancel)))
        resuming.start()
        try:
            yield
        finally:
            ingests.close()
            await asyncio.to_thread(stop_all, watchers)
            # Cancelled ingests stop at their next check (a file, or 8 chunks embedded): wait a
            # moment for them, not for ever; one still running is cut off like a crash, which the
            # chunk store's pending rows and the upload journal repair at the next start.
            await asyncio.to_thread(resuming.join, _SETTLE_S)
            await asyncio.to_thread(ingests.wait_idle, _SETTLE_S)
            if owns_container:  # parse workers, an embedder's engine process
                await asyncio.to_thread(c.close)
    return lifespan


def run(app: FastAPI, *, host: str, port: int) -> None:
    """Serve ``app`` in this process with uvicorn until SIGTERM or Ctrl-C.

    The signal cancels running ingests at once: uvicorn tells the app only at lifespan shutdown,
    after requests in flight have finished, and an upload's ingest can take minutes (one hostile
    file up to ingest.parse_timeout_s). Other requests get server.shutdown_timeout_s to finish.
    """
    import uvicorn

    ingests: IngestQueue = app.state.ingests

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # From a thread: the signal handler may have interrupted code holding the queue's lock.
            threading.Thread(target=ingests.close, name="localcat-cancel-ingests").start()
            super().handle_exit(sig, frame)

    settings = app.state.container.settings
    Server(uvicorn.Config(app, host=host, port=port, log_level="info",
                          timeout_graceful_shutdown=settings.server.shutdown_timeout_s)).run()

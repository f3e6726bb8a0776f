"""The HTTP server: wires the guards, the routers (localcat/api/) and the page over one set of
use cases (localcat/usecases/).

Citations ride along as documented extensions, so any OpenAI client works unchanged (the wire
models are in ``localcat/openai_schemas.py``): ``choices[0].message.citations`` (non-streaming), a
``citations`` field on the first stream chunk and the final one, and a top-level ``localcat`` object
with the answer id for feedback. Stream deltas carry the text as the model writes it; the final
chunk's ``localcat.answer`` is the answer with its checked [n] marks (the non-streaming ``content``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from core.errors import ConfigError
from localcat.api import admin, chat, documents, errors, feedback, health
from localcat.api.guards import LOOPBACK_NAMES, RequestGuard, key_middleware
from localcat.auth import Gate, request_key
from localcat.container import Container
from localcat.uploads import IngestQueue, Journal, resume
from localcat.usecases import Parts, UseCases

log = logging.getLogger("localcat.server")


def create_app(container: Container | None = None, *, with_ui: bool | None = None) -> FastAPI:
    c = container or Container()
    settings = c.settings
    with_ui = settings.server.ui if with_ui is None else with_ui
    # Keys of the settings and of the key store (localcat/auth.py); the store is read again every
    # server.keys_poll_s, so `localcat keys add` on a running server takes effect.
    loopback = settings.server.host in LOOPBACK_NAMES
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
    usecases = UseCases(Parts(c, gate, ingests, journal))
    app = FastAPI(title="LocalCat", version="0.1.0",
                  lifespan=_lifespan(c, ingests, journal, owns_container=container is None),
                  description="Self-hosted RAG assistant: OpenAI-compatible chat with citations.")
    app.state.container = c
    app.state.ingests = ingests
    app.state.gate = gate
    app.state.usecases = usecases

    # Added last runs first: the request guard (host, origin, body size), then the key.
    app.middleware("http")(key_middleware(gate))
    app.add_middleware(RequestGuard, settings=settings.server)
    errors.install(app)
    for area in (chat, documents, feedback, admin, health):
        app.include_router(area.router)

    if with_ui:
        import gradio as gr

        from ui.app import build_ui

        # The page asks the same gate who is behind each of its requests (the browser sends the
        # key by HTTP Basic) and acts through the same use cases as the API.
        gr.mount_gradio_app(app, build_ui(
            usecases, principal=lambda headers: gate.identify(request_key(headers))), path="/ui")

        @app.get("/", include_in_schema=False)
        def root():
            return RedirectResponse("/ui")

    return app


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

    from core.logs import install_redaction

    settings = app.state.container.settings
    config = uvicorn.Config(app, host=host, port=port, log_level="info",
                            timeout_graceful_shutdown=settings.server.shutdown_timeout_s)
    install_redaction()  # after Config: it installs uvicorn's own log handlers
    Server(config).run()

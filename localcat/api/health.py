"""/health: up or degraded, with the store and runtime details for callers with a key (or on a
keyless loopback server); URL secrets never appear."""

from __future__ import annotations

from fastapi import APIRouter, Request

from core.errors import LocalCatError

router = APIRouter()


@router.get("/health")
def health(request: Request):
    from core.redact import redact, redact_url

    c = request.app.state.container
    settings = c.settings
    out: dict = {"status": "ok", "runtime": settings.llm.runtime}
    try:
        out["collections"] = len(c.store.collections())
        out["store"] = "chroma server" if settings.chroma.url else "embedded chroma"
        c.vectors.heartbeat()
    except LocalCatError as exc:
        out.update(status="degraded", store_error=redact(str(exc)))
    if settings.llm.runtime in ("auto", "ollama"):
        urls = settings.llm.ollama_urls
        up = c.ollama_hosts.answering(urls)  # probes at most every few seconds
        out["ollama"] = (c.ollama_hosts.version(up[0]) if up else None) or "unreachable"
        # Each host's url, healthy, in_flight and last_error; requests in flight are counted
        # where they are routed, over several hosts.
        hosts = c.ollama_hosts.snapshot(urls, counted=len(urls) > 1)
        out["ollama_hosts"] = [{**h, "url": redact_url(h["url"]),
                                "last_error": h.get("last_error") and redact(h["last_error"])}
                               for h in hosts]
        if settings.llm.runtime == "ollama" and not any(h["healthy"] for h in hosts):
            out["status"] = "degraded"
    out["model"] = c.loaded_model_tags() or "not loaded yet"
    return out

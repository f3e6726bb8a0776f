"""Several Ollama hosts behind one chat model: the least busy healthy host answers each request.

``OllamaHosts`` is what this process knows of each host (requests in flight, health from failures
and a cached ``GET /api/version`` probe); the composition root keeps one, so /health and every
model built from the settings see the same counts. ``OllamaRouter`` is the ``BaseChatModel`` that
owns one ``ChatOllama`` per host and sends a request on to another host when its host fails before
the answer starts (refused, 5xx, timeout). Once a chunk has reached the caller an error is raised
as it would be with one host: the caller has already shown part of that answer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from core.errors import LocalCatError, RuntimeUnavailable
from core.redact import redact, redact_url

log = logging.getLogger("localcat.ollama")

BACKOFF_S = 10.0
"""How long a host that failed is passed over (unless every host is)."""
PROBE_TTL_S = 5.0
"""How long a probe's answer (or a request's success) counts as the host's health."""
PROBE_TIMEOUT_S = 0.5

ALL_DOWN_FIX = (
    "start them with `ollama serve`, check LOCALCAT_LLM__OLLAMA_HOSTS, "
    "or set LOCALCAT_LLM__RUNTIME=embedded"
)


def is_host_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the host is unwell (so another may answer), not that the request is."""
    from ollama import ResponseError

    if isinstance(exc, ResponseError):
        # -1: an error line in the stream, e.g. the model runner died on that host.
        return exc.status_code >= 500 or exc.status_code < 0
    # The ollama client raises the builtin ConnectionError for plain requests, httpx's for streams.
    return isinstance(exc, (ConnectionError, httpx.TransportError))


def describe(exc: BaseException) -> str:
    """A short reason for /health and the all-hosts-failed message (no URL's password in it)."""
    from ollama import ResponseError

    if isinstance(exc, ResponseError):
        return redact(f"HTTP {exc.status_code}: {exc.error}" if exc.status_code > 0 else exc.error)
    if isinstance(exc, (ConnectionError, httpx.ConnectError)):
        return "cannot connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    # Redacted before cutting: a cut could leave half a URL the pattern no longer finds.
    return redact(f"{type(exc).__name__}: {exc}")[:200]


@dataclass
class HostState:
    url: str
    in_flight: int = 0
    down_until: float = float("-inf")
    """Passed over until then (monotonic clock)."""
    last_error: str | None = None
    seen_ok: float = float("-inf")
    """When a probe or a request last succeeded."""
    probed_at: float = float("-inf")
    probe_ok: bool = False
    version: str | None = None
    picked_at: float = float("-inf")
    """When it last got a request: ties go to the host idle longest."""


class OllamaHosts:
    """Health and load of Ollama hosts, by URL, shared by everything in this process."""

    def __init__(self, *, backoff_s: float = BACKOFF_S, probe_ttl_s: float = PROBE_TTL_S,
                 probe: Callable[[str], str | None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.backoff_s = backoff_s
        self.probe_ttl_s = probe_ttl_s
        self._probe = probe or _version
        self._clock = clock
        self._lock = threading.Lock()
        self._hosts: dict[str, HostState] = {}

    def _state(self, url: str) -> HostState:
        if url not in self._hosts:
            self._hosts[url] = HostState(url)
        return self._hosts[url]

    def probe(self, url: str, *, force: bool = False) -> bool:
        """Whether ``url`` answers ``GET /api/version``; asked at most once per ``probe_ttl_s``."""
        with self._lock:
            state = self._state(url)
            if not force and self._clock() - state.probed_at < self.probe_ttl_s:
                return state.probe_ok
        version = self._probe(url)
        with self._lock:
            now = self._clock()
            state.probed_at, state.probe_ok = now, version is not None
            if version is None:
                self._down(state, "no answer to GET /api/version", now)
            else:
                state.version, state.seen_ok = version, now
        return version is not None

    def answering(self, urls: list[str], *, force: bool = False) -> list[str]:
        """The hosts among ``urls`` that answer a probe, in order (probed side by side)."""
        if len(urls) == 1:
            return [u for u in urls if self.probe(u, force=force)]
        with ThreadPoolExecutor(len(urls)) as pool:
            ok = list(pool.map(lambda u: self.probe(u, force=force), urls))
        return [u for u, up in zip(urls, ok, strict=True) if up]

    def version(self, url: str) -> str | None:
        with self._lock:
            return self._state(url).version

    def acquire(self, urls: list[str], exclude: Iterable[str] = ()) -> str | None:
        """Take the least busy healthy host of ``urls`` not in ``exclude`` (its in-flight count
        goes up; ``release`` it), or None when none answers."""
        exclude = set(exclude)
        checked: set[str] = set()
        while True:
            with self._lock:
                now = self._clock()
                up = [s for u in urls if u not in exclude and (s := self._state(u)).down_until <= now]
                if up:
                    best = min(up, key=lambda s: (s.in_flight, s.picked_at))
                    # Not heard from lately: a cheap probe first, so a host that hangs does not
                    # cost a whole request timeout.
                    if best.url in checked or now - best.seen_ok < self.probe_ttl_s:
                        return self._take(best, now)
                    candidate = best.url
                else:
                    candidate = None
                    # Every host is backing off: try those that answer a probe now rather than
                    # fail a request without asking anyone.
                    resting = sorted((self._state(u) for u in urls if u not in exclude
                                      and u not in checked), key=lambda s: s.down_until)
            if candidate is not None:
                checked.add(candidate)
                self.probe(candidate, force=True)
                continue
            for state in resting:
                checked.add(state.url)
                if self.probe(state.url, force=True):
                    with self._lock:
                        return self._take(state, self._clock())
            return None

    def _take(self, state: HostState, now: float) -> str:
        state.in_flight += 1
        state.picked_at = now
        return state.url

    def release(self, url: str) -> None:
        with self._lock:
            self._state(url).in_flight -= 1

    def succeeded(self, url: str) -> None:
        with self._lock:
            state = self._state(url)
            state.down_until = float("-inf")
            state.seen_ok = self._clock()

    def failed(self, url: str, exc: BaseException | str) -> None:
        with self._lock:
            self._down(self._state(url), redact(exc) if isinstance(exc, str) else describe(exc),
                       self._clock())

    def _down(self, state: HostState, reason: str, now: float) -> None:
        state.down_until = now + self.backoff_s
        state.last_error = reason

    def healthy(self, url: str) -> bool:
        with self._lock:
            return self._state(url).down_until <= self._clock()

    def snapshot(self, urls: list[str], *, counted: bool = True) -> list[dict[str, Any]]:
        """Each host as /health shows it, its URL redacted. ``counted=False``: nothing routes (one
        host), so in-flight requests are not counted."""
        with self._lock:
            now = self._clock()
            return [
                {"url": redact_url(s.url), "healthy": s.down_until <= now,
                 "in_flight": s.in_flight if counted else None, "last_error": s.last_error}
                for s in map(self._state, urls)
            ]


def _version(url: str) -> str | None:
    from core.llm import ollama_status

    return ollama_status(url, PROBE_TIMEOUT_S)


class OllamaRouter(BaseChatModel):
    """ChatOllama over several hosts: each request goes to the least busy healthy one, and on to
    the next when its host fails before the first chunk."""

    model: str
    """The Ollama model name (the same on every host)."""
    clients: dict[str, BaseChatModel]
    """One chat model (a ChatOllama) per host URL, in the configured order."""
    hosts: OllamaHosts
    translate: Callable[[BaseException, str], LocalCatError | None] | None = None
    """Turns a host's error into a LocalCatError naming that host (None: leave it as it is)."""

    # No _astream/_agenerate: LangChain runs _stream in a worker thread for astream and ainvoke,
    # and LocalCat's callers stream synchronously.

    @property
    def _llm_type(self) -> str:
        return "ollama-router"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # Callbacks and tracers receive these: no host's password.
        return {"model": self.model, "hosts": [redact_url(u) for u in self.clients]}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # ChatOllama's own _generate streams too; going through _stream keeps one retry rule.
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        urls = list(self.clients)
        errors: dict[str, BaseException] = {}
        while (url := self.hosts.acquire(urls, exclude=errors)) is not None:
            try:
                chunks = self.clients[url]._stream(messages, stop, run_manager, **kwargs)
                with contextlib.closing(chunks):
                    try:
                        first = next(chunks)
                    except StopIteration:
                        self.hosts.succeeded(url)
                        return
                    except Exception as exc:
                        if not is_host_failure(exc):
                            self._raise(exc, url)
                        self.hosts.failed(url, exc)
                        errors[url] = exc
                        log.warning("Ollama at %s failed (%s); trying another host",
                                    redact_url(url), describe(exc))
                        continue
                    self.hosts.succeeded(url)
                    yield first
                    try:
                        yield from chunks
                    except Exception as exc:
                        if is_host_failure(exc):
                            self.hosts.failed(url, exc)
                        self._raise(exc, url)
                    return
            finally:
                self.hosts.release(url)
        raise self._all_failed(urls, errors)

    def _raise(self, exc: Exception, url: str) -> None:
        err = self.translate(exc, url) if self.translate else None
        if err is None:
            raise exc
        raise err from exc

    def _all_failed(self, urls: list[str], errors: dict[str, BaseException]) -> RuntimeUnavailable:
        # By position: the snapshot's URLs are redacted, so two hosts may show the same one.
        known = dict(zip(urls, (h["last_error"] for h in self.hosts.snapshot(urls)), strict=True))
        why = "; ".join(
            f"{redact_url(u)}: {describe(errors[u]) if u in errors else known[u] or 'unhealthy'}"
            for u in urls
        )
        return RuntimeUnavailable(f"No Ollama host could answer ({why})", ALL_DOWN_FIX)

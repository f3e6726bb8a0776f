"""Routing over several Ollama hosts: least busy healthy host, backoff, retry before the first chunk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from ollama import ResponseError

from core.errors import ModelNotFound, RuntimeUnavailable
from core.llm import build_chat_model, list_models, translate_runtime_error
from core.ollama_hosts import OllamaHosts, OllamaRouter, describe, is_host_failure
from core.settings import LLMSettings
from tests.fixtures.fake_ollama import FakeOllama, free_port

A, B, C = "http://a:11434", "http://b:11434", "http://c:11434"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Probe:
    """Answers like GET /api/version: a version for the hosts in ``up``; records who was asked."""

    def __init__(self, *up: str) -> None:
        self.up = set(up)
        self.asked: list[str] = []

    def __call__(self, url: str) -> str | None:
        self.asked.append(url)
        return "0.9.3" if url in self.up else None


def pool(*up: str, backoff_s: float = 10, probe_ttl_s: float = 5) -> tuple[OllamaHosts, Clock, Probe]:
    clock, probe = Clock(), Probe(*up)
    return OllamaHosts(backoff_s=backoff_s, probe_ttl_s=probe_ttl_s, probe=probe, clock=clock), clock, probe


# --- OllamaHosts --------------------------------------------------------------------------------

def test_the_least_busy_host_gets_the_request():
    hosts, _, _ = pool(A, B, C)
    assert [hosts.acquire([A, B, C]) for _ in range(3)] == [A, B, C]
    hosts.release(B)
    assert hosts.acquire([A, B, C]) == B  # the only one with nothing in flight
    assert [h["in_flight"] for h in hosts.snapshot([A, B, C])] == [1, 1, 1]
    assert hosts.acquire([A, B, C]) == A  # ties: the one idle longest
    assert [h["in_flight"] for h in hosts.snapshot([A, B, C])] == [2, 1, 1]


def test_ties_go_to_the_host_idle_longest():
    hosts, clock, _ = pool(A, B)
    picked = []
    for _ in range(4):  # one request at a time: they alternate instead of all landing on A
        clock.now += 1
        url = hosts.acquire([A, B])
        picked.append(url)
        hosts.release(url)
    assert picked == [A, B, A, B]


def test_a_failed_host_is_passed_over_until_its_backoff_ends():
    hosts, clock, _ = pool(A, B, backoff_s=10)
    hosts.failed(A, ConnectionError("refused"))
    assert hosts.snapshot([A])[0] == {"url": A, "healthy": False, "in_flight": 0,
                                      "last_error": "cannot connect"}
    for _ in range(3):
        assert hosts.acquire([A, B]) == B
    clock.now += 10
    assert hosts.healthy(A)
    assert hosts.acquire([A, B]) == A  # least busy again


def test_a_host_not_heard_from_lately_is_probed_first():
    hosts, clock, probe = pool(B, probe_ttl_s=5)  # A does not answer
    assert hosts.acquire([A, B]) == B
    assert probe.asked == [A, B]  # A was first in line, failed its probe, and is now resting
    assert not hosts.healthy(A) and hosts.snapshot([A])[0]["last_error"] == (
        "no answer to GET /api/version")
    hosts.release(B)
    hosts.succeeded(B)
    assert hosts.acquire([A, B]) == B and probe.asked == [A, B]  # B answered just now: no probe
    hosts.release(B)
    clock.now += 6
    hosts.acquire([A, B])
    assert probe.asked == [A, B, B]  # stale again; A still backing off, so not asked


def test_probes_are_cached():
    hosts, clock, probe = pool(A, probe_ttl_s=5)
    assert hosts.answering([A, B]) == [A]
    assert hosts.answering([A, B]) == [A]
    assert sorted(probe.asked) == [A, B]
    clock.now += 5
    hosts.answering([A, B])
    assert len(probe.asked) == 4
    assert hosts.answering([A], force=True) == [A] and len(probe.asked) == 5
    assert hosts.version(A) == "0.9.3" and hosts.version(B) is None


def test_when_every_host_rests_those_answering_a_probe_are_tried():
    hosts, _, probe = pool(B)
    hosts.failed(A, "HTTP 500: boom")
    hosts.failed(B, "HTTP 500: boom")
    assert hosts.acquire([A, B]) == B  # rather than failing without asking anyone
    assert probe.asked == [A, B]


def test_none_when_no_host_answers():
    hosts, _, _ = pool()
    assert hosts.acquire([A, B]) is None
    assert hosts.acquire([A, B], exclude=[A, B]) is None
    assert [h["healthy"] for h in hosts.snapshot([A, B])] == [False, False]


def test_host_failures_are_the_host_s_not_the_request_s():
    assert is_host_failure(ConnectionError())
    assert is_host_failure(httpx.ConnectError("refused"))
    assert is_host_failure(httpx.ReadTimeout("slow"))
    assert is_host_failure(httpx.RemoteProtocolError("cut"))
    assert is_host_failure(ResponseError("llama runner process has terminated", 500))
    assert is_host_failure(ResponseError("model failed to load"))  # an error line in the stream
    assert not is_host_failure(ResponseError('model "x" not found', 404))
    assert not is_host_failure(ResponseError("bad request", 400))
    assert not is_host_failure(ValueError("a bug of ours"))
    assert describe(ResponseError("boom", 503)) == "HTTP 503: boom"
    assert describe(httpx.ReadTimeout("slow")) == "timed out"


# --- OllamaRouter -------------------------------------------------------------------------------

class ScriptedOllama(BaseChatModel):
    """A host's chat model: each call does the next step of ``script``: a text to stream word by
    word, an exception to raise before the first chunk, or (text, exception) to raise after it."""

    script: list[Any]
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
        raise AssertionError("the router streams")

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: Any = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        text, error = (step, None) if isinstance(step, str) else (
            step if isinstance(step, tuple) else ("", step))
        for word in text.split():
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))
        if error is not None:
            raise error


def router(hosts: OllamaHosts, **scripts: list[Any]) -> tuple[OllamaRouter, dict[str, ScriptedOllama]]:
    clients = {f"http://{name}:11434": ScriptedOllama(script=s) for name, s in scripts.items()}
    llm = LLMSettings(ollama_hosts=list(clients))
    return OllamaRouter(model="llama3.2", clients=clients, hosts=hosts,
                        translate=lambda exc, host: translate_runtime_error(exc, llm, host=host)), clients


def text(model: BaseChatModel) -> str:
    return "".join(str(c.content) for c in model.stream("hi"))


def test_a_refused_request_goes_to_the_next_host():
    hosts, _, _ = pool(A, B)
    model, clients = router(hosts, a=[httpx.ConnectError("refused"), "from a"], b=["from b"])
    assert text(model) == "from b "
    assert [clients[A].calls, clients[B].calls] == [1, 1]
    assert [(h["healthy"], h["in_flight"], h["last_error"]) for h in hosts.snapshot([A, B])] == [
        (False, 0, "cannot connect"), (True, 0, None)]
    assert text(model) == "from b " and clients[A].calls == 1  # A rests


def test_a_500_is_retried_elsewhere_and_so_is_invoke():
    hosts, _, _ = pool(A, B)
    model, clients = router(hosts, a=[ResponseError("runner died", 500)], b=["twenty seven"])
    assert model.invoke("hi").content == "twenty seven "
    assert hosts.snapshot([A])[0]["last_error"] == "HTTP 500: runner died"


def test_a_missing_model_is_not_a_host_failure():
    hosts, _, _ = pool(A, B)
    model, clients = router(hosts, a=[ResponseError('model "llama3.2" not found', 404)], b=["b"])
    with pytest.raises(ModelNotFound, match=f"Ollama at {A} has no model 'llama3.2'"):
        text(model)
    assert clients[B].calls == 0 and hosts.healthy(A)


def test_a_stream_that_breaks_after_its_first_chunk_is_not_retried():
    hosts, _, _ = pool(A, B)
    cut = httpx.RemoteProtocolError("peer closed connection")
    model, clients = router(hosts, a=[("Paris is", cut)], b=["from b"])
    seen = []
    with pytest.raises(RuntimeUnavailable, match=f"Ollama at {A} closed the connection") as err:
        for chunk in model.stream("hi"):
            seen.append(chunk.content)
    assert seen == ["Paris ", "is "] and clients[B].calls == 0
    assert err.value.__cause__ is cut
    assert not hosts.healthy(A) and hosts.snapshot([A])[0]["in_flight"] == 0


def test_every_host_failing_names_each_and_the_fix():
    hosts, _, _ = pool(A, B)
    model, clients = router(hosts, a=[httpx.ConnectError("refused")],
                            b=[ResponseError("out of memory", 500)])
    with pytest.raises(RuntimeUnavailable) as err:
        text(model)
    message = str(err.value)
    assert f"{A}: cannot connect" in message and f"{B}: HTTP 500: out of memory" in message
    assert "`ollama serve`" in message and "LOCALCAT_LLM__OLLAMA_HOSTS" in message
    # The next request asks the resting hosts' probes (both answer) rather than giving up unasked.
    clients[A].script, clients[B].script = ["back"], ["back"]
    assert text(model) == "back "


def test_in_flight_counts_follow_open_streams():
    hosts, _, _ = pool(A, B)
    model, _ = router(hosts, a=["one two three"], b=["four five six"])
    first, second = model.stream("hi"), model.stream("hi")
    next(first), next(second)
    assert [h["in_flight"] for h in hosts.snapshot([A, B])] == [1, 1]
    first.close()  # the client went away mid-answer
    assert [h["in_flight"] for h in hosts.snapshot([A, B])] == [0, 1]
    list(second)
    assert [h["in_flight"] for h in hosts.snapshot([A, B])] == [0, 0]


# --- settings and the builder (against the protocol-level fake) ---------------------------------

def test_hosts_setting_from_the_environment(monkeypatch):
    from core.settings import Settings

    assert Settings().llm.ollama_urls == ["http://127.0.0.1:9"]  # just ollama_host ($OLLAMA_HOST)
    monkeypatch.setenv("LOCALCAT_LLM__OLLAMA_HOSTS", '["gpu1:11434", "http://gpu2:11434/", '
                                                     '"http://gpu1:11434"]')
    assert Settings().llm.ollama_urls == ["http://gpu1:11434", "http://gpu2:11434"]


def test_auto_uses_ollama_when_any_host_answers(tmp_path: Path):
    down = f"http://127.0.0.1:{free_port()}"
    with FakeOllama() as up:
        llm = LLMSettings(runtime="auto", ollama_hosts=[down, up.url], models_dir=tmp_path)
        hosts = OllamaHosts()
        model, description = build_chat_model(llm, hosts)
        assert isinstance(model, OllamaRouter) and list(model.clients) == [down, up.url]
        assert description == f"ollama llama3.2 at {down}, {up.url}"
        assert [h["healthy"] for h in hosts.snapshot([down, up.url])] == [False, True]
        assert list_models(llm, hosts) == ["llama3.2:latest"]
        assert text(model) == "Paris is the capital of France [1]."


def test_every_answering_host_must_have_the_model(tmp_path: Path):
    with FakeOllama() as a, FakeOllama(models=[]) as b:
        llm = LLMSettings(runtime="ollama", ollama_hosts=[a.url, b.url])
        with pytest.raises(ModelNotFound, match=f"Ollama at {b.url} has no model") as err:
            build_chat_model(llm)
        assert "localcat models pull ollama:llama3.2" in str(err.value)


def test_no_host_answering_at_start_up_says_how_to_fix():
    downs = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    with pytest.raises(RuntimeUnavailable, match="Cannot reach Ollama at any of") as err:
        build_chat_model(LLMSettings(runtime="ollama", ollama_hosts=downs))
    assert "`ollama serve`" in str(err.value)

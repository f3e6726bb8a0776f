"""Several Ollama hosts through the real server: uvicorn, the real `openai` client, langchain-ollama's
ChatOllama per host, against two fake Ollamas that speak the wire protocol over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import openai
import pytest
from click.testing import CliRunner

from tests.fixtures.fake_ollama import FakeOllama
from tests.fixtures.servers import serve_app

pytestmark = pytest.mark.integration

FROM_A, FROM_B = "Twenty-seven days, says A.", "Twenty-seven days, says B."
QUESTION = [{"role": "user", "content": "How many vacation days do I get?"}]


@pytest.fixture
def two() -> Iterator[tuple[FakeOllama, FakeOllama]]:
    with FakeOllama(reply=FROM_A) as a, FakeOllama(reply=FROM_B) as b:
        yield a, b


@contextmanager
def serving(urls: list[str], docs_dir, monkeypatch) -> Iterator[tuple[str, object]]:
    from localcat.container import Container
    from localcat.server import create_app

    monkeypatch.setenv("LOCALCAT_LLM__RUNTIME", "ollama")
    monkeypatch.setenv("LOCALCAT_LLM__OLLAMA_HOSTS", json.dumps(urls))
    monkeypatch.setenv("LOCALCAT_EMBEDDING__BACKEND", "fake")  # the model's side is under test
    c = Container()
    c.indexer.ingest([docs_dir], "kbase")
    with serve_app(create_app(c, with_ui=False)) as url:
        yield url, c


def ask(url: str, stream: bool = False) -> str:
    """Which fake wrote the answer: 'A' or 'B'."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    resp = client.chat.completions.create(model="localcat", messages=QUESTION, stream=stream,
                                          extra_body={"collection": "kbase"})
    if stream:
        text = "".join(ch.choices[0].delta.content or "" for ch in resp)
    else:
        text = resp.choices[0].message.content
    # The citation check may add or drop [n] marks; the words are the fake's.
    return {"says A": "A", "says B": "B"}[text.split(", ", 1)[1].rstrip(".[]0123456789 ")]


def health(url: str) -> dict:
    return httpx.get(url + "/health").json()


def test_a_stopped_host_leaves_the_answers_to_the_other(two, docs_dir, monkeypatch):
    a, b = two
    with serving([a.url, b.url], docs_dir, monkeypatch) as (url, _):
        assert ask(url) == "A"  # both well: the first goes to the first host
        a.stop()  # e.g. its machine rebooted; LocalCat still holds a connection to it
        assert [ask(url, stream=n % 2 == 0) for n in range(4)] == ["B"] * 4
        hosts = health(url)["ollama_hosts"]
    assert a.chats == 1 and b.chats == 4
    assert [(h["url"], h["healthy"], h["in_flight"]) for h in hosts] == [
        (a.url, False, 0), (b.url, True, 0)]
    assert hosts[0]["last_error"] and hosts[1]["last_error"] is None


def test_a_host_answering_500_is_skipped(two, docs_dir, monkeypatch):
    a, b = two
    a.fail_status = 500
    with serving([a.url, b.url], docs_dir, monkeypatch) as (url, _):
        assert [ask(url, stream=n % 2 == 1) for n in range(4)] == ["B"] * 4
        body = health(url)
    assert a.chats == 1 and b.chats == 4  # tried once, then left alone while it backs off
    assert body["status"] == "ok" and body["ollama"] == "0.9.3"
    assert body["ollama_hosts"][0]["last_error"] == "HTTP 500: llama runner process has terminated"
    assert not body["ollama_hosts"][0]["healthy"] and body["ollama_hosts"][1]["healthy"]


def test_concurrent_requests_are_spread_over_both_hosts(two, docs_dir, monkeypatch):
    a, b = two
    a.delay_s = b.delay_s = 1.0  # slow replies: requests overlap on the hosts
    with serving([a.url, b.url], docs_dir, monkeypatch) as (url, _):
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda n: ask(url, stream=n % 2 == 0), range(4)))
        hosts = health(url)["ollama_hosts"]
    assert answers.count("A") == a.chats >= 1 and answers.count("B") == b.chats >= 1
    assert a.chats + b.chats == 4
    assert [h["in_flight"] for h in hosts] == [0, 0]


def test_a_stream_cut_after_its_first_token_is_not_retried(docs_dir, monkeypatch):
    with (FakeOllama(reply=FROM_A, break_stream_after=1) as a, FakeOllama(reply=FROM_B) as b,
          serving([a.url, b.url], docs_dir, monkeypatch) as (url, _)):
        body = {"model": "localcat", "messages": QUESTION, "stream": True, "collection": "kbase"}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as resp:
            events = [json.loads(line[6:]) for line in resp.iter_lines()
                      if line.startswith("data: {")]
        hosts = health(url)["ollama_hosts"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if "choices" in e)
    assert text == "Twenty-seven"  # what the user already saw is not followed by B's answer
    error = events[-1]["error"]
    assert error["code"] == 503 and f"Ollama at {a.url} closed the connection" in error["message"]
    assert a.chats == 1 and b.chats == 0
    assert not hosts[0]["healthy"] and hosts[1]["healthy"]


def test_every_host_down_is_a_503_with_the_fix(two, docs_dir, monkeypatch):
    a, b = two
    with serving([a.url, b.url], docs_dir, monkeypatch) as (url, _):
        assert ask(url) == "A"
        a.stop()
        b.stop()
        for stream in (False, True):
            with pytest.raises(openai.APIError) as err:
                ask(url, stream=stream)
            message = str(err.value)
            assert "No Ollama host could answer" in message and "`ollama serve`" in message
            assert a.url in message and b.url in message
        body = health(url)
    assert body["status"] == "degraded" and body["ollama"] == "unreachable"
    assert [h["healthy"] for h in body["ollama_hosts"]] == [False, False]


def test_no_host_up_at_start_is_a_503_naming_them(docs_dir, monkeypatch):
    with FakeOllama() as a, FakeOllama() as b:
        urls = [a.url, b.url]
    with serving(urls, docs_dir, monkeypatch) as (url, _), pytest.raises(openai.APIStatusError) as err:
        ask(url)
    assert err.value.status_code == 503
    assert f"Cannot reach Ollama at any of {a.url}, {b.url}" in err.value.message
    assert "`ollama serve`" in err.value.message


def test_models_pull_pulls_on_every_host(two, monkeypatch):
    from localcat.cli import main

    a, b = two
    monkeypatch.setenv("LOCALCAT_LLM__OLLAMA_HOSTS", json.dumps([a.url, b.url]))
    done = CliRunner().invoke(main, ["models", "pull", "ollama:qwen2.5:0.5b", "--json", "-q"],
                              catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["hosts"] == [a.url, b.url]
    assert "qwen2.5:0.5b" in a.models and "qwen2.5:0.5b" in b.models

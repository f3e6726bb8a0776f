"""The API with real parts: uvicorn, the embedded llama.cpp runtime (tiny model), MiniLM, Chroma,
and the real `openai` client."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.fixtures.fake_ollama import FakeOllama
from tests.fixtures.servers import serve_app
from tests.fixtures.tiny_model import TINY_ANSWER

pytestmark = pytest.mark.integration


@pytest.fixture
def api(tiny_runtime, docs_dir, monkeypatch):
    from localcat.container import Container
    from localcat.server import create_app

    c = Container()
    c.indexer.ingest([docs_dir], "kbase")
    with serve_app(create_app(c, with_ui=False)) as url:
        yield url, c


def client(url: str, key: str = "unused", timeout: float = 120) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=timeout)


def test_openai_client_gets_a_cited_answer_and_feedback_lands(api):
    url, c = api
    resp = client(url).chat.completions.create(
        model="localcat", extra_body={"collection": "kbase"},
        messages=[{"role": "user", "content": "How many vacation days do I get?"}])
    msg = resp.choices[0].message
    assert msg.content == TINY_ANSWER  # a sentence that claims nothing: its [1] stays as written
    citations = msg.model_extra["citations"]
    assert citations and citations[0]["source"].endswith("vacation.md") and citations[0]["cited"]
    answer_id = resp.model_extra["localcat"]["answer_id"]
    assert resp.id == answer_id and c.feedback.get_answer(answer_id).answer == TINY_ANSWER
    assert resp.model_extra["localcat"]["answer"] == TINY_ANSWER
    # Real token counts from llama.cpp: the prompt holds the retrieved chunks.
    assert resp.usage.prompt_tokens > 50 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens

    r = httpx.post(url + "/api/feedback", json={"answer_id": answer_id, "rating": "down",
                                               "correction": "27 days [1]."})
    assert r.status_code == 200, r.text
    rows = [json.loads(line) for line in httpx.get(url + "/api/feedback/export").text.splitlines()]
    assert len(rows) == 1 and json.dumps(rows[0]).count("27 days [1].") == 1
    assert c.feedback.stats()["down"] == 1


def test_streaming_sends_sources_first_and_the_answer_id_last(api):
    url, _ = api
    stream = client(url).chat.completions.create(
        model="localcat", stream=True, extra_body={"collection": "kbase"},
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Who descales the espresso machine?"}])
    chunks = list(stream)
    assert chunks[0].model_extra["citations"][0]["source"].endswith("kitchen.html")
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == TINY_ANSWER
    *_, last, usage = chunks
    assert last.choices[0].finish_reason == "stop"
    assert last.model_extra["localcat"]["answer_id"].startswith("ans_")
    assert last.model_extra["localcat"]["answer"] == TINY_ANSWER
    # As OpenAI sends it with include_usage: a last chunk without choices.
    assert usage.choices == [] and usage.usage.completion_tokens > 0


def test_history_is_used_and_models_are_listed(api):
    url, c = api
    models = [m.id for m in client(url).models.list()]
    assert models[0] == "localcat" and any("localcat-tiny" in m for m in models)
    resp = client(url).chat.completions.create(model="localcat", extra_body={"collection": "kbase"}, messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "What about the helpdesk?"},
        {"role": "assistant", "content": "It is reachable by phone."},
        {"role": "user", "content": "Which extension?"}])
    stored = c.feedback.get_answer(resp.id)
    assert [m.role for m in stored.history] == ["user", "assistant"]


def test_bad_requests_get_reasons_not_tracebacks(api):
    url, _ = api
    r = httpx.post(url + "/v1/chat/completions", json={"messages": []})
    assert r.status_code == 422
    r = httpx.post(url + "/v1/chat/completions",
                   json={"messages": [{"role": "assistant", "content": "hi"}]})
    assert r.status_code == 400 and "last message" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/chat/completions",
                   json={"collection": "nope-nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and "localcat ingest" in r.json()["error"]["message"]
    r = httpx.post(url + "/api/feedback", json={"answer_id": "ans_missing", "rating": "up"})
    assert r.status_code == 400
    assert "Traceback" not in r.text


def test_upload_ingest_sanitises_names_and_enforces_the_size_limit(api, monkeypatch):
    url, c = api
    files = [("files", ("../../escape me.md", b"# Parking\n\nVisitors park on level P2.", "text/markdown"))]
    r = httpx.post(url + "/api/ingest", files=files, data={"collection": "uploads"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["summary"]["added"] == 1
    # The saved name, not the server's path to it.
    assert body["files"][0]["path"] == "escape_me.md"
    assert (c.settings.data_dir / "uploads" / "uploads" / "escape_me.md").is_file()
    names = [x["name"] for x in httpx.get(url + "/api/collections").json()["collections"]]
    assert names == ["kbase", "uploads"]

    c.settings.server.max_upload_mb = 0.001
    big = [("files", ("big.txt", b"x" * 5000, "text/plain"))]
    r = httpx.post(url + "/api/ingest", files=big, data={"collection": "uploads"})
    assert r.status_code == 413 and "MAX_UPLOAD_MB" in r.json()["error"]["message"]

    assert httpx.delete(url + "/api/collections/uploads").status_code == 200
    assert httpx.delete(url + "/api/collections/uploads").status_code == 404


def test_cited_source_file_is_served(api):
    url, c = api
    resp = client(url).chat.completions.create(
        model="localcat", extra_body={"collection": "kbase"},
        messages=[{"role": "user", "content": "espresso machine descaling"}])
    chunk_id = resp.choices[0].message.model_extra["citations"][0]["chunk_id"]
    r = httpx.get(f"{url}/files/kbase/{chunk_id}")
    assert r.status_code == 200 and b"espresso" in r.content
    assert httpx.get(f"{url}/files/kbase/not-a-chunk").status_code == 404


def test_fifty_concurrent_streaming_chats_have_no_errors(api):
    url, c = api

    def chat(i: int) -> str:
        # One model serves the streams in turn; the timeout leaves room for a loaded CI machine.
        stream = client(url, timeout=600).chat.completions.create(
            model="localcat", stream=True, extra_body={"collection": "kbase"},
            messages=[{"role": "user", "content": f"question {i} about vacation days"}])
        return "".join(ch.choices[0].delta.content or "" for ch in stream)

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(chat, range(50)))
    assert answers == [TINY_ANSWER] * 50
    assert c.feedback.stats()["answers"] == 50


def test_api_keys_are_enforced(tiny_runtime, docs_dir, monkeypatch):
    from localcat.container import Container
    from localcat.server import create_app

    monkeypatch.setenv("LOCALCAT_SERVER__API_KEYS", '["s3cret-key"]')
    c = Container()
    with serve_app(create_app(c, with_ui=False)) as url:
        assert httpx.get(url + "/health").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        assert [m.id for m in client(url, "s3cret-key").models.list()][0] == "localcat"
        assert httpx.get(url + "/api/collections", headers={"X-API-Key": "s3cret-key"}).status_code == 200
        # The page and source links: a browser is asked for the key by HTTP Basic.
        page = httpx.get(url + "/files/kbase/x")
        assert page.status_code == 401 and page.headers["www-authenticate"].startswith("Basic")
        assert httpx.get(url + "/files/kbase/x", auth=("any", "s3cret-key")).status_code == 404
        assert httpx.get(url + "/openapi.json").status_code == 401


def test_refuses_to_serve_off_loopback_without_keys(monkeypatch):
    from core.errors import ConfigError
    from localcat.server import create_app

    monkeypatch.setenv("LOCALCAT_SERVER__HOST", "0.0.0.0")
    with pytest.raises(ConfigError, match="API_KEYS"):
        create_app(with_ui=False)


def test_ollama_down_is_a_503_with_the_fix(docs_dir, monkeypatch):
    from localcat.container import Container
    from localcat.server import create_app

    monkeypatch.setenv("LOCALCAT_LLM__RUNTIME", "ollama")
    c = Container()
    c.indexer.ingest([docs_dir], "kbase")
    with serve_app(create_app(c, with_ui=False)) as url:
        with pytest.raises(openai.APIStatusError) as err:
            client(url).chat.completions.create(
                model="localcat", extra_body={"collection": "kbase"},
                messages=[{"role": "user", "content": "vacation?"}])
        assert err.value.status_code == 503
        assert "ollama serve" in err.value.message and "Traceback" not in err.value.message
        health = httpx.get(url + "/health").json()
        assert health["status"] == "degraded" and health["ollama"] == "unreachable"


def test_ollama_runtime_streams_through_our_api_and_missing_model_is_404(docs_dir, monkeypatch):
    """Our server → real langchain-ollama client → an Ollama speaking the wire protocol."""
    from localcat.container import Container
    from localcat.server import create_app

    with FakeOllama(models=["llama3.2:latest"], reply="Twenty-seven days [1].") as ollama:
        monkeypatch.setenv("OLLAMA_HOST", ollama.url)
        monkeypatch.setenv("LOCALCAT_LLM__RUNTIME", "auto")
        c = Container()
        c.indexer.ingest([docs_dir], "kbase")
        with serve_app(create_app(c, with_ui=False)) as url:
            stream = client(url).chat.completions.create(
                model="localcat", stream=True, extra_body={"collection": "kbase"},
                messages=[{"role": "user", "content": "How many vacation days?"}])
            assert "".join(ch.choices[0].delta.content or "" for ch in stream) == "Twenty-seven days [1]."
            sent = [r for r in ollama.requests if r["path"] == "/api/chat"][-1]
            assert "27 vacation days" in json.dumps(sent)  # the retrieved context reached the model
            with pytest.raises(openai.NotFoundError) as err:
                client(url).chat.completions.create(
                    model="mistral", extra_body={"collection": "kbase"},
                    messages=[{"role": "user", "content": "hi"}])
            assert "ollama pull mistral" in err.value.message


VACATION_AND_COFFEE = ("Every employee gets 27 vacation days per calendar year. The espresso machine "
                       "is descaled every Friday by the facilities team [7]. Parking on the moon "
                       "costs nothing.")


def test_answers_carry_a_checked_citation_on_every_supported_sentence(docs_dir, monkeypatch):
    """Real MiniLM attribution behind the real `openai` client; the model's words come from a fake
    Ollama (its own marks: none on the first sentence, a wrong one on the second)."""
    from localcat.container import Container
    from localcat.server import create_app

    with FakeOllama(models=["llama3.2:latest"], reply=VACATION_AND_COFFEE) as ollama:
        monkeypatch.setenv("OLLAMA_HOST", ollama.url)
        monkeypatch.setenv("LOCALCAT_LLM__RUNTIME", "ollama")
        c = Container()
        c.indexer.ingest([docs_dir], "kbase")
        question = [{"role": "user", "content": "How much vacation do I get, and who descales the "
                                                "espresso machine?"}]
        with serve_app(create_app(c, with_ui=False)) as url:
            resp = client(url).chat.completions.create(
                model="localcat", extra_body={"collection": "kbase"}, messages=question)
            chunks = list(client(url).chat.completions.create(
                model="localcat", stream=True, extra_body={"collection": "kbase"},
                messages=question))

    msg = resp.choices[0].message
    n = {x["source"].rsplit("/", 1)[-1]: x["n"] for x in msg.model_extra["citations"]}
    assert msg.content == (
        f"Every employee gets 27 vacation days per calendar year [{n['vacation.md']}]. The "
        f"espresso machine is descaled every Friday by the facilities team [{n['kitchen.html']}]. "
        "Parking on the moon costs nothing.")
    sentences = resp.model_extra["localcat"]["sentences"]
    assert [(s["sources"], s["model_sources"], s["supported"]) for s in sentences] == [
        ([n["vacation.md"]], [], True), ([n["kitchen.html"]], [7], True), ([], [], False)]
    assert all(msg.content[s["start"]:s["end"]] == s["text"] for s in sentences)
    by_n = {x["n"]: x for x in msg.model_extra["citations"]}
    assert by_n[n["vacation.md"]]["sentences"] == [0] and by_n[n["vacation.md"]]["cited"]
    assert by_n[n["kitchen.html"]]["sentences"] == [1]
    assert c.feedback.get_answer(resp.id).raw_answer == VACATION_AND_COFFEE

    # Streamed: the deltas are the words as written, the last chunk the checked answer.
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == VACATION_AND_COFFEE
    final = chunks[-1].model_extra
    assert final["localcat"]["answer"] == msg.content
    assert final["localcat"]["sentences"][1]["sources"] == [n["kitchen.html"]]
    assert [x["sentences"] for x in final["citations"]] == [
        x["sentences"] for x in msg.model_extra["citations"]]

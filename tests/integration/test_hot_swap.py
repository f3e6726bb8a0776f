"""Hot swap: `models use` / `rollback` (and retrieval versions) reach a running server within
seconds, under concurrent streaming chats, with no failed request. Real server (uvicorn) and `openai` client, real MiniLM
and Chroma, a protocol-level fake Ollama serving the base and the fine-tuned version."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.fake_ollama import FakeOllama
from tests.fixtures.servers import serve_app
from tests.integration.test_server import client
from tests.unit.test_finetune_registry import add, base_file

pytestmark = pytest.mark.integration

TUNED = "localcat-base:v1"


def test_model_versions_swap_in_a_running_server_under_load(docs_dir, tmp_path: Path, monkeypatch):
    from core.settings import Settings
    from localcat.container import Container
    from localcat.server import create_app

    with FakeOllama(models=("llama3.2:latest", f"{TUNED}"), reply="27 days [1].",
                    delay_s=0.01) as fake:
        monkeypatch.setenv("LOCALCAT_LLM__RUNTIME", "ollama")
        monkeypatch.setenv("OLLAMA_HOST", fake.url)
        monkeypatch.setenv("LOCALCAT_MODELS__POLL_S", "0.2")
        c = Container(Settings())
        c.indexer.ingest([docs_dir], "kbase")
        v1 = add(c.registry, tmp_path, base_file(tmp_path / "base.gguf"))
        c.registry.set_ollama(v1.name, TUNED, fake.url)

        errors: list[BaseException] = []
        done = threading.Event()
        with serve_app(create_app(c, with_ui=False)) as url:
            api = client(url, timeout=60)

            def chat() -> None:
                while not done.is_set():
                    try:
                        stream = api.chat.completions.create(
                            model="localcat", stream=True, extra_body={"collection": "kbase"},
                            messages=[{"role": "user", "content": "How many vacation days?"}])
                        text = "".join(e.choices[0].delta.content or "" for e in stream if e.choices)
                        assert "27 days" in text, text
                    except BaseException as exc:  # noqa: BLE001 - every failure is the finding
                        errors.append(exc)

            def served_since(start: int) -> set[str]:
                return {r["body"].get("model") for r in fake.requests[start:]
                        if r["path"] == "/api/chat"}

            workers = [threading.Thread(target=chat) for _ in range(6)]
            for w in workers:
                w.start()
            try:
                deadline = time.monotonic() + 60
                while fake.chats < 6 and not errors:  # every stream has started
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
                assert served_since(0) == {"llama3.2"}
                swaps = []
                for target in ("v1", None):  # use v1, then roll back to the base
                    start = time.monotonic()
                    if target:
                        c.registry.use(target)
                    else:
                        c.registry.rollback()
                    want = TUNED if target else "llama3.2"
                    while True:
                        mark = len(fake.requests)
                        time.sleep(0.3)
                        if served_since(mark) == {want}:
                            break
                        assert time.monotonic() - start < 10, served_since(mark)
                    swaps.append(time.monotonic() - start)

                # A retrieval version switched in and rolled back while the chats go on: r1 has
                # the same embedder (its vectors are embedded into their own collection first).
                from finetune.retrieval import rollback, use_version

                c.store.new_retrieval_version("kbase", lambda n: c.embeddings.name, {})
                c.store.set_version_status("kbase", 1, "rejected")  # a version with no vectors
                mark = fake.chats
                assert use_version(c, "kbase", 1).vectors == "kbase--r1"
                assert c.retriever("kbase").vectors.ids("kbase") == c.store.chunk_ids("kbase")
                assert rollback(c, "kbase").version == 0
                deadline = time.monotonic() + 60
                while fake.chats < mark + 6:  # chats answered across both switches
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            finally:
                done.set()
                for w in workers:
                    w.join(timeout=60)
        assert errors == []
        assert all(s < 5 for s in swaps), swaps

"""GET /api/monitoring over real HTTP: what is served per day, model version and collection, for
admins only; a chat through the API is counted with its latency."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.fixtures.fake_ollama import FakeOllama
from tests.fixtures.servers import serve_app
from tests.unit.test_monitoring import seed

pytestmark = pytest.mark.integration

ADMIN, USER = "admin-m0nitor-key", "user-m0nitor-key"


@pytest.fixture
def ollama(monkeypatch: pytest.MonkeyPatch):
    with FakeOllama(reply="Every employee gets 27 vacation days [1].") as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.url)
        monkeypatch.setenv("LOCALCAT_LLM__RUNTIME", "ollama")
        monkeypatch.setenv("LOCALCAT_EMBEDDING__BACKEND", "fake")
        yield fake


def serve(docs_dir: Path | None = None):
    from localcat.container import Container
    from localcat.server import create_app

    c = Container()
    if docs_dir is not None:
        c.indexer.ingest([docs_dir], "kbase")
    seed(c.feedback)
    return c, serve_app(create_app(c, with_ui=False))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_admins_read_the_figures_and_users_are_refused(ollama, docs_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALCAT_SERVER__API_KEYS", json.dumps([ADMIN]))
    monkeypatch.setenv("LOCALCAT_SERVER__USER_KEYS", json.dumps([USER]))
    c, server = serve(docs_dir)
    today = datetime.now(UTC).date()
    with server as url:
        r = httpx.get(url + "/api/monitoring", headers=bearer(USER))
        assert r.status_code == 403, r.text
        assert r.json()["error"]["type"] == "Forbidden"
        assert "may not read the monitoring figures" in r.json()["error"]["message"]
        assert httpx.get(url + "/api/monitoring").status_code == 401

        body = httpx.get(url + "/api/monitoring", headers=bearer(ADMIN)).json()
        assert body["since"] == (today - timedelta(days=29)).isoformat()
        assert [(d["day"], d["model"], d["collection"]) for d in body["days"]] == [
            ((today - timedelta(days=1)).isoformat(), "base", "kbase"),
            (today.isoformat(), "base", "faq"), (today.isoformat(), "base", "kbase"),
            (today.isoformat(), "base+lora:v1", "kbase")]
        kb = next(t for t in body["totals"] if (t["model"], t["collection"]) == ("base", "kbase"))
        assert kb["day"] is None and kb["answers"] == 6 and kb["up_rate"] == 0.5
        assert kb["not_found_rate"] == pytest.approx(2 / 6, abs=1e-4)
        assert kb["latency_mean_s"] == 1.6 and kb["latency_max_s"] == 3.0

        one = httpx.get(url + "/api/monitoring", headers=bearer(ADMIN),
                        params={"days": 1, "model": "base+lora:v1"}).json()
        assert [(d["model"], d["answers"], d["up_rate"]) for d in one["days"]] == [
            ("base+lora:v1", 1, 1.0)]
        r = httpx.get(url + "/api/monitoring", headers=bearer(ADMIN), params={"days": 0})
        assert r.status_code == 400 and "days must be" in r.json()["error"]["message"]

        # A chat through the API is recorded with its latency and counted at once.
        chat = httpx.post(url + "/v1/chat/completions", headers=bearer(ADMIN), timeout=60, json={
            "collection": "kbase", "messages": [{"role": "user", "content": "Vacation days?"}]})
        assert chat.status_code == 200, chat.text
        answer_id = chat.json()["localcat"]["answer_id"]
        latency = c.feedback.get_answer(answer_id).latency_s
        assert latency is not None and latency > 0
        served = httpx.get(url + "/api/monitoring", headers=bearer(ADMIN),
                           params={"days": 1, "collection": "kbase"}).json()["days"]
        (new,) = [d for d in served if d["model"] not in ("base", "base+lora:v1")]
        assert new["model"] == c.feedback.get_answer(answer_id).model
        assert (new["answers"], new["timed"], new["latency_mean_s"]) == (1, 1, round(latency, 3))


def test_without_keys_the_local_user_reads_them(ollama) -> None:
    _, server = serve()
    with server as url:
        body = httpx.get(url + "/api/monitoring").json()
        assert len(body["totals"]) == 3

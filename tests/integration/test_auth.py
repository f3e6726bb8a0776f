"""Keys with roles over real HTTP: the app under uvicorn, keys from the settings and from the key
store (made by the real `localcat keys` commands), chat through a fake Ollama, hash embeddings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from tests.fixtures.fake_ollama import FakeOllama
from tests.fixtures.servers import serve_app

pytestmark = pytest.mark.integration

ADMIN, USER = "admin-s3cret-key", "user-s3cret-key"
POLL_S = 0.2


@pytest.fixture
def env(docs_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings keys (one admin, one user), two collections, and a fake Ollama to answer."""
    with FakeOllama(reply="Every employee gets 27 vacation days [1].") as ollama:
        monkeypatch.setenv("OLLAMA_HOST", ollama.url)
        monkeypatch.setenv("LOCALCAT_LLM__RUNTIME", "ollama")
        monkeypatch.setenv("LOCALCAT_EMBEDDING__BACKEND", "fake")
        monkeypatch.setenv("LOCALCAT_SERVER__KEYS_POLL_S", str(POLL_S))
        monkeypatch.setenv("LOCALCAT_SERVER__API_KEYS", json.dumps([ADMIN]))
        monkeypatch.setenv("LOCALCAT_SERVER__USER_KEYS", json.dumps([USER]))
        yield docs_dir


def serve(docs_dir: Path | None = None):
    from localcat.container import Container
    from localcat.server import create_app

    c = Container()
    if docs_dir is not None:
        c.indexer.ingest([docs_dir], "kbase")
        c.indexer.ingest([docs_dir / "it.txt"], "secrets")
    return c, serve_app(create_app(c, with_ui=False))


def cli(*args: str) -> str:
    from localcat.cli import main

    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(url: str, key: str, collection: str | None = "kbase") -> httpx.Response:
    body: dict = {"model": "localcat", "messages": [{"role": "user", "content": "Vacation days?"}]}
    if collection:
        body["collection"] = collection
    return httpx.post(url + "/v1/chat/completions", json=body, headers=bearer(key), timeout=60)


def upload(url: str, key: str, collection: str) -> httpx.Response:
    files = [("files", ("parking.md", b"# Parking\n\nVisitors park on level P2.", "text/markdown"))]
    return httpx.post(url + "/api/ingest", files=files, data={"collection": collection},
                      headers=bearer(key), timeout=60)


def error_of(r: httpx.Response, status: int, kind: str) -> str:
    """The one error shape; returns the message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code"}, body
    assert body["error"]["type"] == kind and body["error"]["code"] == status
    assert "Traceback" not in r.text
    return body["error"]["message"]


def wait_poll() -> None:
    time.sleep(POLL_S * 2)


def test_every_401_path(env):
    _, server = serve(env)
    with server as url:
        assert httpx.get(url + "/health").status_code == 200  # stays open
        r = httpx.get(url + "/api/collections")
        assert "needs an API key" in error_of(r, 401, "Unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        # The page and source links ask a browser for the key by HTTP Basic.
        assert httpx.get(url + "/files/kbase/x").headers["www-authenticate"].startswith("Basic")
        for wrong in (bearer("nope"), {"X-API-Key": "nope"}):
            assert "Unknown API key" in error_of(
                httpx.get(url + "/api/collections", headers=wrong), 401, "Unauthorized")
        r = httpx.get(url + "/api/collections", auth=("anyone", "nope"))
        assert "localcat keys add" in error_of(r, 401, "Unauthorized")
        assert httpx.get(url + "/openapi.json").status_code == 401
        # The right key in each of the three ways.
        for right in ({"headers": bearer(USER)}, {"headers": {"X-API-Key": USER}},
                      {"auth": ("anyone", USER)}):
            assert httpx.get(url + "/api/collections", **right).status_code == 200

        # A stored key works until it is revoked, on the running server.
        key = json.loads(cli("keys", "add", "bob", "--role", "user", "--json"))["key"]
        wait_poll()
        assert httpx.get(url + "/api/collections", headers=bearer(key)).status_code == 200
        cli("keys", "revoke", "bob")
        wait_poll()
        for way in ({"headers": bearer(key)}, {"headers": {"X-API-Key": key}},
                    {"auth": ("bob", key)}):
            r = httpx.get(url + "/api/collections", **way)
            assert "'bob' was revoked" in error_of(r, 401, "Unauthorized")


def test_a_user_key_is_refused_every_admin_endpoint(env):
    c, server = serve(env)
    with server as url:
        admin_only = [
            ("DELETE", "/api/collections/kbase", None),
            ("GET", "/api/feedback/export", None),
            ("POST", "/api/models/use", {"name": "base"}),
            ("POST", "/api/models/rollback", None),
            ("GET", "/api/audit", None),
        ]
        for method, path, body in admin_only:
            r = httpx.request(method, url + path, json=body, headers=bearer(USER))
            message = error_of(r, 403, "Forbidden")
            assert "'user_keys[0]' has role user" in message and "--role admin" in message
        assert [x["name"] for x in c.store.collections()] == ["kbase", "secrets"]
        assert c.keys.audit_log() == []
        # The user's own part: chat, rate, read back their feedback.
        answer = chat(url, USER)
        assert answer.status_code == 200, answer.text
        r = httpx.post(url + "/api/feedback", headers=bearer(USER),
                       json={"answer_id": answer.json()["id"], "rating": "up", "user": "mallory"})
        assert r.status_code == 200 and r.json()["user"] == "user_keys[0]"  # the key, not the claim
        mine = httpx.get(url + "/api/feedback/mine", headers=bearer(USER)).json()["feedback"]
        assert [f["answer_id"] for f in mine] == [answer.json()["id"]]
        assert httpx.get(url + "/api/feedback/mine", headers=bearer(ADMIN)).json() == {"feedback": []}


def test_a_key_scoped_to_one_collection_is_refused_the_others(env):
    c, server = serve(env)
    with server as url:
        key = json.loads(cli("keys", "add", "alice", "--collection", "kbase", "--json"))["key"]
        wait_poll()
        # Listing shows only what it may use.
        r = httpx.get(url + "/api/collections", headers=bearer(key))
        assert [x["name"] for x in r.json()["collections"]] == ["kbase"]
        assert len(httpx.get(url + "/api/collections", headers=bearer(USER)).json()["collections"]) == 2

        # Chat: refused outside the scope (the default collection is outside too), not emptied.
        assert chat(url, key).status_code == 200
        for other in ("secrets", None):
            message = error_of(chat(url, key, other), 403, "Forbidden")
            assert "'alice' may not use collection" in message and "kbase" in message
        # Upload.
        assert upload(url, key, "kbase").status_code == 200
        error_of(upload(url, key, "secrets"), 403, "Forbidden")
        assert c.store.file("secrets", str(c.settings.data_dir / "uploads" / "secrets" /
                                           "parking.md")) is None
        # Source files (refused before the chunk is looked up).
        error_of(httpx.get(f"{url}/files/secrets/any-chunk", headers=bearer(key)), 403, "Forbidden")
        assert httpx.get(f"{url}/files/kbase/not-a-chunk", headers=bearer(key)).status_code == 404
        # Feedback on an answer from another collection.
        other = chat(url, ADMIN, "secrets").json()["id"]
        r = httpx.post(url + "/api/feedback", json={"answer_id": other, "rating": "down"},
                       headers=bearer(key))
        error_of(r, 403, "Forbidden")
        own = chat(url, key).json()["id"]
        r = httpx.post(url + "/api/feedback", json={"answer_id": own, "rating": "up"},
                       headers=bearer(key))
        assert r.status_code == 200 and r.json()["user"] == "alice"
        assert c.feedback.stats()["feedback"] == 1
        # The page reaches every collection, so a scoped key may not use it.
        assert "may not use the page" in error_of(
            httpx.get(url + "/ui", headers=bearer(key)), 403, "Forbidden")


def test_chats_and_uploads_are_rate_limited_per_key(env, monkeypatch):
    monkeypatch.setenv("LOCALCAT_SERVER__UPLOADS_PER_MINUTE", "1")
    _, server = serve(env)
    with server as url:
        key = json.loads(cli("keys", "add", "pat", "--rate-limit", "2/min", "--json"))["key"]
        wait_poll()
        assert [chat(url, key).status_code for _ in range(2)] == [200, 200]
        r = chat(url, key)
        message = error_of(r, 429, "RateLimited")
        assert "2 chats a minute" in message and "--rate-limit" in message
        assert 1 <= int(r.headers["retry-after"]) <= 30  # a token comes back every 30 s
        assert chat(url, ADMIN).status_code == 200  # other keys have their own buckets

        assert upload(url, USER, "kbase").status_code == 200
        r = upload(url, USER, "kbase")
        assert "server.uploads_per_minute" in error_of(r, 429, "RateLimited")
        assert 1 <= int(r.headers["retry-after"]) <= 60


def test_errors_have_one_shape_everywhere(env):
    _, server = serve(env)
    with server as url:
        r = httpx.post(url + "/v1/chat/completions", json={"messages": []}, headers=bearer(USER))
        message = error_of(r, 422, "ValidationError")
        assert "messages" in message and "/docs" in message
        r = httpx.post(url + "/api/feedback", content=b"{not json", headers=bearer(USER))
        error_of(r, 422, "ValidationError")
        r = httpx.post(url + "/api/models/use", json={}, headers=bearer(ADMIN))
        assert "name" in error_of(r, 422, "ValidationError")
        assert "/docs" in error_of(httpx.get(url + "/api/nothing-here", headers=bearer(USER)),
                                   404, "NotFound")
        r = httpx.put(url + "/api/collections", headers=bearer(USER))
        assert "GET" in error_of(r, 405, "MethodNotAllowed") and r.headers["allow"] == "GET"
        r = httpx.post(url + "/api/feedback", json={"answer_id": "ans_missing", "rating": "up"},
                       headers=bearer(USER))
        assert "send the `id`" in error_of(r, 400, "BadRequest")


def test_admin_actions_land_in_the_audit_log(env):
    c, server = serve(env)
    with server as url:
        assert httpx.post(url + "/api/models/use", json={"name": "base"},
                          headers=bearer(ADMIN)).json() == {"serving": "base"}
        # Failed actions change nothing and are not logged.
        r = httpx.post(url + "/api/models/rollback", headers=bearer(ADMIN))
        assert "Already serving the base model" in error_of(r, 400, "BadRequest")
        assert httpx.get(url + "/api/feedback/export", headers=bearer(ADMIN)).status_code == 200
        assert httpx.delete(url + "/api/collections/secrets", headers=bearer(ADMIN)).status_code == 200
        cli("keys", "add", "dana", "--role", "admin")
        cli("keys", "revoke", "dana")

        entries = httpx.get(url + "/api/audit", headers=bearer(ADMIN)).json()["entries"]
    got = [(e["key_name"], e["role"], e["action"], e["target"]) for e in entries]
    actor = got[0][0]
    assert actor.startswith("cli:")
    assert got == [
        (actor, "admin", "keys.revoke", "dana"),
        (actor, "admin", "keys.add", "dana"),
        ("api_keys[0]", "admin", "collection.delete", "secrets"),
        ("api_keys[0]", "admin", "feedback.export", None),
        ("api_keys[0]", "admin", "models.use", "base"),
    ]
    assert entries[1]["detail"] == {"role": "admin", "collections": None, "per_minute": None}
    assert [e["action"] for e in json.loads(cli("audit", "--json"))] == [g[2] for g in got]
    text = cli("audit")
    assert "collection.delete  secrets" in text and "api_keys[0] (admin)" in text
    assert [x["name"] for x in c.store.collections()] == ["kbase"]


def test_keys_are_stored_only_as_hashes_and_listed_without_them(env, tmp_path):
    import hashlib

    key = cli("keys", "add", "erin", "--role", "user", "-c", "kbase", "--rate-limit", "30").strip()
    assert key.startswith("lc_") and len(key) > 40
    listed = json.loads(cli("keys", "list", "--json"))
    assert listed == [{"name": "erin", "role": "user", "collections": ["kbase"], "per_minute": 30,
                       "created_at": listed[0]["created_at"], "revoked_at": None}]
    assert key not in cli("keys", "list") and "erin" in cli("keys", "list")
    files = list((tmp_path / "data").glob("auth.sqlite*"))  # the WAL file too
    stored = b"".join(p.read_bytes() for p in files)
    assert key.encode() not in stored and key[3:].encode() not in stored
    assert hashlib.sha256(key.encode()).hexdigest().encode() in stored

    from localcat.cli import main

    refused = CliRunner().invoke(main, ["keys", "add", "erin"])
    assert refused.exit_code == 1 and "exists already" in refused.output
    refused = CliRunner().invoke(main, ["keys", "revoke", "nobody"])
    assert refused.exit_code == 1 and "localcat keys list" in refused.output


def test_stored_keys_turn_auth_on_and_without_any_key_loopback_stays_open(monkeypatch):
    monkeypatch.setenv("LOCALCAT_EMBEDDING__BACKEND", "fake")
    monkeypatch.setenv("LOCALCAT_SERVER__KEYS_POLL_S", str(POLL_S))
    c, server = serve()
    with server as url:
        assert httpx.get(url + "/api/collections").status_code == 200
        assert not c.settings.auth_db.exists()  # an open server creates no key store
        key = cli("keys", "add", "root", "--role", "admin").strip()
        wait_poll()
        error_of(httpx.get(url + "/api/collections"), 401, "Unauthorized")
        assert httpx.get(url + "/api/collections", headers=bearer(key)).status_code == 200

    # Off loopback, a stored key is enough to start; with none, the server refuses to.
    from core.errors import ConfigError
    from localcat.server import create_app

    monkeypatch.setenv("LOCALCAT_SERVER__HOST", "0.0.0.0")
    create_app(with_ui=False)
    cli("keys", "revoke", "root")
    with pytest.raises(ConfigError, match="localcat keys add"):
        create_app(with_ui=False)

"""The page's own endpoints, called without the browser: they act through the API's use cases."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.security.conftest import (
    ADMIN,
    COLLECTION,
    USER,
    Edge,
    bearer,
    chat,
    error_of,
    gradio_call,
    page_upload,
)

pytestmark = [pytest.mark.integration, pytest.mark.security]


def files_of(edge: Edge, collection: str = COLLECTION) -> list[str]:
    r = httpx.get(edge.url + "/api/collections", headers=bearer(ADMIN))
    got = {c["name"]: c for c in r.json()["collections"]}
    return [] if collection not in got else [str(got[collection]["files"])]


def ingested_names(edge: Edge, collection: str) -> set[str]:
    folder = edge.data / "uploads" / collection
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_page_ingest_reads_no_server_file(edge: Edge, tmp_path: Path) -> None:
    secret = tmp_path / "server-secret.txt"
    secret.write_text("The launch code is 0000-SECRET.\n")
    secret.chmod(0o600)
    keystore = edge.data / "auth.sqlite3"
    for path in (secret, keystore, Path("/etc/passwd")):
        fake = {"path": str(path), "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}
        out = gradio_call(edge.url, "ingest", [[fake], "stolen"], USER)
        # Gradio's own check (the page is marked launched), else ours (ui/chat.py).
        assert "not uploaded by a user" in out or "not uploaded through this page" in out, out
    assert ingested_names(edge, "stolen") == set()
    names = [c["name"] for c in httpx.get(edge.url + "/api/collections",
                                          headers=bearer(ADMIN)).json()["collections"]]
    assert "stolen" not in names
    assert secret.exists()  # nothing of the server's files is touched


def test_store_files_stay_whole_and_revocation_works(edge: Edge) -> None:
    # The page once copied the key store's SQLite file, dropping its locks: keys revoked after
    # that stayed valid. Now it is refused, and a revoked key fails at once.
    fake = {"path": str(edge.data / "auth.sqlite3"), "meta": {"_type": "gradio.FileData"}}
    gradio_call(edge.url, "ingest", [[fake], "stolen"], USER)
    key = __import__("json").loads(edge.cli("keys", "add", "short-lived", "--json"))["key"]
    time.sleep(0.5)
    assert httpx.get(edge.url + "/api/collections", headers=bearer(key)).status_code == 200
    edge.cli("keys", "revoke", "short-lived")
    time.sleep(0.5)
    assert "revoked" in error_of(httpx.get(edge.url + "/api/collections",
                                           headers=bearer(key)), 401)
    audit = httpx.get(edge.url + "/api/audit", headers=bearer(ADMIN)).json()["entries"]
    cli_audit = edge.cli("audit", "--json")
    assert all(str(e["id"]) in cli_audit for e in audit[:5])


def test_page_questions_count_against_the_keys_rate(edge: Edge) -> None:
    key = edge.keys["limited"]  # 3 a minute, shared by the page and the API
    outs = [gradio_call(edge.url, "ask", ["How many vacation days?", [], COLLECTION, None], key)
            for _ in range(3)]
    assert all("went over" not in o for o in outs), outs
    assert "went over its 3 chats a minute" in gradio_call(
        edge.url, "ask", ["And now?", [], COLLECTION, None], key)
    r = chat(edge.url, key)
    assert "went over" in error_of(r, 429) and int(r.headers["retry-after"]) >= 1


def test_page_uploads_keep_the_size_limit_and_name_rules(edge: Edge) -> None:
    big = page_upload(edge.url, USER, "big.txt", b"word " * (3 * 1024 * 1024 // 5))  # 3 MB > 2
    out = gradio_call(edge.url, "ingest", [[big], "uploads-test"], USER)
    assert "larger than the 2 MB upload limit" in out, out
    assert not Path(big["path"]).exists()  # Gradio's cached copy is gone
    hostile = ".hidden;&'()\u202egnp.md"
    ok = page_upload(edge.url, USER, hostile, b"# Lunch\n\nThe canteen opens at noon.\n")
    out = gradio_call(edge.url, "ingest", [[ok], "uploads-test"], USER)
    assert "1 added" in out, out
    names = ingested_names(edge, "uploads-test")
    assert names == {"hidden_gnp.md"}, names
    assert not Path(ok["path"]).exists()
    audit = httpx.get(edge.url + "/api/audit", headers=bearer(ADMIN)).json()["entries"]
    assert any(e["action"] == "upload" and e["key_name"] == "user_keys[0]" for e in audit)


def test_page_feedback_is_the_callers_and_only_on_their_answers(edge: Edge) -> None:
    out = gradio_call(edge.url, "ask", ["How many vacation days?", [], COLLECTION, None], USER)
    answer_id = __import__("re").findall(r"ans_[0-9a-f]{32}", out)[-1]
    r = httpx.post(edge.url + "/api/feedback", json={"answer_id": answer_id, "rating": "up"},
                   headers=bearer(USER))
    assert r.status_code == 200 and r.json()["user"] == "user_keys[0]", r.text
    # Another user may not rate it, nor read it back through their own feedback.
    r = httpx.post(edge.url + "/api/feedback", json={"answer_id": answer_id, "rating": "down"},
                   headers=bearer(edge.keys["limited"]))
    assert "may only rate answers it was given" in error_of(r, 403)
    mine = httpx.get(edge.url + "/api/feedback/mine", headers=bearer(edge.keys["limited"]))
    assert answer_id not in mine.text
    # An admin may rate any.
    r = httpx.post(edge.url + "/api/feedback", json={"answer_id": answer_id, "rating": "down"},
                   headers=bearer(ADMIN))
    assert r.status_code == 200 and r.json()["user"] == "api_keys[0]"


def test_page_exports_are_admins_only(edge: Edge) -> None:
    out = gradio_call(edge.url, "export", ["(all)", "(all)", "(all)", False], ADMIN)
    path = __import__("re").search(r'"path":\s*"([^"]+feedback\.jsonl)"', out).group(1)
    url = f"{edge.url}/ui/gradio_api/file={path}"
    assert httpx.get(url, auth=("a", ADMIN)).status_code == 200
    assert "may not read the Admin tab's exports" in error_of(
        httpx.get(url, auth=("u", USER)), 403)
    # Nor can a user hand the export, which lies in Gradio's cache, to the page's ingest.
    fake = {"path": path, "orig_name": "feedback.jsonl", "meta": {"_type": "gradio.FileData"}}
    out = gradio_call(edge.url, "ingest", [[fake], "stolen-export"], USER)
    assert "was not uploaded through this page" in out, out
    assert ingested_names(edge, "stolen-export") == set()
    refused = gradio_call(edge.url, "export", ["(all)", "(all)", "(all)", False], USER)
    assert "event: error" in refused and "may not export all feedback" in refused
    # No other server file is served by the page's file route.
    for other in ("/etc/passwd", str(edge.data / "auth.sqlite3")):
        r = httpx.get(f"{edge.url}/ui/gradio_api/file={other}", auth=("a", ADMIN))
        assert r.status_code in (403, 404), (other, r.status_code)


def test_citations_show_no_server_paths(edge: Edge) -> None:
    body = chat(edge.url, USER).json()
    sources = [c["source"] for c in body["choices"][0]["message"]["citations"]]
    assert sources and not any(s.startswith("/") for s in sources), sources
    assert str(edge.data.parent) not in str(body)

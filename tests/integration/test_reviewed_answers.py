"""A correction helps the next person at once: real server, real MiniLM, the tiny llama.cpp model,
the real `openai` client; the CLI lists, revokes and approves a user's pending correction."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
from click.testing import CliRunner

from tests.fixtures.servers import serve_app
from tests.integration.test_server import client

pytestmark = pytest.mark.integration


def ask(url: str, question: str):
    resp = client(url).chat.completions.create(
        model="localcat", extra_body={"collection": "kbase"},
        messages=[{"role": "user", "content": question}])
    return resp.model_extra["localcat"]["answer_id"], resp.choices[0].message.model_extra["citations"]


def test_a_correction_is_the_first_source_for_the_same_question_asked_again(tiny_runtime, docs_dir):
    from localcat.cli import main
    from localcat.container import Container
    from localcat.server import create_app

    c = Container()
    c.indexer.ingest([docs_dir], "kbase")
    with serve_app(create_app(c, with_ui=False)) as url:
        answer_id, before = ask(url, "How many vacation days do employees get per year?")
        assert not any(ci["reviewed"] for ci in before)
        # A server without keys on loopback: the caller is an admin, so the correction is
        # trusted and served to everyone at once (a user key's would wait for approval, below).
        r = httpx.post(url + "/api/feedback", json={
            "answer_id": answer_id, "rating": "down",
            "correction": "From 2027 every employee gets 30 vacation days a year."})
        assert r.status_code == 200, r.text

        # Same meaning, other words (MiniLM cosine above the measured bar): first source.
        _, after = ask(url, "how many days of vacation does an employee get in a year")
        first = after[0]
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        assert first["reviewed"] and first["source"] == f"corrected by a user on {today}"
        assert "30 vacation days" in first["snippet"]
        assert [ci["n"] for ci in after] == list(range(1, len(after) + 1))
        assert any(ci["source"].endswith("vacation.md") for ci in after[1:])  # documents still shown
        # Unrelated questions get no correction.
        for other in ("What is the helpdesk extension?", "When is the espresso machine descaled?"):
            assert not any(ci["reviewed"] for ci in ask(url, other)[1]), other

        runner = CliRunner()
        listed = runner.invoke(main, ["reviewed", "list", "--json"])
        assert listed.exit_code == 0, listed.output
        [row] = json.loads(listed.stdout)
        assert row["answer_id"] == answer_id and row["collection"] == "kbase"
        revoked = runner.invoke(main, ["reviewed", "revoke", str(row["id"]), "--by", "an admin"])
        assert revoked.exit_code == 0 and "answered from the documents again" in revoked.stdout
        c.reviewed.refresh_s = 0  # the server re-reads within a second; no need to wait here
        _, gone = ask(url, "how many days of vacation does an employee get in a year")
        assert not any(ci["reviewed"] for ci in gone)
        again = runner.invoke(main, ["reviewed", "revoke", str(row["id"])])
        assert again.exit_code == 1 and "already revoked" in again.output

        # The same through the admin API (a loopback server without keys: the caller is admin).
        _, _ = ask(url, "How many vacation days do employees get per year?")
        answer_id, _ = ask(url, "When are laptops replaced?")
        httpx.post(url + "/api/feedback", json={"answer_id": answer_id, "rating": "down",
                                                "correction": "Every 48 months now."})
        listed = httpx.get(url + "/api/reviewed").json()["reviewed"]
        assert [r["answer"] for r in listed] == ["Every 48 months now."]
        assert len(httpx.get(url + "/api/reviewed", params={"revoked": True}).json()["reviewed"]) == 2
        gone = httpx.delete(url + f"/api/reviewed/{listed[0]['id']}")
        assert gone.status_code == 200 and gone.json()["revoked_at"]
        twice = httpx.delete(url + f"/api/reviewed/{listed[0]['id']}")
        assert twice.status_code == 400 and "already revoked" in twice.json()["error"]["message"]
        assert httpx.get(url + "/api/reviewed").json()["reviewed"] == []

        # A user's correction (untrusted) serves no one else until an admin approves it.
        espresso = "When is the espresso machine descaled?"
        answer_id, _ = ask(url, espresso)
        c.feedback.add_feedback(answer_id, "down", correction="Every Monday from May.", user="bob")
        assert not any(ci["reviewed"] for ci in ask(url, espresso)[1])
        listed = runner.invoke(main, ["reviewed", "pending", "--json"])
        assert listed.exit_code == 0, listed.output
        [row] = json.loads(listed.stdout)
        assert (row["user"], row["status"], row["answer_id"]) == ("bob", "pending", answer_id)
        approved = runner.invoke(main, ["reviewed", "approve", str(row["id"]), "--by", "an admin"])
        assert approved.exit_code == 0 and "for everyone" in approved.stdout
        first = ask(url, espresso)[1][0]
        assert first["reviewed"] and "Every Monday" in first["snippet"]

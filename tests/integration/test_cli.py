"""The `localcat` command as a user runs it: real processes, real MiniLM, Chroma and llama.cpp."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import SAMPLES

pytestmark = pytest.mark.integration


def localcat(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "localcat", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_help_is_fast_and_lists_the_commands():
    out = localcat("--help")
    assert out.returncode == 0
    for cmd in ("ingest", "ask", "chat", "serve", "collections", "config"):
        assert cmd in out.stdout


def test_ingest_json_report_and_failure_exit_code(tmp_path):
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4 garbage")
    out = localcat("ingest", str(SAMPLES), str(bad), "--json", "-q")
    assert out.returncode == 1  # one file failed
    report = json.loads(out.stdout)
    assert report["summary"]["added"] == len(list(SAMPLES.iterdir()))
    assert report["summary"]["failed"] == 1
    assert [f["reason"] for f in report["files"] if f["status"] == "failed"][0]

    again = localcat("ingest", str(SAMPLES), "--json", "-q")
    assert again.returncode == 0 and json.loads(again.stdout)["summary"]["skipped"] == report["summary"]["added"]


def test_ask_with_the_default_model_answers_from_the_handbook_with_a_citation():
    """The default embedded model (Qwen2.5-Coder-0.5B, pulled by ./scripts/setup) end to end."""
    assert localcat("ingest", str(SAMPLES), "-q").returncode == 0
    # Where ./scripts/setup pulled it: the user's data dir (the tests' own data dir is empty).
    share = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    pulled = os.path.join(share, "localcat", "models", "catalog")
    out = localcat("ask", "How many vacation days do employees get per year?", "--json",
                   env={"LOCALCAT_LLM__RUNTIME": "embedded", "LOCALCAT_LLM__TEMPERATURE": "0",
                        "LOCALCAT_LLM__MODELS_DIR": pulled})
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["grounded"] and answer["answer"].strip()
    assert "qwen2.5-coder-0.5b" in answer["model"]
    handbook = {c["n"] for c in answer["citations"] if c["source"].endswith("handbook.md")}
    assert any(set(s["sources"]) & handbook for s in answer["sentences"])  # cites the handbook
    top = answer["citations"][0]
    assert top["source"].endswith("handbook.md") and "27" in top["snippet"] + top["heading"]
    assert "27" in answer["answer"]


def test_ask_without_ingest_names_the_fix():
    out = localcat("ask", "anything")
    assert out.returncode == 1
    assert "localcat ingest" in out.stderr and "Traceback" not in out.stderr


def test_ask_with_ollama_down_names_the_fix(tmp_path):
    assert localcat("ingest", str(SAMPLES / "handbook.md"), "-q").returncode == 0
    out = localcat("ask", "vacation days?", env={"LOCALCAT_LLM__RUNTIME": "ollama"})
    assert out.returncode == 1
    assert "ollama serve" in out.stderr and "Traceback" not in out.stderr


def test_chat_keeps_history(tiny_gguf):
    env = {**os.environ, "LOCALCAT_LLM__RUNTIME": "embedded", "LOCALCAT_LLM__MODEL_PATH": str(tiny_gguf)}
    assert localcat("ingest", str(SAMPLES), "-q").returncode == 0
    proc = subprocess.run([sys.executable, "-m", "localcat", "chat"], input="vacation days?\n/quit\n",
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "The answer is in the sources [1]." in proc.stdout and "Sources:" in proc.stdout

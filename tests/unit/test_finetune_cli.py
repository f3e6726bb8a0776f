"""The finetune and models commands: help, clear errors, and the registry from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from core.settings import Settings
from localcat.cli import main
from tests.unit.test_finetune_registry import add, base_file


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = ("import sys, time; t = time.perf_counter(); from localcat.cli import main; "
            "print(time.perf_counter() - t); print(sorted(m for m in ('torch', 'transformers', "
            "'unsloth', 'llama_cpp', 'trl', 'peft', 'sqlalchemy', 'pydantic', 'finetune.cli', "
            "'ingest.cli') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, heavy = out.stdout.splitlines()
    assert heavy == "[]" and float(seconds) < 2.0
    result = CliRunner().invoke(main, ["finetune", "--help"])
    assert result.exit_code == 0
    for command in ("dataset", "train", "eval", "export", "register", "run"):
        assert command in result.output
    assert "models" in CliRunner().invoke(main, ["--help"]).output


def test_steps_on_a_missing_run_say_what_to_do() -> None:
    result = CliRunner().invoke(main, ["finetune", "train"])
    assert result.exit_code == 1
    assert "There is no fine-tune run yet" in result.output and "finetune run" in result.output
    result = CliRunner().invoke(main, ["finetune", "eval", "--run", "../etc"])
    assert result.exit_code == 1 and "Invalid run name" in result.output


def test_models_list_use_rollback(tmp_path: Path) -> None:
    runner = CliRunner()
    assert "No fine-tuned versions yet" in runner.invoke(main, ["models", "list"]).output
    from finetune.registry import ModelRegistry

    base = base_file(tmp_path / "base.gguf")
    with ModelRegistry(Settings().models_dir) as registry:
        add(registry, tmp_path, base, "run-1")
        add(registry, tmp_path, base, "run-2")

    assert runner.invoke(main, ["models", "use", "v2"]).output.startswith("Serving v2")
    listed = runner.invoke(main, ["models", "list"]).output.splitlines()
    assert listed[1].startswith("* v2") and listed[0].startswith("  v1")
    data = json.loads(runner.invoke(main, ["models", "list", "--json"]).output)
    assert [v["active"] for v in data] == [False, True]
    assert "Serving the base model" in runner.invoke(main, ["models", "use", "base"]).output
    assert "serving v2" in runner.invoke(main, ["models", "rollback"]).output

    result = runner.invoke(main, ["models", "use", "v7"])
    assert result.exit_code == 1 and "No model version 'v7'" in result.output


def test_register_without_export_says_what_to_do(tmp_path: Path) -> None:
    run = Settings().data_dir / "finetune" / "r1" / "dataset"
    run.mkdir(parents=True)
    (run / "report.json").write_text("{}")
    base = base_file(tmp_path / "base.gguf")
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["finetune", "register", "--run", "r1", "--base", str(base)])
    assert result.exit_code == 1
    assert "has not been exported" in result.output and "finetune export --run r1" in result.output
    assert time.perf_counter() - started < 5

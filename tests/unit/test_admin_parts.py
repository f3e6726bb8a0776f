"""The Admin tab's parts that need no browser: the fine-tune run's process and its output as the
page shows it, the command line the page builds, and what the tables and snapshot render."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from assistant.feedback import Feedback, Served
from core.schemas import Answer, Citation
from ui.admin import (
    FinetuneJob,
    finetune_argv,
    monitoring_figure,
    monitoring_table,
    snapshot_html,
)


def job(script: str, tmp_path: Path) -> FinetuneJob:
    return FinetuneJob([sys.executable, "-c", script], os.environ, tmp_path / "run-x")


def wait(j: FinetuneJob, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while j.running and time.monotonic() < deadline:
        time.sleep(0.05)


def test_output_keeps_lines_and_progress_bars_replace_theirs(tmp_path: Path) -> None:
    # As tqdm draws on stderr: each update starts with a carriage return; UTF-8 split mid-way.
    script = ("import sys, time\n"
              "print('data set: 6 rated answers', file=sys.stderr, flush=True)\n"
              "for i in range(4):\n"
              "    sys.stderr.write(f'\\rtrain: {i}/3 █'); sys.stderr.flush(); time.sleep(0.02)\n"
              "sys.stderr.write('\\n')\n"
              "sys.stdout.buffer.write('v1 promoted ✓'.encode()[:-1]); sys.stdout.flush()\n"
              "sys.stdout.buffer.write('✓'.encode()[-1:] + b'\\r\\n')\n")
    j = job(script, tmp_path)
    wait(j)
    assert not j.running and j.returncode == 0
    assert j.output() == "data set: 6 rated answers\ntrain: 3/3 █\nv1 promoted ✓"
    assert j.status().startswith("✅ Run `run-x` finished in ") and j.status().endswith(
        ": v1 promoted ✓")


def test_a_failed_run_says_so_with_its_last_line(tmp_path: Path) -> None:
    j = job("import sys; sys.exit('Error: Too little feedback to fine-tune')", tmp_path)
    wait(j)
    assert j.returncode == 1
    assert "failed" in j.status() and j.status().endswith("Too little feedback to fine-tune")


def test_stop_ends_the_run_and_what_it_started(tmp_path: Path) -> None:
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(60)\n")
    j = job(script, tmp_path)
    deadline = time.monotonic() + 30
    while not j.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(j.output())
    assert j.running and "is running" in j.status()
    j.stop()
    assert not j.running and j.returncode == -15 and "was stopped" in j.status()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_the_command_line() -> None:
    assert finetune_argv("run-1")[1:] == ["-m", "localcat", "finetune", "run", "--run", "run-1"]
    argv = finetune_argv("run-1", steps=4.0, min_examples=2, only="retrieval", collection="kb1",
                         base="/m/base.gguf", force=True, ollama=False)
    assert argv[7:] == ["--steps", "4", "--min-examples", "2", "--only", "retrieval",
                        "--collection", "kb1", "--base", "/m/base.gguf", "--force", "--no-ollama"]
    # The collection only matters to the retrieval part.
    assert "--collection" not in finetune_argv("r", only="generation", collection="kb1")


def test_the_snapshot_escapes_what_users_wrote() -> None:
    answer = Answer(id="ans_1", question="<script>alert(1)</script>?", standalone_question="q",
                    collection="kb1", answer="Yes <b>[1]</b>.", grounded=True, model="m",
                    prompt_version="rag-v2", latency_s=1.234, citations=[Citation(
                        n=1, chunk_id="c1", source="/d/a.md", heading="Intro", snippet="<i>x</i>",
                        score=0.5, cited=True)])
    verdict = Feedback(id=7, answer_id="ans_1", rating="down", correction="No <img src=x>.",
                       user="bob", created_at=answer.created_at)
    page = snapshot_html(answer, [verdict])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<img" not in page and "<b>[1]" not in page and "<i>x" not in page
    assert "As searched:</b> q" in page and "1.23 s" in page and "§ Intro" in page
    assert "#7 👎" in page and "by bob" in page and "✓ cited" in page


def test_monitoring_renders_rates_as_percentages_and_a_figure() -> None:
    rows = [Served(day=f"2026-01-0{d}", model="m", collection="kb1", answers=4, rated=d,
                   up=1, down=d - 1, corrected=1, not_found=0, timed=4, latency_mean_s=0.5 * d,
                   latency_max_s=d) for d in (1, 2)]
    assert monitoring_table(rows)[1][3:9] == [4, "50%", "25%", "0%", "1.00", "2.00"]
    unrated = rows[0].model_copy(update={"rated": 0, "up": 0, "timed": 0,
                                         "latency_mean_s": None})
    assert monitoring_table([unrated])[0][4] == "–" and monitoring_table([unrated])[0][7] == "–"
    figure = monitoring_figure(rows)
    assert len(figure.axes) == 4 and len(figure.axes[0].lines) == 1

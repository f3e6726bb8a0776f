"""bench/learning_loop.py in CI-size time: the loop through a real `localcat serve` (a fake
Ollama answers), feedback over HTTP, `localcat finetune retrieval` beside it, held-out figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICES = ["ledger", "atlas", "quartz", "harbor", "falcon", "cobalt", "meadow", "signal", "tundra",
            "orchid", "piston", "lantern", "basalt", "juniper", "vortex", "saffron", "granite",
            "willow", "ember", "nimbus", "kestrel", "marble", "cinder", "aurora", "bramble",
            "citadel", "dynamo", "fjord", "glacier", "hollow", "indigo", "jasper", "kelp", "lagoon",
            "mosaic", "nectar", "onyx", "prairie", "quiver", "rapids"]


def tiny_faq(folder: Path) -> None:
    """A BEIR folder with answers.jsonl: one runbook page and one question per service."""
    (folder / "qrels").mkdir(parents=True)
    corpus, queries, qrels, answers = [], [], ["query-id\tcorpus-id\tscore"], []
    for n, name in enumerate(SERVICES):
        answer = (f"Run `svc restart {name}` on the {name} host, then wait {n + 2} minutes "
                  f"before checking the {name} dashboard.")
        corpus.append({"_id": f"runbook/{name}", "title": name,
                       "text": f"The {name} service keeps its data in vault {n}. {answer}"})
        qid = f"q{n:03d}"
        queries.append({"_id": qid, "text": f"How do I restart the {name} service?"})
        qrels.append(f"{qid}\trunbook/{name}\t1")
        answers.append({"id": qid, "question": queries[-1]["text"], "answer": answer,
                        "source": f"runbook/{name}", "split": "dev"})
    for name, rows in (("corpus", corpus), ("queries", queries), ("answers", answers)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")


def test_learning_loop_bench_runs_through_the_http_api(tmp_path):
    tiny_faq(tmp_path / "set")
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "learning_loop.py"), "--set", str(tmp_path / "set"),
         "--rows", "12", "40", "--model", "fake", "--distractors", "-1",
         "--work-dir", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if re.match(r"\| \d+ \|", line)]
    trainable = int(re.search(r"(\d+) questions can train", done.stderr).group(1))
    assert 12 < trainable < len(SERVICES)
    assert [int(line.split("|")[1]) for line in table] == [12, trainable], done.stdout
    for line in table:
        before, after = map(float, re.search(r"([\d.]+) → ([\d.]+)", line).groups())
        assert 0 < before <= 1 and 0 < after <= 1
        # Too few held-out questions to judge: the gate refuses whatever the figures say.
        assert "would refuse" in line
    # Every question was asked through the server and corrected there: the held-out ones first
    # (rated, never trained), then the train ones.
    import sqlite3

    with sqlite3.connect(tmp_path / "work" / "data" / "feedback.sqlite") as db:
        corrected = db.execute("SELECT count(DISTINCT a.question) FROM feedback f JOIN answers a "
                               "ON a.id = f.answer_id WHERE f.correction IS NOT NULL").fetchone()[0]
    assert corrected == len(SERVICES)

"""`localcat eval` on a tiny BEIR folder, with the real MiniLM and an embedded Chroma."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.integration

DOCS = {
    "vacation": "Every employee gets 27 vacation days per calendar year. Unused vacation days "
                "carry over until March 31 of the next year.",
    "helpdesk": "The IT helpdesk answers on extension 4417. Password resets are self-service at "
                "the identity portal.",
    "espresso": "The espresso machine in the kitchen is descaled every Friday by the facilities "
                "team.",
    "parking": "Parking permits for the staff car park are issued by reception and renewed every "
               "January.",
    "expenses": "Submit expense reports with receipts within 30 days of the purchase through the "
                "finance portal.",
    "fire": "A fire drill takes place twice a year; leave the building by the nearest stairway "
            "and meet at the assembly point in the north car park.",
}
QUERIES = {
    "q1": ("How many vacation days do employees get per year?", "vacation"),
    "q2": ("What is the helpdesk extension?", "helpdesk"),
    "q3": ("When is the espresso machine descaled?", "espresso"),
    "q4": ("Who issues parking permits?", "parking"),
    "q5": ("How soon must expense reports be submitted?", "expenses"),
    "q6": ("Where do we meet during a fire drill?", "fire"),
}


@pytest.fixture
def beir(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in DOCS.items()))
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, (t, _) in QUERIES.items()))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, (_, d) in QUERIES.items()))
    (folder / "unanswerable.jsonl").write_text(
        json.dumps({"_id": "u1", "text": "quantum chromodynamics of neutron stars",
                    "metadata": {"kind": "off-topic"}}) + "\n")
    return folder


def test_eval_scores_trivial_queries_and_matches_the_retriever(beir, tmp_path):
    from assistant.retriever import COVERAGE_DEPTH
    from core.settings import Settings
    from localcat.container import Container
    from localcat.evaluation import Candidates, eval_command, rank

    work = tmp_path / "work"
    png = tmp_path / "eval.png"
    args = [str(beir), "--work-dir", str(work), "--json", "-q", "--plot", str(png)]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    assert report["dataset"] == {"documents": 6, "queries": 6, "unanswerable": 1,
                                 "folder": str(beir)}
    assert report["chunks"] == 6 and report["ingest"]["added"] == 6
    fused, dense, bm25 = (report["metrics"][m] for m in ("fused", "dense", "bm25"))
    assert fused["hit@10"] == 1.0 and fused["recall@10"] == 1.0
    assert dense["hit@1"] == 1.0 and dense["ndcg@10"] == 1.0
    for metrics in (fused, dense, bm25):
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
        assert metrics["hit@1"] <= metrics["hit@3"] <= metrics["hit@5"] <= metrics["hit@10"]
    assert report["thresholds"]["current"]["nothing_found"] == 0.0
    assert len(report["thresholds"]["sweep"]) > 10
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The offline ranking the report is built from is the one HybridRetriever.search returns.
    settings = Settings().model_copy(update={"data_dir": work / "data"})
    c = Container(settings)
    retriever = c.retriever(report["collection"])
    rs = settings.retrieval
    n = max(rs.candidates, rs.k)
    for text, _ in [*QUERIES.values(), ("quantum chromodynamics of neutron stars", None)]:
        lexical = c.bm25.search(report["collection"], text, n)
        top = [i for i, _ in lexical[:COVERAGE_DEPTH]]
        cands = Candidates(retriever.dense(text, n), lexical,
                           c.bm25.coverage(report["collection"], text, top))
        assert rank(cands, rs)[: rs.k] == [d.id for d in retriever.search(text)]

    # A second run over the kept work dir re-embeds nothing.
    again = CliRunner().invoke(eval_command, [*args[:-2], "--no-plot"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["ingest"]["skipped"] == 6


def test_eval_is_a_localcat_command():
    out = subprocess.run([sys.executable, "-m", "assistant", "eval", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "BEIR" in out.stdout and "--json" in out.stdout

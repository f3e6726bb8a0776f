"""`localcat eval` on a tiny BEIR folder, with the real MiniLM and an embedded Chroma."""

from __future__ import annotations

import json
import re
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
                           c.bm25.coverage(report["collection"], text, top), text)
        assert rank(cands, rs)[: rs.k] == [d.id for d in retriever.search(text)]

    # A second run over the kept work dir re-embeds nothing.
    again = CliRunner().invoke(eval_command, [*args[:-2], "--no-plot"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["ingest"]["skipped"] == 6


def test_eval_is_a_localcat_command():
    out = subprocess.run([sys.executable, "-m", "localcat", "eval", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "BEIR" in out.stdout and "--json" in out.stdout


MARKS = re.compile(r"\s*\[\d+\]")


def check_citations(metrics: dict, rows: list[dict], sources: set[str]) -> None:
    """The citation figures agree with the [n] marks of the answers and the chunks shown."""
    citing = [r for r in rows if r["answerable"] and r["cited"]]
    assert metrics["cited"] == len(citing) / sum(r["answerable"] for r in rows)
    for r in citing:
        docs = [r["shown"][n - 1] for n in r["cited"]]
        assert r["citation_correct"] == sum(d in sources for d in docs) / len(docs)
    if not citing:
        assert metrics["citation_correct"] is None


def test_eval_answers_runs_the_real_pipeline_per_model(tiny_runtime, tmp_path):
    """Three questions of the committed samples set, asked through the real pipeline (MiniLM,
    Chroma, llama.cpp with the tiny model) by two models side by side."""
    from localcat.evaluation import eval_command
    from localcat.evaluation.report import ANSWER_ROWS
    from tests.conftest import REPO, SAMPLES
    from tests.fixtures.tiny_model import TINY_ANSWER

    work, png = tmp_path / "work", tmp_path / "answers.png"
    args = ["--answers", str(REPO / "bench" / "answers-samples.jsonl"), "--docs", str(SAMPLES),
            "--limit", "3", "--work-dir", str(work), "-q"]
    models = ["--model", "default", "--model", str(tiny_runtime)]
    result = CliRunner().invoke(eval_command, [*args, *models, "--json", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    assert report["dataset"]["questions"] == 3
    assert (report["dataset"]["answerable"], report["dataset"]["unanswerable"]) == (2, 1)
    assert report["ingest"]["added"] == len(list(SAMPLES.iterdir())) and report["chunks"] > 6
    assert list(report["models"]) == ["default", str(tiny_runtime)]
    for model in report["models"].values():
        assert "localcat-tiny" in model["tag"]
        m = model["metrics"]
        assert set(m) == {key for key, _, _ in ANSWER_ROWS}
        for key, _, unit in ANSWER_ROWS:
            if key == "citation_correct" and not m["cited"]:
                continue  # measured only over answers that cite (the pipeline keeps or drops marks)
            assert m[key] is not None, key
            assert 0.0 <= m[key] <= 1.0 if unit == "share" else m[key] > 0, key
        rows = model["answers"]
        assert [r["id"] for r in rows] == ["s01", "s02", "u01"]
        check_citations(m, rows, {"handbook.md"})
        # The easy questions find their file.
        assert m["source_shown"] == 1.0 and rows[0]["shown"][0] == "handbook.md"
        # The tiny model says nothing of the reference, so it recalls little of it.
        assert [MARKS.sub("", r["answer"]) for r in rows[:2]] == [MARKS.sub("", TINY_ANSWER)] * 2
        assert m["key_fact_recall"] < 0.2
        # The off-topic question is turned away by the relevance bar: the pipeline's not-found.
        assert m["refusal"] == 1.0 and m["not_found"] == 0.0
        assert rows[2]["grounded"] is False and rows[2]["refused"] is True
        assert m["latency_p50_s"] <= m["latency_p95_s"] and m["ttft_p50_s"] <= m["latency_p95_s"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The table, over the kept index: one column per model, one row per measure.
    table = CliRunner().invoke(eval_command, [*args, "--no-plot"])
    assert table.exit_code == 0, table.output
    assert "key-fact recall" in table.stdout and "default" in table.stdout
    assert "tokens/s" in table.stdout


def test_eval_answers_on_a_beir_corpus_match_sources_by_doc_id(beir, tiny_runtime, tmp_path):
    from localcat.evaluation import eval_command

    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "q1", "question": QUERIES["q1"][0], "answer": DOCS["vacation"], "source": "vacation"},
        {"id": "q2", "question": QUERIES["q2"][0], "answer": DOCS["helpdesk"],
         "source": ["helpdesk", "espresso"]},
    ]))
    records = tmp_path / "records.jsonl"
    result = CliRunner().invoke(eval_command, [str(beir), "--answers", str(answers), "--json",
                                               "--no-plot", "-q", "--records", str(records)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"]["docs"] == [str(beir)] and report["chunks"] == 6
    m = report["models"]["default"]
    assert [r["shown"][0] for r in m["answers"]] == ["vacation", "helpdesk"]
    assert m["metrics"]["source_shown"] == 1.0
    check_citations(m["metrics"], m["answers"], {"vacation", "helpdesk", "espresso"})
    assert m["metrics"]["refusal"] is None  # no unanswerable question in this set

    # The records hold what was shown and said; scored offline they give the report's figures.
    from localcat.evaluation.records import read_records, score_record

    kept = read_records(records)
    assert [(r.model, r.id) for r in kept] == [("default", "q1"), ("default", "q2")]
    for record, row in zip(kept, m["answers"], strict=True):
        assert [c.doc for c in record.shown] == row["shown"] and record.answer == row["answer"]
        assert record.shown[0].text and record.raw_answer
        again = score_record(record)
        for key in ("cited", "citation_correct", "grounded_cites_source", "key_fact_recall"):
            assert again[key] == row[key], key

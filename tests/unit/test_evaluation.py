"""Retrieval metrics and ranking against cases worked out by hand."""

from __future__ import annotations

import json
import math

import pytest

from core.bm25 import names_exact_terms
from core.errors import ConfigError
from core.settings import RetrievalSettings
from localcat.evaluation import (
    Candidates,
    doc_ranking,
    hit_at_k,
    load_beir,
    mode_settings,
    mrr_at_k,
    ndcg_at_k,
    rank,
    recall_at_k,
    score_run,
    threshold_rates,
    unfiltered,
)


def test_ndcg_binary_by_hand():
    # DCG = 1/log2(2) + 0 + 1/log2(4) = 1.5; ideal = 1 + 1/log2(3) = 1.63093
    assert ndcg_at_k(["a", "x", "b"], {"a": 1, "b": 1}) == pytest.approx(1.5 / 1.6309298, abs=1e-6)
    assert ndcg_at_k(["a", "b"], {"a": 1, "b": 1}) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], {"a": 1}) == 0.0


def test_ndcg_graded_and_cut_at_k():
    # Linear gains as pytrec_eval: DCG = 1 + 2/log2(3) = 2.26186; ideal = 2 + 1/log2(3) = 2.63093
    assert ndcg_at_k(["b", "a"], {"a": 2, "b": 1}) == pytest.approx(0.859719, abs=1e-6)
    # The relevant document at rank 11 is outside @10.
    ranked = [f"x{i}" for i in range(10)] + ["a"]
    assert ndcg_at_k(ranked, {"a": 1}) == 0.0
    # One relevant at rank 2 of a single-relevant query: 1/log2(3).
    assert ndcg_at_k(["x", "a"], {"a": 1}) == pytest.approx(1 / math.log2(3))


def test_recall_mrr_hit_by_hand():
    rels = {"a": 1, "b": 1}
    assert recall_at_k(["a", "x", "b"], rels, 2) == 0.5
    assert recall_at_k(["a", "x", "b"], rels, 10) == 1.0
    assert mrr_at_k(["x", "y", "a"], rels) == pytest.approx(1 / 3)
    assert mrr_at_k(["x"] * 10 + ["a"], rels) == 0.0  # beyond @10
    assert [hit_at_k(["x", "y", "a"], rels, k) for k in (1, 3, 5)] == [0.0, 1.0, 1.0]
    assert recall_at_k(["a"], {"a": 0}, 10) == 0.0  # grade 0 is not relevant


def test_score_run_averages_over_qrels_and_zeroes_missing_queries():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    scores = score_run({"q1": ["a"], "q3": ["b"]}, qrels)
    assert scores["hit@1"] == 0.5 and scores["mrr@10"] == 0.5 and scores["ndcg@10"] == 0.5
    assert set(scores) == {"ndcg@10", "recall@10", "mrr@10", "hit@1", "hit@3", "hit@5", "hit@10"}


def test_doc_ranking_keeps_each_documents_best_chunk():
    chunk_doc = {"c1": "A", "c2": "B", "c3": "A", "c4": "C"}
    assert doc_ranking(["c3", "c2", "c1", "gone", "c4"], chunk_doc) == ["A", "B", "C"]


def test_rank_fuses_like_the_retriever_and_modes_switch_a_side_off():
    rs = RetrievalSettings(rrf_k=60, candidates=20, min_similarity=0.3, min_coverage=0.7)
    c = Candidates(dense=[("a", 0.5), ("b", 0.4), ("c", 0.1)], lexical=[("c", 9.0), ("d", 1.0)],
                   coverage=0.8, query="what does os.path do")
    # fused: a = 1/61, b = 1/62, c = 1/63 + 1/61, d = 1/62 → c, a, then b/d tie in insertion order
    assert rank(c, unfiltered(rs)) == ["c", "a", "b", "d"]
    # The bar is per question: once it passes, the fused order decides, weak chunks too; the
    # words of the top BM25 hits (coverage 0.8 >= 0.7) carry a question the dense side doubts.
    assert rank(c, rs) == ["c", "a", "b", "d"]
    assert rank(c, rs.model_copy(update={"min_similarity": 0.6, "min_coverage": 0.9})) == []
    assert rank(c, rs.model_copy(update={"min_similarity": 0.6})) == ["c", "a", "b", "d"]
    assert rank(c, unfiltered(mode_settings(rs, "dense"))) == ["a", "b", "c"]
    assert rank(c, unfiltered(mode_settings(rs, "bm25"))) == ["c", "d"]
    # BM25 switched off cannot carry a question over the bar.
    assert rank(c, mode_settings(rs, "dense").model_copy(update={"min_similarity": 0.6})) == []
    # Each side is cut to max(candidates, k) before fusing: a and c tie at 1/61, dense first.
    short = unfiltered(rs).model_copy(update={"candidates": 1, "k": 1})
    assert rank(c, short) == ["a", "c"]


def test_bm25_weighs_less_for_a_question_in_prose_words():
    rs = unfiltered(RetrievalSettings(rrf_k=1, candidates=20, prose_bm25_weight=0.25))
    dense, lexical = [("a", 0.5), ("b", 0.4), ("c", 0.1)], [("c", 9.0), ("b", 1.0)]
    # an exact term: full BM25 weight, c = 1/4 + 1/2 beats a = 1/2
    assert rank(Candidates(dense, lexical, query="what is SOUND_MIXER_SYNTH for"), rs)[0] == "c"
    # prose: c = 1/4 + 0.25/2 = 0.375 stays under a; b = 1/3 + 0.25/3 ≈ 0.42 passes c
    assert rank(Candidates(dense, lexical, query="how do I mix sounds"), rs) == ["a", "b", "c"]
    # weight 0 leaves BM25-only chunks out of the ranking
    off = rs.model_copy(update={"prose_bm25_weight": 0.0})
    assert rank(Candidates(dense, [("d", 9.0)], query="how do I mix sounds"), off) == ["a", "b", "c"]
    # ... but BM25 alone still ranks a prose question
    prose = Candidates(dense, lexical, query="how do I mix sounds")
    assert rank(prose, mode_settings(off, "bm25")) == ["c", "b"]


@pytest.mark.parametrize(("query", "exact"), [
    ("how do I use os.path", True), ("SOUND_MIXER_SYNTH", True), ("why does len() fail", True),
    ("what does getElementById return", True), ("what is EXCLUSIVE for?", True),
    ("what is the helpdesk extension 4417", True), ("what does `x` mean", True),
    ("Why are floating-point calculations so inaccurate?", False),
    ("How do I convert a number to a string?", False), ("Is Python 3 free?", False),
])
def test_exact_terms_are_identifiers_code_and_long_numbers(query, exact):
    assert names_exact_terms(query) is exact


def test_threshold_rates_count_nothing_found_and_off_topic_hits():
    rs = RetrievalSettings(k=1, min_similarity=0.3, min_coverage=0.7)
    answerable = {"q1": Candidates([("a", 0.6)], []), "q2": Candidates([("x", 0.1)], [])}
    qrels = {"q1": {"A": 1}, "q2": {"B": 1}}
    unanswerable = {"u1": Candidates([("x", 0.2)], [("x", 6.0)], coverage=0.75),
                    "u2": Candidates([("x", 0.1)], [("x", 6.0)], coverage=0.5)}
    rates = threshold_rates(answerable, qrels, unanswerable, {"u1": "off", "u2": "off"},
                            {"a": "A", "x": "X"}, rs)
    assert rates == {"nothing_found": 0.5, "answer_in_top_k": 0.5, "retrieved[off]": 0.5}


def write_beir(folder, qrels_text: str) -> None:
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": "d1", "title": "T", "text": "one"}, {"_id": "d2", "text": "two"}]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    queries = [{"_id": "q1", "text": "first?"}, {"_id": "q2", "text": "second?"}]
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (folder / "qrels" / "test.tsv").write_text(qrels_text)


def test_load_beir_reads_header_trec_rows_and_drops_unjudged(tmp_path):
    write_beir(tmp_path, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td9\t1\nq2 0 d2 2\nq2\td1\t0\n")
    (tmp_path / "unanswerable.jsonl").write_text(
        json.dumps({"_id": "u1", "text": "pizza?", "metadata": {"kind": "off-topic"}}) + "\n")
    data = load_beir(tmp_path)
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert data.corpus["d1"] == ("T", "one") and data.corpus["d2"] == ("", "two")
    assert data.unanswerable == {"u1": ("pizza?", "off-topic")}


def test_load_beir_names_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match="qrels/test.tsv is missing"):
        write_beir(tmp_path, "")
        (tmp_path / "qrels" / "test.tsv").unlink()
        load_beir(tmp_path)
    (tmp_path / "qrels" / "test.tsv").write_text("q1\tnope\t1\n")
    with pytest.raises(ConfigError, match="has a relevant document"):
        load_beir(tmp_path)

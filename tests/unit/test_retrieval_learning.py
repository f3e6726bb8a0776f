"""Retrieval learning in units: feedback → pairs, the gate, the version records and switches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.chroma import version_vectors
from core.chunkstore import ChunkStore, EmbedderChanged, check_collection_name, parse_version
from core.errors import BadRequest, ConfigError
from core.prompt import PROMPT_VERSION
from core.schemas import Answer, Chunk, Citation
from core.settings import FinetuneSettings
from finetune.dataset import split_of
from finetune.retrieval import build_pairs, decide, ndcg_at_10, training_rows

TEXTS = {
    "a": "Travel costs are refunded through the finance portal within 30 days.",
    "b": "A new laptop is ordered from the IT catalogue.",
    "c": "Parental leave is requested from human resources in writing.",
    "d": "Visitors sign the guest book at the entrance.",
}


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    s = ChunkStore(tmp_path / "index.sqlite")
    s.ensure_collection("kbase", "all-MiniLM-L6-v2", 384)
    for key, text in TEXTS.items():
        chunk = Chunk(id=key, text=text, source=f"/docs/{key}.txt", file_hash=key, position=0)
        s.mark_pending("kbase", chunk.source, key, "emb=all-MiniLM-L6-v2;size=1000;overlap=150")
        s.commit_file("kbase", chunk.source, key, "emb=all-MiniLM-L6-v2;size=1000;overlap=150",
                      [chunk])
    return s


def verdict(question: str, shown: list[str], *, rating: str | None = None,
            correction: str | None = None, cited: tuple[str, ...] = (),
            collection: str = "kbase", standalone: str | None = None) -> dict[str, Any]:
    citations = [Citation(n=n, chunk_id=i, source=f"/docs/{i}.txt", snippet=TEXTS[i][:40] + "…",
                          score=0.5, cited=i in cited) for n, i in enumerate(shown, 1)]
    answer = Answer(question=question, standalone_question=standalone or question,
                    collection=collection, answer="…", citations=citations, grounded=bool(shown),
                    model="test", prompt_version=PROMPT_VERSION)
    return {"id": 1, "rating": rating, "correction": correction,
            "answer": answer.model_dump(mode="json")}


class Search:
    """The served retriever as the pair builder sees it: text → chunk ids, recording calls."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers, self.calls = answers, []

    def __call__(self, text: str) -> list[str]:
        self.calls.append(text)
        return self.answers.get(text, [])


FT = FinetuneSettings()


def by_question(questions) -> dict[str, Any]:
    return {q.question: q for q in questions}


def test_thumbs_up_ties_the_question_to_cited_chunks_or_else_the_top_shown_one(store) -> None:
    questions, report = build_pairs([
        verdict("refunds for trips?", ["b", "a", "c"], rating="up", cited=("a",)),
        verdict("new computer?", ["b", "d"], rating="up"),
    ], "kbase", store, Search({}), FT)
    q = by_question(questions)
    assert q["refunds for trips?"].positives == ["a"] and q["refunds for trips?"].negatives == []
    assert q["new computer?"].positives == ["b"]  # nothing cited: the first shown
    assert report.sources == {"thumbs_up": 2} and report.pairs == 2 - report.questions["test"]


def test_a_correction_finds_its_chunk_by_searching_the_correction_text(store) -> None:
    search = Search({"Ask HR, in writing.": ["c", "a"], "No idea": []})
    questions, report = build_pairs([
        verdict("baby leave?", ["a", "b"], correction="Ask HR, in writing."),
        verdict("guest rules?", ["d"], rating="up", cited=("d",), correction="Ask HR, in writing."),
        verdict("anything?", ["a"], correction="No idea"),
        verdict("what about pets?", [], correction="No idea"),  # nothing was shown, no match
    ], "kbase", store, search, FT)
    q = by_question(questions)
    assert q["baby leave?"].positives == ["c"]  # only the best match, not the shown chunks
    assert q["baby leave?"].negatives == []  # not rated down: the shown chunks may be fine
    assert q["guest rules?"].positives == ["d", "c"]  # rated up: its cited chunk counts too
    assert "anything?" not in q and report.dropped == {"correction_unmatched": 2}
    assert search.calls == ["Ask HR, in writing.", "No idea"]  # each text searched once


def test_thumbs_down_gives_hard_negatives_never_a_confirmed_chunk(store) -> None:
    questions, report = build_pairs([
        verdict("laptop?", ["a", "d", "b"], rating="down"),
        verdict("Laptop", ["d", "b"], rating="up", cited=("b",)),  # the same question, normalised
        verdict("lost dog?", ["a"], rating="down"),  # no positive anywhere: unusable
        verdict("trip money?", ["b", "c"], rating="down", correction="Finance portal, 30 days."),
    ], "kbase", store, Search({"Finance portal, 30 days.": ["a"]}), FT)
    q = by_question(questions)
    assert q["laptop?"].positives == ["b"] and q["laptop?"].negatives == ["a", "d"]
    assert q["trip money?"].positives == ["a"] and q["trip money?"].negatives == ["b", "c"]
    assert "lost dog?" not in q and report.dropped == {"question_without_positive": 1}
    assert report.sources == {"thumbs_down": 1, "thumbs_up": 1, "correction": 1}
    pairs, triplets = training_rows([q["laptop?"]], max_negatives=1)
    if q["laptop?"].split != "test":
        assert (pairs, triplets) == ([], [("laptop?", "b", "a")])
    assert training_rows([q["laptop?"]], max_negatives=0)[0] in ([], [("laptop?", "b")])


def test_only_this_collection_live_chunks_and_clean_rows_count(store) -> None:
    store.remove_file("kbase", "/docs/d.txt")
    questions, report = build_pairs([
        verdict("visitors?", ["a"], rating="up", cited=("a",), collection="other"),
        verdict("guest book?", ["d"], rating="up", cited=("d",)),  # its chunk is gone
        verdict("is this shit refunded?", ["a"], rating="up"),
        verdict("changed text?", ["b"], rating="up", standalone="the laptop text?"),
    ], "kbase", store, Search({}), FT)
    assert report.feedback_rows == 3  # the other collection's verdict is not this one's
    assert report.dropped == {"no_chunk": 1, "blocked": 1}
    # The retriever was asked the standalone question: that is what learns.
    assert [q.question for q in questions] == ["the laptop text?"]


def test_a_chunk_whose_text_changed_under_an_old_id_is_not_used(store) -> None:
    with store.transaction() as db:  # a pre-content-id alias now pointing at other text
        db.exec_driver_sql(
            "INSERT INTO chunk_aliases (collection, old_id, new_id) VALUES ('kbase','old','b')")
    v = verdict("trips?", ["a"], rating="up")
    v["answer"]["citations"][0]["chunk_id"] = "old"  # showed a's text under the old id
    questions, report = build_pairs([v], "kbase", store, Search({}), FT)
    assert questions == [] and report.dropped == {"no_chunk": 1}


def test_test_questions_never_train_and_the_digest_follows_the_data(store) -> None:
    asks = [f"question number {i} about travel?" for i in range(40)]
    rows = [verdict(q, ["a"], rating="up") for q in asks]
    questions, report = build_pairs(rows, "kbase", store, Search({}), FT)
    test = {q.question for q in questions if q.split == "test"}
    assert test == {q for q in asks if split_of(q, FT) == "test"} and test
    pairs, _ = training_rows(questions, 3)
    assert {a for a, _ in pairs}.isdisjoint(test) and len(pairs) == 40 - len(test)
    again = build_pairs(rows, "kbase", store, Search({}), FT)[1]
    assert again.sha256 == report.sha256
    other = build_pairs(rows[:-1], "kbase", store, Search({}), FT)[1]
    assert other.sha256 != report.sha256


def test_ndcg_matches_the_eval_command_definition() -> None:
    from localcat.evaluation.metrics import ndcg_at_k

    for ranked, relevant in [(["x", "a", "y"], {"a"}), (["a", "b"], {"b", "a"}),
                             ([f"n{i}" for i in range(12)] + ["a"], {"a"}), (["a"], {"a", "b", "c"})]:
        assert ndcg_at_10(ranked, relevant) == pytest.approx(
            ndcg_at_k(ranked, dict.fromkeys(relevant, 1), 10))


S = FinetuneSettings(gate_min_questions=10, gate_resamples=500)


def test_the_gate_promotes_only_a_gain_beyond_noise_on_enough_questions() -> None:
    old = [0.2, 0.5, 0.0, 0.3, 0.6, 0.1, 0.4, 0.2, 0.5, 0.3, 0.0, 0.2]
    better = [x + 0.4 for x in old]
    gate = decide(better, old, S)
    assert gate.promoted and not gate.forced and gate.low > 0
    assert gate.ndcg_candidate == pytest.approx(gate.ndcg_served + 0.4)
    assert gate.reason.startswith("better than the served version: +0.400 nDCG@10")

    noisy = [x + (0.3 if i % 2 else -0.3) for i, x in enumerate(old)]
    gate = decide(noisy, old, S)
    assert not gate.promoted and gate.low < 0 < gate.high
    assert gate.reason.startswith("not better beyond noise")

    few = decide(better[:9], old[:9], S)
    assert not few.promoted and few.gain is None
    assert few.reason == "too little data to judge: only 9 test questions (10 needed)"
    forced = decide(better[:9], old[:9], S, force=True)
    assert forced.promoted and forced.forced and "promoted anyway (--force)" in forced.reason
    assert not decide(old, better, S).promoted  # worse is never better


# --- version records ------------------------------------------------------------------------------


def learned_version(store: ChunkStore, tmp_path: Path) -> int:
    v = store.new_retrieval_version("kbase", lambda n: str(tmp_path / f"r{n}"), {"x": 1})
    return v.version


def test_versions_are_recorded_and_switched_in_one_step(store, tmp_path: Path) -> None:
    assert [(v.name, v.active) for v in store.retrieval_versions("kbase")] == [("r0", True)]
    assert store.vectors_name("kbase") == "kbase" and store.vectors_name("unknown") == "unknown"
    n = learned_version(store, tmp_path)
    r1 = store.retrieval_version("kbase", n)
    assert (r1.name, r1.status, r1.vectors, r1.embedder) == (
        "r1", "building", "kbase--r1", str(tmp_path / "r1"))
    assert r1.metrics == {"x": 1} and not r1.active

    ids = store.chunk_ids("kbase")
    assert not store.switch_version("kbase", 1, ids - {"a"})  # a chunk without a vector yet
    assert store.serving("kbase").version == 0
    assert store.switch_version("kbase", 1, ids)
    served = store.serving("kbase")
    assert (served.name, served.status, served.embedder, served.vectors) == (
        "r1", "ready", r1.embedder, "kbase--r1")
    assert store.embedder_of("kbase") == r1.embedder and store.vectors_name("kbase") == "kbase--r1"
    # The files now name the new embedder, so an ingest of unchanged files skips them.
    assert {f.config for f in store.files("kbase")} == {f"emb={r1.embedder};size=1000;overlap=150"}
    assert store.previous_version("kbase") == 0

    assert store.switch_version("kbase", 0, ids)  # back: r0 keeps the ingest embedder
    assert store.serving("kbase").embedder == "all-MiniLM-L6-v2"
    assert {f.config for f in store.files("kbase")} == {"emb=all-MiniLM-L6-v2;size=1000;overlap=150"}
    assert store.previous_version("kbase") == 1
    assert [v.name for v in store.retrieval_versions("kbase")] == ["r0", "r1"]
    with pytest.raises(BadRequest, match="no retrieval version r7"):
        store.retrieval_version("kbase", 7)
    store.drop_collection("kbase")
    assert store.previous_version("kbase") is None


def test_no_switch_while_an_ingest_is_writing(store, tmp_path: Path) -> None:
    learned_version(store, tmp_path)
    ids = store.chunk_ids("kbase")
    store.mark_pending("kbase", "/docs/a.txt", "a2", "cfg")
    assert not store.switch_version("kbase", 1, ids)  # its vectors go to the served version
    with store.transaction() as db:  # a crashed ingest's trail: the next ingest redoes it
        db.exec_driver_sql(
            "UPDATE files SET updated_at=datetime('now', '-1 hour') WHERE state='pending'")
    assert store.switch_version("kbase", 1, ids)


def test_vectors_never_land_in_a_version_another_embedder_serves(store, tmp_path: Path) -> None:
    learned_version(store, tmp_path)
    store.switch_version("kbase", 1, store.chunk_ids("kbase"))
    with pytest.raises(EmbedderChanged):  # embedded with r0's model before the switch
        store.mark_pending("kbase", "/docs/e.txt", "e", "cfg", "all-MiniLM-L6-v2")
    assert store.file("kbase", "/docs/e.txt") is None
    store.mark_pending("kbase", "/docs/e.txt", "e", "cfg", str(tmp_path / "r1"))
    assert store.file("kbase", "/docs/e.txt").state == "pending"


def test_version_names(tmp_path: Path) -> None:
    assert [parse_version(x) for x in ("r2", "R2", "2", 2)] == [2, 2, 2, 2]
    with pytest.raises(BadRequest):
        parse_version("v2")
    with pytest.raises(BadRequest, match="--r<N>"):
        check_collection_name("handbook--r2")
    assert check_collection_name("handbook--rules") == "handbook--rules"
    assert version_vectors("kbase", 0) == "kbase" and version_vectors("kbase", 3) == "kbase--r3"
    long = "x" * 63
    assert len(version_vectors(long, 12)) <= 63 and version_vectors(long, 12).endswith("--r12")
    assert version_vectors(long, 12) != version_vectors("x" * 62 + "y", 12)


def test_a_learned_embedder_is_named_by_its_folder_and_rebuilt_from_it(tmp_path: Path) -> None:
    from core.embeddings import (
        LEARNED_MARKER,
        FakeEmbeddings,
        SentenceTransformerEmbeddings,
        resolve_model_path,
        settings_for,
        trainable_folder,
    )
    from core.settings import EmbeddingSettings

    folder = tmp_path / "embedders" / "kbase" / "r1"
    configured = EmbeddingSettings(threads=2)
    with pytest.raises(ConfigError, match="learned embedder .* is gone.*retrieval rollback"):
        settings_for(str(folder), configured)
    folder.mkdir(parents=True)
    (folder / LEARNED_MARKER).write_text("{}")
    rebuilt = settings_for(str(folder), configured)
    assert (rebuilt.backend, rebuilt.model, rebuilt.threads) == ("sentence-transformers",
                                                                 str(folder), 2)
    assert SentenceTransformerEmbeddings(rebuilt).name == str(folder)  # not just "r1"
    base = SentenceTransformerEmbeddings(configured)
    assert trainable_folder(base) == resolve_model_path("all-MiniLM-L6-v2")
    from core.embeddings import OnnxInt8Embeddings  # the default: trains its fp32 source

    assert trainable_folder(OnnxInt8Embeddings(configured)) == resolve_model_path("all-MiniLM-L6-v2")
    with pytest.raises(ConfigError, match="Only sentence-transformers embedders can learn"):
        trainable_folder(FakeEmbeddings())


def test_an_ingest_that_embedded_before_a_switch_embeds_again_with_the_new_version(
        tmp_path: Path, docs_dir: Path) -> None:
    from core.embeddings import FakeEmbeddings
    from core.settings import Settings
    from ingest.index import Indexer
    from localcat.container import Container

    c = Container(Settings(data_dir=tmp_path / "data", embedding={"backend": "fake"}))
    c.indexer.ingest([docs_dir], "kbase")
    r1 = c.store.new_retrieval_version("kbase", lambda n: str(tmp_path / f"r{n}"), {})

    class Recording(FakeEmbeddings):
        def __init__(self, name: str, before=None):
            super().__init__()
            self.name, self.before, self.texts = name, before, []

        def encode(self, texts, batch_size=None):
            if self.before:  # the learning run switches while this batch is being embedded
                self.before()
            self.texts += texts
            return super().encode(texts)

    new = Recording(r1.embedder)
    old = Recording("fake", lambda: c.store.switch_version("kbase", 1, c.store.chunk_ids("kbase")))
    embedders = {"fake": old, r1.embedder: new}
    indexer = Indexer(c.settings, lambda name: embedders[c.store.embedder_of(name)], c.vectors,
                      c.store, c.bm25, c.parser)
    (docs_dir / "new.md").write_text("The bike shed opens at 7:15.\n")
    assert indexer.ingest([docs_dir], "kbase").summary()["added"] == 1
    assert old.texts == new.texts == ["The bike shed opens at 7:15."]  # embedded twice
    record = c.store.file("kbase", str((docs_dir / "new.md").resolve()))
    assert record.state == "done" and record.config.startswith(f"emb={r1.embedder};")
    new_id = next(iter(c.store.chunk_ids("kbase") - c.vectors.pinned("kbase", "kbase").ids("kbase")))
    assert new_id in c.vectors.pinned("kbase", r1.vectors).ids("kbase")  # r1's vectors only


def test_the_commands_say_what_to_do(docs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from localcat.cli import main

    runner = CliRunner()
    done = runner.invoke(main, ["finetune", "run", "--only", "retrieval"])
    assert done.exit_code == 1 and "Collection 'default' does not exist" in done.output
    # Both parts: retrieval cannot run, says why, and generation still runs (and says its own).
    done = runner.invoke(main, ["finetune", "run"])
    assert done.exit_code == 1
    assert "retrieval (default) skipped: Collection 'default' does not exist" in done.stdout
    assert "Too little feedback to fine-tune" in done.output

    monkeypatch.setenv("LOCALCAT_EMBEDDING__BACKEND", "fake")
    assert runner.invoke(main, ["ingest", str(docs_dir), "-c", "kbase"]).exit_code == 0
    done = runner.invoke(main, ["finetune", "retrieval", "-c", "kbase"])
    assert done.exit_code == 1 and "Only sentence-transformers embedders can learn" in done.output
    done = runner.invoke(main, ["retrieval", "list", "-c", "kbase"])
    assert done.exit_code == 0 and done.stdout.startswith("* r0   ready") and "fake" in done.stdout
    done = runner.invoke(main, ["retrieval", "rollback", "-c", "kbase"])
    assert done.exit_code == 1 and "Nothing to roll back" in done.output
    for args in (["use", "r3"], ["drop", "r0"], ["use", "latest"]):
        done = runner.invoke(main, ["retrieval", *args, "-c", "kbase"])
        assert done.exit_code == 1 and "Error:" in done.output, args


def test_an_index_from_before_versions_migrates_serving_r0(tmp_path: Path) -> None:
    import sqlite3

    from core.db import head, version_table
    from tests.fixtures.legacy import legacy_file

    legacy_file(tmp_path / "index.sqlite", "chunks", 2)  # the schema before retrieval versions
    db = sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None)
    db.execute("INSERT INTO collections (name, embedder, dimension) VALUES ('kbase', 'm', 384)")
    db.close()
    store = ChunkStore(tmp_path / "index.sqlite")
    served = store.serving("kbase")
    assert (served.name, served.embedder, served.vectors, served.active) == ("r0", "m", "kbase", True)
    with store.read() as db:
        version = db.exec_driver_sql(f"SELECT version_num FROM {version_table('chunks')}").scalar()
    assert version == head("chunks")

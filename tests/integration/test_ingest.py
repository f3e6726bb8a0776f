"""Ingest with the real MiniLM embedder and a real embedded Chroma."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def store_state(container, collection: str) -> tuple[set[str], set[str]]:
    """(ids in Chroma, ids in the chunk store) — the two must always agree after a run."""
    coll = container.vectors.client.get_collection(collection, embedding_function=None)
    return set(coll.get(include=[])["ids"]), container.store.chunk_ids(collection)


def test_ingest_then_retrieve_finds_the_fact(container, docs_dir):
    report = container.indexer.ingest([docs_dir], "kbase")
    assert report.summary() == {"added": 3, "updated": 0, "skipped": 0, "removed": 0, "failed": 0}
    chroma_ids, sqlite_ids = store_state(container, "kbase")
    assert chroma_ids == sqlite_ids and len(chroma_ids) == report.chunks_written

    docs = container.retriever("kbase").invoke("how many days of vacation per year?")
    assert docs and docs[0].metadata["source"].endswith("vacation.md")
    assert "27 vacation days" in docs[0].page_content
    assert docs[0].metadata["heading"].endswith("Vacation")

    # BM25 alone finds an exact number the embedder knows nothing about.
    bm25 = container.bm25.search("kbase", "extension 4417", 5)
    assert bm25 and container.store.chunks("kbase", [bm25[0][0]])[bm25[0][0]].source.endswith("it.txt")


def test_unrelated_question_retrieves_nothing(container, docs_dir):
    container.indexer.ingest([docs_dir], "kbase")
    assert container.retriever("kbase").invoke("quantum chromodynamics of neutron stars") == []


def test_reingest_skips_unchanged_updates_changed_removes_deleted(container, docs_dir):
    first = container.indexer.ingest([docs_dir], "kbase")
    again = container.indexer.ingest([docs_dir], "kbase")
    assert again.summary()["skipped"] == 3 and again.chunks_written == 0
    assert store_state(container, "kbase") == store_state(container, "kbase")

    (docs_dir / "it.txt").write_text("The helpdesk moved to extension 5550.\n")
    (docs_dir / "kitchen.html").unlink()
    third = container.indexer.ingest([docs_dir], "kbase")
    assert third.summary() == {"added": 0, "updated": 1, "skipped": 1, "removed": 1, "failed": 0}
    chroma_ids, sqlite_ids = store_state(container, "kbase")
    assert chroma_ids == sqlite_ids
    sources = {c.source for c in container.store.chunks("kbase", sqlite_ids).values()}
    assert sources == {str(docs_dir / "vacation.md"), str(docs_dir / "it.txt")}
    assert container.bm25.search("kbase", "4417", 5) == []
    assert container.bm25.search("kbase", "5550", 5)
    assert first.chunks_written > third.chunks_written


def test_no_prune_keeps_deleted_files(container, docs_dir):
    container.indexer.ingest([docs_dir], "kbase")
    (docs_dir / "it.txt").unlink()
    report = container.indexer.ingest([docs_dir], "kbase", prune=False)
    assert report.count("removed") == 0
    assert any(f.path.endswith("it.txt") for f in container.store.files("kbase"))


def test_bad_files_are_reported_and_the_batch_goes_on(container, docs_dir):
    (docs_dir / "broken.pdf").write_bytes(b"%PDF-1.7\n this is not really a pdf")
    (docs_dir / "empty.txt").write_text("")
    (docs_dir / "blob.txt").write_bytes(os.urandom(4096))
    report = container.indexer.ingest([docs_dir], "kbase")
    failed = {Path(f.path).name: f.reason for f in report.files if f.status == "failed"}
    assert set(failed) == {"broken.pdf", "empty.txt", "blob.txt"}
    assert all(reason for reason in failed.values())
    assert report.count("added") == 3
    chroma_ids, sqlite_ids = store_state(container, "kbase")
    assert chroma_ids == sqlite_ids
    assert not [f for f in container.store.files("kbase") if Path(f.path).name in failed]


def test_changed_file_that_turns_bad_keeps_its_old_chunks(container, docs_dir):
    container.indexer.ingest([docs_dir], "kbase")
    before = store_state(container, "kbase")
    (docs_dir / "it.txt").write_bytes(b"\x00\x01\x02" * 1000)
    report = container.indexer.ingest([docs_dir], "kbase")
    assert report.count("failed") == 1
    assert store_state(container, "kbase") == before


def test_crash_between_chroma_and_sqlite_is_repaired_on_rerun(container, docs_dir, monkeypatch):
    """Fault injection: the process dies right after Chroma got a file's vectors."""
    class Crash(BaseException):
        pass

    def crash(*a, **k):
        raise Crash()

    with monkeypatch.context() as m, pytest.raises(Crash):
        m.setattr(container.store, "commit_file", crash)
        container.indexer.ingest([docs_dir], "kbase")
    assert container.store.files("kbase")[0].state == "pending"
    container.indexer.ingest([docs_dir], "kbase")

    from localcat.container import Container

    clean = Container(container.settings.model_copy(update={"data_dir": docs_dir.parent / "clean"}))
    clean.indexer.ingest([docs_dir], "kbase")
    assert store_state(container, "kbase") == store_state(clean, "kbase")
    assert store_state(container, "kbase")[0] == store_state(container, "kbase")[1]


def test_sigkill_mid_ingest_then_rerun_equals_clean_ingest(tmp_path, docs_dir):
    """A real `localcat ingest` process killed with SIGKILL part-way, then run again."""
    for i in range(30):
        (docs_dir / f"note-{i:02d}.md").write_text(
            f"# Note {i}\n\n" + "\n\n".join(f"Paragraph {j} of note {i}: item code N{i}-{j} is "
                                            f"stored in rack {j % 7}." for j in range(40))
        )
    env = {**os.environ, "LOCALCAT_DATA_DIR": str(tmp_path / "killed")}
    cmd = [sys.executable, "-m", "localcat", "ingest", str(docs_dir), "-c", "kbase", "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = tmp_path / "killed" / "index.sqlite"
    deadline = time.monotonic() + 300
    import sqlite3

    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                n = sqlite3.connect(db).execute("SELECT count(*) FROM files").fetchone()[0]
            except sqlite3.OperationalError:
                n = 0
            if n >= 5:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "ingest finished before it could be killed: make the corpus bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    rerun = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    clean_env = {**os.environ, "LOCALCAT_DATA_DIR": str(tmp_path / "clean")}
    clean = subprocess.run(cmd, env=clean_env, capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr

    from core.settings import Settings
    from localcat.container import Container

    killed_c = Container(Settings(data_dir=tmp_path / "killed"))
    clean_c = Container(Settings(data_dir=tmp_path / "clean"))
    killed_state, clean_state = store_state(killed_c, "kbase"), store_state(clean_c, "kbase")
    assert killed_state == clean_state
    assert killed_state[0] == killed_state[1]
    assert len(killed_state[0]) > 60
    assert {f.state for f in killed_c.store.files("kbase")} == {"done"}
    assert killed_c.bm25.search("kbase", "N29-39", 3)  # BM25 was rebuilt after the repair


def test_a_file_the_encoder_rejects_fails_alone(container, docs_dir, monkeypatch):
    """Files are embedded in batches; one that breaks the encoder must not take the batch down."""
    (docs_dir / "poison.md").write_text("# Poison\n\nBOOM goes this text.\n")
    real = container.embeddings.encode

    def encode(texts, *a, **k):
        if any("BOOM" in t for t in texts):
            raise RuntimeError("encoder failed")
        return real(texts, *a, **k)

    monkeypatch.setattr(container.embeddings, "encode", encode)
    report = container.indexer.ingest([docs_dir], "kbase")
    assert report.summary() == {"added": 3, "updated": 0, "skipped": 0, "removed": 0, "failed": 1}
    assert [f.reason for f in report.files if f.status == "failed"][0].startswith("cannot embed")
    chroma_ids, sqlite_ids = store_state(container, "kbase")
    assert chroma_ids == sqlite_ids and len(chroma_ids) == report.chunks_written

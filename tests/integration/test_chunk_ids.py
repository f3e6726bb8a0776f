"""Chunk ids name their content: a data set never pairs a recorded answer with text it never saw.

Real MiniLM embedder, real embedded Chroma, the real chunk store and its migration.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from assistant.pipeline import citations_for
from core.schemas import Answer, chunk_id
from core.settings import Settings
from finetune.dataset import PromptBuilder
from localcat.container import Container
from tests.fixtures.legacy import make_legacy

pytestmark = pytest.mark.integration

SHORT = "The helpdesk extension is 4417. Password resets are self-service at the portal.\n"
LONG = "\n\n".join(
    f"Rule {i}: the espresso machine on floor {i} is descaled every {day} by the facilities team."
    for i, day in enumerate(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"])
)


def _container(data: Path, chunk_size: int) -> Container:
    return Container(Settings(data_dir=data, chunking={"chunk_size": chunk_size, "chunk_overlap": 0}))


def _record(c: Container, question: str, collection: str = "kbase") -> Answer:
    docs = c.retriever(collection).search(question, k=4)
    answer = Answer(question=question, standalone_question=question, collection=collection,
                    answer="See [1] and [2].", citations=citations_for(docs), grounded=True,
                    model="test", prompt_version="test")
    c.feedback.record_answer(answer)
    c.feedback.add_feedback(answer.id, "up")
    return answer


def test_a_chunking_change_never_pairs_an_answer_with_other_text(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "it.txt").write_text(SHORT)
    (docs / "kitchen.md").write_text(LONG)
    data = tmp_path / "data"

    before = _container(data, chunk_size=200)
    before.indexer.ingest([docs], "kbase")
    answer = _record(before, "helpdesk extension and when is the espresso machine descaled")
    shown = before.store.chunks("kbase", [c.chunk_id for c in answer.citations])
    assert {Path(c.source).name for c in shown.values()} == {"it.txt", "kitchen.md"}

    # Same files, other chunking: every long-file chunk changes, the short file's one does not.
    after = _container(data, chunk_size=120)
    report = after.indexer.ingest([docs], "kbase")
    assert report.summary()["updated"] == 2
    messages, how = PromptBuilder(after.store, history_turns=2).messages(answer)
    assert how == "mixed"
    context = messages[-1]["content"]
    for cited in answer.citations:
        text = shown[cited.chunk_id].text
        if cited.source.endswith("it.txt"):  # unchanged text: same id, full text from the store
            assert cited.chunk_id in after.store.chunk_ids("kbase")
            assert text.strip() in context
        else:  # the old chunk is gone; its recorded snippet stands in, never the new chunk's text
            assert cited.chunk_id not in after.store.chunk_ids("kbase")
            assert cited.snippet.removesuffix("…").rstrip() in context
            # Short chunks have whole-text snippets: the model's context comes back word for word
            # (with position ids, the new, shorter first chunk would have stood in for it).
            assert " ".join(text.split()) in context
            assert not any(new.text == text for new in after.store.chunks(
                "kbase", after.store.chunk_ids("kbase")).values())


def _legacy_id(path: str, file_hash: str, position: int) -> str:
    return hashlib.sha256(f"{path}\0{file_hash}\0{position}".encode()).hexdigest()[:32]


def _make_legacy(c: Container, collection: str) -> dict[str, str]:
    """Rewrite a fresh index into the pre-content-id layout (numbered migration 1, ids from position)."""
    db = sqlite3.connect(c.settings.index_db)
    rows = db.execute("SELECT id, path, file_hash, position FROM chunks WHERE collection=?",
                      (collection,)).fetchall()
    old = {new: _legacy_id(path, fh, pos) for new, path, fh, pos in rows}
    coll = c.vectors.client.get_collection(collection, embedding_function=None)
    got = coll.get(include=["embeddings", "metadatas"])
    coll.delete(ids=got["ids"])
    coll.add(ids=[old[i] for i in got["ids"]], embeddings=got["embeddings"],
             metadatas=got["metadatas"])
    with db:
        db.executemany("UPDATE chunks SET id=? WHERE collection=? AND id=?",
                       [(o, collection, n) for n, o in old.items()])
        for table in ("chunk_aliases", "retrieval_versions", "retrieval_switches"):
            db.execute(f"DROP TABLE {table}")
        for column in ("vectors", "version", "generation"):
            db.execute(f"ALTER TABLE collections DROP COLUMN {column}")
    db.close()
    make_legacy(c.settings.index_db, "chunks", 1)
    c.bm25.rebuild(collection, c.store.all_chunks(collection))  # already the old ids
    return old


def test_an_index_from_before_content_ids_is_migrated_and_keeps_its_feedback(
    tmp_path: Path, docs_dir: Path
) -> None:
    data = tmp_path / "data"
    fresh = _container(data, chunk_size=1000)
    fresh.indexer.ingest([docs_dir], "kbase")
    answer = _record(fresh, "how many vacation days per year?")
    old = _make_legacy(fresh, "kbase")
    legacy_answer = answer.model_copy(update={"citations": [
        c.model_copy(update={"chunk_id": old[c.chunk_id]}) for c in answer.citations]})

    migrated = _container(data, chunk_size=1000)  # a new process: the store migrates on open
    docs = migrated.retriever("kbase").invoke("how many days of vacation per year?")
    assert docs and "27 vacation days" in docs[0].page_content
    ids = migrated.store.chunk_ids("kbase")
    for chunk in migrated.store.chunks("kbase", ids).values():
        assert chunk.id == chunk_id(chunk.source, chunk.text, 0)
    chroma_ids = set(migrated.vectors.client.get_collection("kbase", embedding_function=None)
                     .get(include=[])["ids"])
    assert chroma_ids == ids and not migrated.store.rekey_pending("kbase")
    assert {i for i, _ in migrated.bm25.search("kbase", "extension 4417", 5)} <= ids

    messages, how = PromptBuilder(migrated.store, history_turns=2).messages(legacy_answer)
    assert how == "chunks"
    assert "27 vacation days" in messages[-1]["content"]

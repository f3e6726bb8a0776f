"""The stores on a real PostgreSQL (Debian's server, started by the tests): the same Alembic
histories as SQLite, the same answers, one writer at a time per store, and concurrency across
processes as two LocalCat servers would have it."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from assistant.feedback import FeedbackStore
from core.chunkstore import ChunkStore
from core.db import Database, head, version_table
from core.errors import StoreUnavailable
from core.schemas import Answer, Chunk
from finetune.registry import ModelRegistry
from tests.fixtures.legacy import broken_migrations
from tests.unit.test_db import STORES, schema_drift


def answer(i: int) -> Answer:
    return Answer.model_validate({
        "id": f"a{i}", "question": f"q{i}?", "standalone_question": f"q{i}?", "history": [],
        "collection": "kb", "answer": "yes [1].", "citations": [], "grounded": False,
        "model": "m", "prompt_version": "rag-v1"})


def test_each_store_migrates_to_the_tables_its_code_queries(postgres_url: str, tmp_path: Path) -> None:
    database = Database(postgres_url)
    for name, cls in STORES.items():
        store = cls(tmp_path, database) if name == "models" else cls(database)
        with store.read() as conn:
            version = conn.execute(sa.text(f"SELECT version_num FROM {version_table(name)}")).scalar()
        assert version == head(name)
        assert schema_drift(database, name) == []
    database.close()


def test_the_stores_answer_as_on_sqlite(postgres_url: str, tmp_path: Path) -> None:
    database = Database(postgres_url)
    chunks, feedback = ChunkStore(database), FeedbackStore(database)
    registry = ModelRegistry(tmp_path, database)

    chunks.ensure_collection("kb", "emb", lambda: 3)
    first = chunks.generation("kb")
    chunks.mark_pending("kb", "/a.txt", "h1", "cfg emb=emb;")
    chunk = Chunk(id="x", text="red fox", source="/a.txt", file_hash="h1", position=0, page=2)
    chunks.commit_file("kb", "/a.txt", "h1", "cfg emb=emb;", [chunk])
    assert chunks.chunks("kb", ["x", "nope"]) == {"x": chunk}
    assert chunks.generation("kb") == first + 2
    assert chunks.collections() == [{"name": "kb", "embedder": "emb", "created_at": pytest.approx(
        chunks.collections()[0]["created_at"]), "files": 1, "chunks": 1}]
    v1 = chunks.new_retrieval_version("kb", lambda n: f"learned-r{n}", {"ndcg": 0.5})
    assert v1.version == 1 and [v.version for v in chunks.retrieval_versions("kb")] == [0, 1]
    # A pending file younger than the stale limit blocks the switch; text timestamps compare.
    chunks.mark_pending("kb", "/b.txt", "h2", "cfg emb=emb;")
    assert not chunks.switch_version("kb", 1, {"x"})
    chunks.remove_file("kb", "/b.txt")
    assert chunks.switch_version("kb", 1, {"x"}) and chunks.serving("kb").embedder == "learned-r1"
    assert chunks.file("kb", "/a.txt").config == "cfg emb=learned-r1;"
    assert chunks.previous_version("kb") == 0

    for i in range(3):
        feedback.record_answer(answer(i))
    feedback.record_answer(answer(0))  # recorded twice: the first is kept
    feedback.add_feedback("a0", "down")
    fb = feedback.add_feedback("a0", None, correction="no.", user="ann")  # "user": reserved in SQL
    feedback.add_feedback("a1", "up")
    assert fb.user == "ann" and feedback.latest_feedback("a0").id == fb.id
    assert feedback.stats() == {"answers": 3, "feedback": 3, "up": 1, "down": 0, "corrections": 1}
    assert [r["answer_id"] for r in feedback.iter_feedback(latest_only=True)] == ["a0", "a1"]

    assert registry.versions() == [] and registry.activation() == 0
    with pytest.raises(Exception, match="Already serving the base"):
        registry.use(None) or registry.rollback()
    assert registry.activation() == 1
    database.close()


def test_writers_on_two_servers_lose_nothing(postgres_url: str) -> None:
    """Two Database objects are two servers' engines: 50 concurrent writers, every row kept, and
    read-then-write numbering (the next retrieval version) never collides."""
    a, b = Database(postgres_url), Database(postgres_url)
    FeedbackStore(a).record_answer(answer(0))
    ChunkStore(a).ensure_collection("kb", "emb", 3)
    stores = [(FeedbackStore(db), ChunkStore(db)) for db in (a, b)]

    def write(i: int) -> int:
        feedback, chunks = stores[i % 2]
        feedback.add_feedback("a0", "up" if i % 3 else "down", comment=f"writer {i}")
        return chunks.new_retrieval_version("kb", lambda n: f"e{n}", {}).version

    with ThreadPoolExecutor(16) as pool:
        versions = list(pool.map(write, range(50)))
    assert sorted(versions) == list(range(1, 51))
    assert FeedbackStore(b).stats()["feedback"] == 50
    assert {r["comment"] for r in FeedbackStore(b).iter_feedback()} == {f"writer {i}" for i in range(50)}
    a.close(), b.close()


def _open(url: str) -> int:
    return FeedbackStore(Database(url)).stats()["answers"]


def test_servers_starting_together_migrate_once(postgres_url: str) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_open, [postgres_url] * 4) == [0] * 4
    engine = sa.create_engine(Database(postgres_url).url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT version_num FROM {version_table('feedback')}")).all()
    engine.dispose()
    assert rows == [(head("feedback"),)]


def test_a_failed_revision_leaves_nothing_behind(postgres_url: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    migrations = broken_migrations(tmp_path)
    monkeypatch.setattr("core.db.MIGRATIONS_DIR", migrations)
    database = Database(postgres_url)
    with pytest.raises(RuntimeError, match="boom"):
        FeedbackStore(database).stats()
    with database.engine.connect() as conn:  # transactional DDL: not even revision 1 is left
        assert sa.inspect(conn).get_table_names() == []
    database.close()


def test_a_server_that_is_down_says_the_fix() -> None:
    from tests.fixtures.servers import free_port

    store = FeedbackStore(Database(f"postgresql://nobody@127.0.0.1:{free_port()}/x"))
    with pytest.raises(StoreUnavailable, match="LOCALCAT_DATABASE__URL"):
        store.stats()


def test_monitoring_counts_as_on_sqlite(postgres_url: str, tmp_path: Path) -> None:
    """The monitoring query (a correlated verdict, EXISTS, CASE sums, a number read from the
    answers' JSON text) gives PostgreSQL's figures exactly as SQLite's."""
    from assistant.feedback import first_day
    from tests.unit.test_monitoring import seed

    database = Database(postgres_url)
    on_pg, on_sqlite = FeedbackStore(database), FeedbackStore(tmp_path / "feedback.sqlite")
    for store in (on_pg, on_sqlite):
        seed(store)
    for since in (first_day(30), first_day(1), None):
        figures = on_pg.monitoring(since)
        assert figures and figures == on_sqlite.monitoring(since)
    assert on_pg.monitoring(first_day(30), model="base+lora:v1")[0].latency_mean_s == 0.25
    on_sqlite.close()
    database.close()

"""The stores' database layer on SQLite: Alembic histories, files from before Alembic, refusals.

The same checks against a real PostgreSQL are in tests/integration/test_postgres.py.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from assistant.feedback import FeedbackStore
from core.chunkstore import ChunkStore
from core.db import Database, _head_from_files, head, version_table
from core.errors import StoreUnavailable
from core.keystore import KeyStore
from finetune.registry import ModelRegistry
from tests.fixtures.legacy import broken_migrations, legacy_file

STORES = {"chunks": ChunkStore, "feedback": FeedbackStore, "models": ModelRegistry,
          "auth": KeyStore}


def schema_drift(database: Database, store: str) -> list:
    """Differences between the migrated tables and the ones the code queries (empty: none)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import assistant.feedback
    import core.chunkstore
    import core.keystore
    import finetune.registry

    metadata = {"chunks": core.chunkstore.metadata, "feedback": assistant.feedback.metadata,
                "models": finetune.registry.metadata, "auth": core.keystore.metadata}[store]
    with database.engine.connect() as conn:
        # Only this store's tables: on a shared database the others' are not drift.
        ctx = MigrationContext.configure(conn, opts={
            "version_table": version_table(store),
            "include_name": lambda name, kind, _: kind != "table" or name in metadata.tables})
        return [d for d in compare_metadata(ctx, metadata)
                # server defaults are compared as text, which differs by dialect, not in meaning
                if d[0] not in ("modify_default",)]


def open_store(store: str, database: Database):
    cls = STORES[store]
    return cls(database.path.parent, database) if store == "models" else cls(database)


@pytest.mark.parametrize("store", sorted(STORES))
def test_each_store_migrates_to_the_tables_its_code_queries(tmp_path: Path, store: str) -> None:
    database = Database.sqlite(tmp_path / f"{store}.sqlite")
    s = open_store(store, database)
    with s.read() as conn:
        assert conn.exec_driver_sql(f"SELECT version_num FROM {version_table(store)}").scalar() == head(store)
    assert schema_drift(database, store) == []


@pytest.mark.parametrize("store", sorted(STORES))
def test_the_head_read_from_the_files_is_alembics(store: str) -> None:
    """What lets an up-to-date database skip importing Alembic (~0.3 s of a re-ingest)."""
    assert _head_from_files(store) == head(store)


def test_a_new_revision_is_migrated_though_alembic_is_skipped_at_head(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "feedback.sqlite"
    FeedbackStore(path).stats()  # at head: the next opening reads the revision, no Alembic
    migrations = broken_migrations(tmp_path)  # a newer revision appears (and fails)
    monkeypatch.setattr("core.db.MIGRATIONS_DIR", migrations)
    assert _head_from_files("feedback") == "feedback_0099"
    with pytest.raises(RuntimeError, match="boom"):
        FeedbackStore(path).stats()


def test_a_file_from_before_alembic_is_stamped_then_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    legacy_file(path, "chunks", 3)  # collections had no generation yet
    with closing(sqlite3.connect(path)) as db:
        db.execute("INSERT INTO collections (name, embedder, dimension) VALUES ('kb', 'm', 3)")
        db.commit()
    store = ChunkStore(path)
    assert store.generation("kb") == 1 and store.embedder_of("kb") == "m"
    with closing(sqlite3.connect(path)) as db:
        assert db.execute(f"SELECT version_num FROM {version_table('chunks')}").fetchone()[0] == head("chunks")


def test_a_file_from_a_newer_localcat_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "feedback.sqlite"
    FeedbackStore(path).stats()
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"UPDATE {version_table('feedback')} SET version_num = 'feedback_0099'")
        db.commit()
    with pytest.raises(StoreUnavailable, match="upgrade LocalCat"):
        FeedbackStore(path).stats()
    legacy = tmp_path / "old.sqlite"
    legacy_file(legacy, "feedback", 1)
    with closing(sqlite3.connect(legacy)) as db:
        db.execute("PRAGMA user_version = 7")
    with pytest.raises(StoreUnavailable, match="has schema version 7; this LocalCat knows only up to"):
        FeedbackStore(legacy).stats()


def test_a_failed_revision_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    migrations = broken_migrations(tmp_path)
    monkeypatch.setattr("core.db.MIGRATIONS_DIR", migrations)
    path = tmp_path / "feedback.sqlite"
    with pytest.raises(RuntimeError, match="boom"):
        FeedbackStore(path).stats()
    with closing(sqlite3.connect(path)) as db:  # not even revision 1: it was one transaction
        assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")} == set()


def test_several_stores_share_one_database(tmp_path: Path) -> None:
    """What PostgreSQL deployments do: one database, a version table per store."""
    database = Database.sqlite(tmp_path / "all.sqlite")
    for store in STORES:
        with open_store(store, database).read():  # opening is lazy: a read migrates
            pass
    with closing(sqlite3.connect(tmp_path / "all.sqlite")) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {version_table(s) for s in STORES} | {"chunks", "answers", "versions", "api_keys"} <= tables

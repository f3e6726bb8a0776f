"""The chunk store: SQLite holds the text of every chunk and the manifest of ingested files.

It is the source of truth: Chroma holds only vectors (core/chroma.py), and a vector whose chunk row
is missing is never shown. Chroma gets no document text because its full-text index made adds ~10×
slower and the store ~5× bigger at 100k chunks (shared/RUNTIME.md); BM25 is ours (core/bm25.py).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from core.chroma import VERSION_SUFFIX, version_vectors
from core.errors import BadRequest, CollectionNotFound, ConfigError, LocalCatError
from core.schemas import Chunk, chunk_id
from core.sqlite import Database, migrations

_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")


def check_collection_name(name: str) -> str:
    if not _COLLECTION_NAME.match(name) or ".." in name or VERSION_SUFFIX.search(name):
        raise BadRequest(
            f"Invalid collection name {name!r}",
            "use 3–63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit "
            "(not ending in --r<N>: that names a collection's learned retrieval versions)",
        )
    return name


class EmbedderChanged(LocalCatError):
    """The collection switched to another retrieval version while a batch was being embedded."""


VersionStatus = str  # building | ready | rejected | failed | dropped


@dataclass(frozen=True)
class RetrievalVersion:
    """One embedder of a collection and the Chroma collection holding its vectors.

    r0 is the collection as ingested; r1, r2… are embedders learned from feedback. Statuses:
    building (being trained or embedded), ready (complete; served or can be), rejected (the gate
    said no; its vectors are dropped, its model kept), failed (a run stopped before the end),
    dropped (vectors and model deleted).
    """

    collection: str
    version: int
    embedder: str
    vectors: str
    status: VersionStatus
    created_at: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    active: bool = False

    @property
    def name(self) -> str:
        return f"r{self.version}"


def parse_version(name: str | int) -> int:
    """'r3', '3' or 3 → 3."""
    text = str(name).strip().lower().removeprefix("r")
    if not text.isdigit():
        raise BadRequest(f"Invalid retrieval version {name!r}", "name one like r2 (see `localcat retrieval list`)")
    return int(text)


_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    embedder TEXT NOT NULL,
    dimension INTEGER NOT NULL,
    bm25_dirty INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL DEFAULT (datetime('now'))
);
CREATE TABLE IF NOT EXISTS files (
    collection TEXT NOT NULL,
    path TEXT NOT NULL,
    file_hash TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    chunks INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL DEFAULT (datetime('now')),
    PRIMARY KEY (collection, path)
);
CREATE TABLE IF NOT EXISTS chunks (
    id TEXT NOT NULL,
    collection TEXT NOT NULL,
    path TEXT NOT NULL,
    position INTEGER NOT NULL,
    file_hash TEXT NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    heading TEXT,
    anchor TEXT,
    PRIMARY KEY (collection, id)
);
CREATE INDEX IF NOT EXISTS chunks_by_path ON chunks (collection, path);
"""


@dataclass(frozen=True)
class FileRecord:
    path: str
    file_hash: str
    config: str
    state: str
    chunks: int


MIGRATIONS, _migration = migrations()


@_migration
def m001_collections_files_chunks(db: sqlite3.Connection) -> None:
    # IF NOT EXISTS: index files from before the migrations have this very schema; adopt them.
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            db.execute(statement)


@_migration
def m002_content_ids(db: sqlite3.Connection) -> None:
    """Chunk ids become content hashes (``chunk_id``); the old ids stay as aliases.

    Chroma still holds the vectors under the old ids: ``rekey_pending`` lists them until the
    indexer has moved them (``Indexer.finish_migration``), which happens before the collection
    is next searched or written.
    """
    db.execute("""CREATE TABLE chunk_aliases (
        collection TEXT NOT NULL, old_id TEXT NOT NULL, new_id TEXT NOT NULL,
        vectors_moved INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (collection, old_id))""")
    rows = db.execute("SELECT collection, id, path, text FROM chunks ORDER BY collection, path, position")
    seen: dict[tuple[str, str, str], int] = {}
    moves = []
    for r in rows.fetchall():
        key = (r["collection"], r["path"], r["text"])
        seen[key] = seen.get(key, -1) + 1
        moves.append((r["collection"], r["id"], chunk_id(r["path"], r["text"], seen[key])))
    db.executemany("INSERT INTO chunk_aliases (collection, old_id, new_id) VALUES (?,?,?)", moves)
    db.executemany("UPDATE chunks SET id=? WHERE collection=? AND id=?",
                   [(new, coll, old) for coll, old, new in moves])
    db.execute("UPDATE collections SET bm25_dirty=1")  # the BM25 index lists chunks by id


@_migration
def m003_retrieval_versions(db: sqlite3.Connection) -> None:
    """Learned retrieval versions: which embedder and Chroma collection serve each collection."""
    # NULL vectors: the collection's own name (r0, as ingested). `embedder` stays the served one.
    # Checked and IF NOT EXISTS, like m001: a file rewound to an older user_version adopts them.
    columns = {r["name"] for r in db.execute("PRAGMA table_info(collections)")}
    if "vectors" not in columns:
        db.execute("ALTER TABLE collections ADD COLUMN vectors TEXT")
    if "version" not in columns:
        db.execute("ALTER TABLE collections ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
    db.execute("""CREATE TABLE IF NOT EXISTS retrieval_versions (
        collection TEXT NOT NULL, version INTEGER NOT NULL, embedder TEXT NOT NULL,
        vectors TEXT NOT NULL, status TEXT NOT NULL, metrics TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL DEFAULT (datetime('now')), PRIMARY KEY (collection, version))""")
    db.execute("""CREATE TABLE IF NOT EXISTS retrieval_switches (
        id INTEGER PRIMARY KEY, collection TEXT NOT NULL, from_version INTEGER NOT NULL,
        to_version INTEGER NOT NULL, at TEXT NOT NULL DEFAULT (datetime('now')))""")


class ChunkStore(Database):
    """SQLite manifest of ingested files and the text of every chunk."""

    MIGRATIONS = MIGRATIONS
    KIND = "chunk index"

    # collections
    def ensure_collection(self, name: str, embedder: str, dimension: int | Callable[[], int]) -> None:
        """Create the collection's row, or check it was built by ``embedder``.

        ``dimension``, when a callable, is only called for a new collection: it loads the embedding model, which a
        re-ingest of unchanged files should never need (12 of its 16 s were that load).
        """
        row = self.db.execute("SELECT * FROM collections WHERE name=?", (name,)).fetchone()
        if row is None:
            dim = dimension() if callable(dimension) else dimension
            with self.transaction() as db:
                db.execute(
                    "INSERT OR IGNORE INTO collections (name, embedder, dimension) VALUES (?, ?, ?)",
                    (name, embedder, dim),
                )
            row = self.db.execute("SELECT * FROM collections WHERE name=?", (name,)).fetchone()
        if row["embedder"] != embedder:
            raise ConfigError(
                f"Collection {name!r} was built with {row['embedder']} ({row['dimension']}-d), "
                f"not {embedder}",
                "ingest into a new --collection, or delete this one first",
            )

    def embedder_of(self, name: str) -> str | None:
        """The embedder a collection was built with (None: no such collection yet)."""
        row = self.db.execute("SELECT embedder FROM collections WHERE name=?", (name,)).fetchone()
        return row["embedder"] if row else None

    def collections(self) -> list[dict]:
        rows = self.db.execute(
            """SELECT c.name, c.embedder, c.created_at,
                      (SELECT count(*) FROM files f WHERE f.collection=c.name) AS files,
                      (SELECT count(*) FROM chunks k WHERE k.collection=c.name) AS chunks
               FROM collections c ORDER BY c.name"""
        ).fetchall()
        return [dict(r) for r in rows]

    def has_collection(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM collections WHERE name=?", (name,)).fetchone() is not None

    def require_collection(self, name: str) -> None:
        if not self.has_collection(name):
            raise CollectionNotFound(
                f"Collection {name!r} does not exist",
                f"ingest documents first: `localcat ingest PATH --collection {name}`",
            )

    def drop_collection(self, name: str) -> None:
        with self.transaction() as db:
            for table in ("chunks", "files", "chunk_aliases", "retrieval_versions",
                          "retrieval_switches"):
                db.execute(f"DELETE FROM {table} WHERE collection=?", (name,))
            db.execute("DELETE FROM collections WHERE name=?", (name,))

    # files
    def file(self, collection: str, path: str) -> FileRecord | None:
        row = self.db.execute(
            "SELECT path, file_hash, config, state, chunks FROM files WHERE collection=? AND path=?",
            (collection, path),
        ).fetchone()
        return FileRecord(**dict(row)) if row else None

    def files(self, collection: str) -> list[FileRecord]:
        rows = self.db.execute(
            "SELECT path, file_hash, config, state, chunks FROM files WHERE collection=?",
            (collection,),
        ).fetchall()
        return [FileRecord(**dict(r)) for r in rows]

    def mark_pending(self, collection: str, path: str, file_hash: str, config: str,
                     embedder: str | None = None) -> None:
        """Record intent before touching Chroma, so a crash leaves a trail the next run repairs.

        ``embedder``: the one that made the vectors about to be written. Checked under the write
        lock, so they never land in a retrieval version another embedder serves; and while the
        file is pending the collection does not switch versions (``switch_version``).
        """
        with self.transaction() as db:
            if embedder is not None and self.embedder_of(collection) not in (None, embedder):
                raise EmbedderChanged(f"Collection {collection!r} switched embedder mid-write",
                                      "embed the batch again with the collection's embedder")
            db.execute(
                """INSERT INTO files (collection, path, file_hash, config, state) VALUES (?,?,?,?,'pending')
                   ON CONFLICT (collection, path) DO UPDATE SET state='pending',
                   updated_at=datetime('now')""",
                (collection, path, file_hash, config),
            )
            db.execute("UPDATE collections SET bm25_dirty=1 WHERE name=?", (collection,))

    def commit_file(self, collection: str, path: str, file_hash: str, config: str,
                    chunks: list[Chunk]) -> None:
        """Swap a file's chunk rows in one transaction and mark it done."""
        with self.transaction() as db:
            db.execute("DELETE FROM chunks WHERE collection=? AND path=?", (collection, path))
            db.executemany(
                """INSERT INTO chunks (id, collection, path, position, file_hash, text, page, heading, anchor)
                   VALUES (?,?,?,?,?,?,?,?,?)""",
                [(c.id, collection, path, c.position, c.file_hash, c.text, c.page, c.heading, c.anchor)
                 for c in chunks],
            )
            db.execute(
                """UPDATE files SET file_hash=?, config=?, state='done', chunks=?, updated_at=datetime('now')
                   WHERE collection=? AND path=?""",
                (file_hash, config, len(chunks), collection, path),
            )

    def remove_file(self, collection: str, path: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM chunks WHERE collection=? AND path=?", (collection, path))
            db.execute("DELETE FROM files WHERE collection=? AND path=?", (collection, path))
            db.execute("UPDATE collections SET bm25_dirty=1 WHERE name=?", (collection,))

    # chunks
    def chunks(self, collection: str, ids: Iterable[str]) -> dict[str, Chunk]:
        ids = list(ids)
        out: dict[str, Chunk] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            rows = self.db.execute(
                f"SELECT * FROM chunks WHERE collection=? AND id IN ({','.join('?' * len(part))})",
                (collection, *part),
            ).fetchall()
            for r in rows:
                out[r["id"]] = _chunk(r)
        return out

    def all_chunks(self, collection: str) -> Iterator[tuple[str, str]]:
        """(id, text) for every chunk, in a stable order (for the BM25 build)."""
        cur = self.db.execute(
            "SELECT id, text FROM chunks WHERE collection=? ORDER BY path, position", (collection,)
        )
        yield from ((r["id"], r["text"]) for r in cur)

    def chunk_ids(self, collection: str) -> set[str]:
        cur = self.db.execute("SELECT id FROM chunks WHERE collection=?", (collection,))
        return {r["id"] for r in cur}

    def resolve(self, collection: str, ids: Iterable[str]) -> dict[str, str]:
        """Current id for each of ``ids``: itself, or what a pre-content-id alias became."""
        ids = list(ids)
        out = {i: i for i in ids}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            rows = self.db.execute(
                f"SELECT old_id, new_id FROM chunk_aliases WHERE collection=? "
                f"AND old_id IN ({','.join('?' * len(part))})", (collection, *part),
            ).fetchall()
            out.update({r["old_id"]: r["new_id"] for r in rows})
        return out

    def rekey_pending(self, collection: str) -> list[tuple[str, str]]:
        """(old id, new id) pairs whose vectors are still under the old id in the vector store."""
        rows = self.db.execute(
            "SELECT old_id, new_id FROM chunk_aliases WHERE collection=? AND vectors_moved=0",
            (collection,),
        ).fetchall()
        return [(r["old_id"], r["new_id"]) for r in rows]

    def rekey_done(self, collection: str, old_ids: Iterable[str]) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE chunk_aliases SET vectors_moved=1 WHERE collection=? AND old_id=?",
                           [(collection, i) for i in old_ids])

    def bm25_dirty(self, collection: str) -> bool:
        row = self.db.execute("SELECT bm25_dirty FROM collections WHERE name=?", (collection,)).fetchone()
        return bool(row and row["bm25_dirty"])

    def set_bm25_clean(self, collection: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE collections SET bm25_dirty=0 WHERE name=?", (collection,))


    # retrieval versions
    def vectors_name(self, collection: str) -> str:
        """The Chroma collection serving ``collection`` now (its own name until a version is)."""
        row = self.db.execute("SELECT vectors FROM collections WHERE name=?", (collection,)).fetchone()
        return (row["vectors"] if row else None) or collection

    def serving(self, collection: str) -> RetrievalVersion:
        """The active retrieval version: its embedder and vectors, read together."""
        row = self.db.execute("SELECT * FROM collections WHERE name=?", (collection,)).fetchone()
        if row is None:
            self.require_collection(collection)
        found = self.db.execute("SELECT * FROM retrieval_versions WHERE collection=? AND version=?",
                                (collection, row["version"])).fetchone()
        base = RetrievalVersion(collection, row["version"], row["embedder"],
                                row["vectors"] or collection, "ready", row["created_at"], active=True)
        return _version(found, row["version"]) if found else base

    def retrieval_versions(self, collection: str) -> list[RetrievalVersion]:
        """Every version, r0 first (r0 is listed even before any was learned)."""
        served = self.serving(collection)
        rows = self.db.execute("SELECT * FROM retrieval_versions WHERE collection=? ORDER BY version",
                               (collection,)).fetchall()
        versions = [_version(r, served.version) for r in rows]
        if not versions or versions[0].version != 0:
            versions.insert(0, served if served.version == 0 else RetrievalVersion(
                collection, 0, served.embedder, collection, "ready"))
        return versions

    def retrieval_version(self, collection: str, version: int) -> RetrievalVersion:
        for v in self.retrieval_versions(collection):
            if v.version == version:
                return v
        raise BadRequest(f"Collection {collection!r} has no retrieval version r{version}",
                         f"see `localcat retrieval list --collection {collection}`")

    def new_retrieval_version(self, collection: str, embedder: Callable[[int], str],
                              metrics: dict[str, Any]) -> RetrievalVersion:
        """Add the next version, status 'building'; ``embedder(n)`` names its embedder."""
        with self.transaction() as db:
            # r0 is recorded before the first switch, while `embedder` still names the ingest's.
            db.execute("""INSERT OR IGNORE INTO retrieval_versions (collection, version, embedder,
                          vectors, status) SELECT name, 0, embedder, name, 'ready' FROM collections
                          WHERE name=? AND version=0""", (collection,))
            n = db.execute("SELECT coalesce(max(version), 0) + 1 FROM retrieval_versions "
                           "WHERE collection=?", (collection,)).fetchone()[0]
            db.execute("""INSERT INTO retrieval_versions (collection, version, embedder, vectors,
                          status, metrics) VALUES (?,?,?,?,'building',?)""",
                       (collection, n, embedder(n), version_vectors(collection, n), json.dumps(metrics)))
        return self.retrieval_version(collection, n)

    def set_version_status(self, collection: str, version: int, status: VersionStatus,
                           metrics: dict[str, Any] | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE retrieval_versions SET status=? WHERE collection=? AND version=?",
                       (status, collection, version))
            if metrics is not None:
                db.execute("UPDATE retrieval_versions SET metrics=? WHERE collection=? AND version=?",
                           (json.dumps(metrics), collection, version))

    def switch_version(self, collection: str, version: int, embedded: set[str], *,
                       pending_stale_s: float = 600) -> bool:
        """Serve ``version`` from now on, in one transaction; False (nothing changed) while an
        ingest is writing the collection or a chunk has no vector in ``embedded`` yet.

        A 'pending' file younger than ``pending_stale_s`` is an ingest mid-write (its vectors go
        to the version served when it marked the file); an older one is a crashed ingest, which
        the next ingest redoes whatever version serves then.
        """
        target = self.retrieval_version(collection, version)
        with self.transaction() as db:
            busy = db.execute(
                "SELECT 1 FROM files WHERE collection=? AND state='pending' "
                "AND updated_at > datetime('now', ?)", (collection, f"-{int(pending_stale_s)} seconds"),
            ).fetchone()
            if busy or not self.chunk_ids(collection) <= embedded:
                return False
            row = db.execute("SELECT version, embedder FROM collections WHERE name=?",
                             (collection,)).fetchone()
            db.execute("UPDATE collections SET embedder=?, vectors=?, version=? WHERE name=?",
                       (target.embedder, target.vectors, version, collection))
            # Files record the embedder of their vectors (Indexer.config_key); every chunk now has
            # one from the new embedder, so say so, or the next ingest would redo every file.
            db.execute("UPDATE files SET config=replace(config, ?, ?) WHERE collection=?",
                       (f"emb={row['embedder']};", f"emb={target.embedder};", collection))
            db.execute("UPDATE retrieval_versions SET status='ready' WHERE collection=? AND version=?",
                       (collection, version))
            db.execute("INSERT INTO retrieval_switches (collection, from_version, to_version) "
                       "VALUES (?,?,?)", (collection, row["version"], version))
        return True

    def previous_version(self, collection: str) -> int | None:
        """The version served before the last switch (None: never switched)."""
        row = self.db.execute("SELECT from_version FROM retrieval_switches WHERE collection=? "
                              "ORDER BY id DESC LIMIT 1", (collection,)).fetchone()
        return row["from_version"] if row else None


def _version(r: sqlite3.Row, active: int) -> RetrievalVersion:
    return RetrievalVersion(r["collection"], r["version"], r["embedder"], r["vectors"], r["status"],
                            r["created_at"], json.loads(r["metrics"]), r["version"] == active)


def _chunk(r: sqlite3.Row) -> Chunk:
    return Chunk(
        id=r["id"], text=r["text"], source=r["path"], file_hash=r["file_hash"],
        position=r["position"], page=r["page"], heading=r["heading"], anchor=r["anchor"],
    )

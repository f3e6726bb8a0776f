"""The chunk store: the database (core/db.py) holds the text of every chunk and the manifest of ingested files.

It is the source of truth: Chroma holds only vectors (core/chroma.py), and a vector whose chunk row
is missing is never shown. Chroma gets no document text because its full-text index made adds ~10×
slower and the store ~5× bigger at 100k chunks (measured on this project's machines); BM25 is
ours (core/bm25.py).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from core.chroma import VERSION_SUFFIX, version_vectors
from core.db import Store, insert_ignore, now_text, upsert
from core.errors import BadRequest, CollectionNotFound, ConfigError, LocalCatError
from core.schemas import Chunk

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


@dataclass(frozen=True)
class FileRecord:
    path: str
    file_hash: str
    config: str
    state: str
    chunks: int


# The tables as the code queries them; their history is core/migrations/chunks/.
metadata = sa.MetaData()
collections_t = sa.Table(
    "collections", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("embedder", sa.Text, nullable=False),
    sa.Column("dimension", sa.Integer, nullable=False),
    sa.Column("bm25_dirty", sa.Integer, nullable=False, server_default="1"),  # unused since 0004
    sa.Column("created_at", sa.Text, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")),
    sa.Column("vectors", sa.Text),
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("generation", sa.Integer, nullable=False, server_default="1"),
)
files_t = sa.Table(
    "files", metadata,
    sa.Column("collection", sa.Text, primary_key=True),
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("file_hash", sa.Text, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("chunks", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Text, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")),
)
chunks_t = sa.Table(
    "chunks", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("collection", sa.Text, primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("file_hash", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("page", sa.Integer),
    sa.Column("heading", sa.Text),
    sa.Column("anchor", sa.Text),
    sa.Index("chunks_by_path", "collection", "path"),
)
aliases_t = sa.Table(
    "chunk_aliases", metadata,
    sa.Column("collection", sa.Text, primary_key=True),
    sa.Column("old_id", sa.Text, primary_key=True),
    sa.Column("new_id", sa.Text, nullable=False),
    sa.Column("vectors_moved", sa.Integer, nullable=False, server_default="0"),
)
versions_t = sa.Table(
    "retrieval_versions", metadata,
    sa.Column("collection", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("embedder", sa.Text, nullable=False),
    sa.Column("vectors", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("metrics", sa.Text, nullable=False, server_default="{}"),
    sa.Column("created_at", sa.Text, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")),
)
switches_t = sa.Table(
    "retrieval_switches", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("collection", sa.Text, nullable=False),
    sa.Column("from_version", sa.Integer, nullable=False),
    sa.Column("to_version", sa.Integer, nullable=False),
    sa.Column("at", sa.Text, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")),
)


class ChunkStore(Store):
    """The manifest of ingested files and the text of every chunk (SQLite or PostgreSQL)."""

    SCHEMA = "chunks"
    KIND = "chunk index"

    def _collection(self, name: str):
        return self.one(sa.select(collections_t).where(collections_t.c.name == name))

    # collections
    def ensure_collection(self, name: str, embedder: str, dimension: int | Callable[[], int]) -> None:
        """Create the collection's row, or check it was built by ``embedder``.

        ``dimension``, when a callable, is only called for a new collection: it loads the embedding model, which a
        re-ingest of unchanged files should never need (12 of its 16 s were that load).
        """
        row = self._collection(name)
        if row is None:
            dim = dimension() if callable(dimension) else dimension
            with self.transaction() as db:
                insert_ignore(db, collections_t, {"name": name, "embedder": embedder,
                                                  "dimension": dim, "created_at": now_text(),
                                                  "generation": _first_generation()})
            row = self._collection(name)
        if row.embedder != embedder:
            raise ConfigError(
                f"Collection {name!r} was built with {row.embedder} ({row.dimension}-d), "
                f"not {embedder}",
                "ingest into a new --collection, or delete this one first",
            )

    def embedder_of(self, name: str, db: sa.Connection | None = None) -> str | None:
        """The embedder a collection was built with (None: no such collection yet)."""
        query = sa.select(collections_t.c.embedder).where(collections_t.c.name == name)
        return db.execute(query).scalar() if db is not None else self.scalar(query)

    def collections(self) -> list[dict]:
        c = collections_t
        files = (sa.select(sa.func.count()).select_from(files_t)
                 .where(files_t.c.collection == c.c.name).scalar_subquery())
        chunks = (sa.select(sa.func.count()).select_from(chunks_t)
                  .where(chunks_t.c.collection == c.c.name).scalar_subquery())
        rows = self.all(sa.select(c.c.name, c.c.embedder, c.c.created_at, files.label("files"),
                                  chunks.label("chunks")).order_by(c.c.name))
        return [dict(r._mapping) for r in rows]

    def has_collection(self, name: str) -> bool:
        return self._collection(name) is not None

    def require_collection(self, name: str) -> None:
        if not self.has_collection(name):
            raise CollectionNotFound(
                f"Collection {name!r} does not exist",
                f"ingest documents first: `localcat ingest PATH --collection {name}`",
            )

    def drop_collection(self, name: str) -> None:
        with self.transaction() as db:
            for table in (chunks_t, files_t, aliases_t, versions_t, switches_t):
                db.execute(sa.delete(table).where(table.c.collection == name))
            db.execute(sa.delete(collections_t).where(collections_t.c.name == name))

    def generation(self, collection: str) -> int | None:
        """Moves on with every change to the collection's chunks (None: no such collection).

        A new collection starts at a random number, not 1: a collection dropped and made again
        through another server would otherwise come back to a generation this server's BM25
        index was built from, and keep serving the old texts' index."""
        return self.scalar(sa.select(collections_t.c.generation)
                           .where(collections_t.c.name == collection))

    @staticmethod
    def _changed(db: sa.Connection, collection: str) -> None:
        c = collections_t
        db.execute(sa.update(c).where(c.c.name == collection)
                   .values(generation=c.c.generation + 1))

    # files
    def file(self, collection: str, path: str) -> FileRecord | None:
        f = files_t
        row = self.one(sa.select(f.c.path, f.c.file_hash, f.c.config, f.c.state, f.c.chunks)
                       .where(f.c.collection == collection, f.c.path == path))
        return FileRecord(**row._mapping) if row else None

    def files(self, collection: str) -> list[FileRecord]:
        f = files_t
        rows = self.all(sa.select(f.c.path, f.c.file_hash, f.c.config, f.c.state, f.c.chunks)
                        .where(f.c.collection == collection))
        return [FileRecord(**r._mapping) for r in rows]

    def mark_pending(self, collection: str, path: str, file_hash: str, config: str,
                     embedder: str | None = None) -> None:
        """Record intent before touching the vector store, so a crash leaves a trail the next run repairs.

        ``embedder``: the one that made the vectors about to be written. Checked under the write
        lock, so they never land in a retrieval version another embedder serves; and while the
        file is pending the collection does not switch versions (``switch_version``).
        """
        with self.transaction() as db:
            if embedder is not None and self.embedder_of(collection, db) not in (None, embedder):
                raise EmbedderChanged(f"Collection {collection!r} switched embedder mid-write",
                                      "embed the batch again with the collection's embedder")
            now = now_text()
            upsert(db, files_t, {"collection": collection, "path": path, "file_hash": file_hash,
                                 "config": config, "state": "pending", "updated_at": now},
                   ["collection", "path"], {"state": "pending", "updated_at": now})
            self._changed(db, collection)

    def commit_file(self, collection: str, path: str, file_hash: str, config: str,
                    chunks: list[Chunk]) -> None:
        """Swap a file's chunk rows in one transaction and mark it done."""
        with self.transaction() as db:
            db.execute(sa.delete(chunks_t).where(chunks_t.c.collection == collection,
                                                 chunks_t.c.path == path))
            if chunks:
                db.execute(sa.insert(chunks_t), [
                    {"id": c.id, "collection": collection, "path": path, "position": c.position,
                     "file_hash": c.file_hash, "text": c.text, "page": c.page,
                     "heading": c.heading, "anchor": c.anchor} for c in chunks])
            db.execute(sa.update(files_t)
                       .where(files_t.c.collection == collection, files_t.c.path == path)
                       .values(file_hash=file_hash, config=config, state="done",
                               chunks=len(chunks), updated_at=now_text()))
            self._changed(db, collection)

    def remove_file(self, collection: str, path: str) -> None:
        with self.transaction() as db:
            for table in (chunks_t, files_t):
                db.execute(sa.delete(table).where(table.c.collection == collection,
                                                  table.c.path == path))
            self._changed(db, collection)

    # chunks
    def chunks(self, collection: str, ids: Iterable[str]) -> dict[str, Chunk]:
        ids = list(ids)
        out: dict[str, Chunk] = {}
        with self.read() as db:
            for i in range(0, len(ids), 500):
                rows = db.execute(sa.select(chunks_t).where(chunks_t.c.collection == collection,
                                                            chunks_t.c.id.in_(ids[i : i + 500])))
                for r in rows:
                    out[r.id] = _chunk(r)
        return out

    def all_chunks(self, collection: str) -> Iterator[tuple[str, str]]:
        """(id, text) for every chunk, in a stable order (for the BM25 build)."""
        with self.read() as db:
            rows = db.execute(sa.select(chunks_t.c.id, chunks_t.c.text)
                              .where(chunks_t.c.collection == collection)
                              .order_by(chunks_t.c.path, chunks_t.c.position))
            yield from ((r.id, r.text) for r in rows)

    def chunk_ids(self, collection: str, db: sa.Connection | None = None) -> set[str]:
        query = sa.select(chunks_t.c.id).where(chunks_t.c.collection == collection)
        rows = db.execute(query) if db is not None else self.all(query)
        return {r.id for r in rows}

    def resolve(self, collection: str, ids: Iterable[str]) -> dict[str, str]:
        """Current id for each of ``ids``: itself, or what a pre-content-id alias became."""
        ids = list(ids)
        out = {i: i for i in ids}
        a = aliases_t
        with self.read() as db:
            for i in range(0, len(ids), 500):
                rows = db.execute(sa.select(a.c.old_id, a.c.new_id).where(
                    a.c.collection == collection, a.c.old_id.in_(ids[i : i + 500])))
                out.update({r.old_id: r.new_id for r in rows})
        return out

    def rekey_pending(self, collection: str) -> list[tuple[str, str]]:
        """(old id, new id) pairs whose vectors are still under the old id in the vector store."""
        a = aliases_t
        rows = self.all(sa.select(a.c.old_id, a.c.new_id)
                        .where(a.c.collection == collection, a.c.vectors_moved == 0))
        return [(r.old_id, r.new_id) for r in rows]

    def rekey_done(self, collection: str, old_ids: Iterable[str]) -> None:
        a = aliases_t
        rows = [{"old": i} for i in old_ids]
        if not rows:
            return
        with self.transaction() as db:
            db.execute(sa.update(a).where(a.c.collection == collection,
                                          a.c.old_id == sa.bindparam("old"))
                       .values(vectors_moved=1), rows)

    # retrieval versions
    def vectors_name(self, collection: str) -> str:
        """The vector collection serving ``collection`` now (its own name until a version is)."""
        name = self.scalar(sa.select(collections_t.c.vectors)
                           .where(collections_t.c.name == collection))
        return name or collection

    def serving(self, collection: str) -> RetrievalVersion:
        """The active retrieval version: its embedder and vectors, read together."""
        with self.read() as db:
            row = db.execute(sa.select(collections_t)
                             .where(collections_t.c.name == collection)).first()
            if row is None:
                self.require_collection(collection)
            found = db.execute(sa.select(versions_t).where(
                versions_t.c.collection == collection, versions_t.c.version == row.version)).first()
        base = RetrievalVersion(collection, row.version, row.embedder,
                                row.vectors or collection, "ready", row.created_at, active=True)
        return _version(found, row.version) if found else base

    def retrieval_versions(self, collection: str) -> list[RetrievalVersion]:
        """Every version, r0 first (r0 is listed even before any was learned)."""
        served = self.serving(collection)
        rows = self.all(sa.select(versions_t).where(versions_t.c.collection == collection)
                        .order_by(versions_t.c.version))
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
        v, c = versions_t, collections_t
        with self.transaction() as db:
            # r0 is recorded before the first switch, while `embedder` still names the ingest's.
            row = db.execute(sa.select(c).where(c.c.name == collection, c.c.version == 0)).first()
            if row is not None:
                insert_ignore(db, v, {"collection": collection, "version": 0,
                                      "embedder": row.embedder, "vectors": collection,
                                      "status": "ready", "created_at": now_text()})
            n = db.execute(sa.select(sa.func.coalesce(sa.func.max(v.c.version), 0) + 1)
                           .where(v.c.collection == collection)).scalar()
            db.execute(sa.insert(v).values(
                collection=collection, version=n, embedder=embedder(n),
                vectors=version_vectors(collection, n), status="building",
                metrics=json.dumps(metrics), created_at=now_text()))
        return self.retrieval_version(collection, n)

    def set_version_status(self, collection: str, version: int, status: VersionStatus,
                           metrics: dict[str, Any] | None = None) -> None:
        v = versions_t
        values: dict[str, Any] = {"status": status}
        if metrics is not None:
            values["metrics"] = json.dumps(metrics)
        with self.transaction() as db:
            db.execute(sa.update(v).where(v.c.collection == collection, v.c.version == version)
                       .values(**values))

    def switch_version(self, collection: str, version: int, embedded: set[str], *,
                       pending_stale_s: float = 600) -> bool:
        """Serve ``version`` from now on, in one transaction; False (nothing changed) while an
        ingest is writing the collection or a chunk has no vector in ``embedded`` yet.

        A 'pending' file younger than ``pending_stale_s`` is an ingest mid-write (its vectors go
        to the version served when it marked the file); an older one is a crashed ingest, which
        the next ingest redoes whatever version serves then.
        """
        target = self.retrieval_version(collection, version)
        c, f = collections_t, files_t
        with self.transaction() as db:
            busy = db.execute(sa.select(f.c.path).where(
                f.c.collection == collection, f.c.state == "pending",
                f.c.updated_at > now_text(-pending_stale_s)).limit(1)).first()
            if busy or not self.chunk_ids(collection, db) <= embedded:
                return False
            row = db.execute(sa.select(c.c.version, c.c.embedder)
                             .where(c.c.name == collection)).first()
            db.execute(sa.update(c).where(c.c.name == collection).values(
                embedder=target.embedder, vectors=target.vectors, version=version,
                generation=c.c.generation + 1))
            # Files record the embedder of their vectors (Indexer.config_key); every chunk now has
            # one from the new embedder, so say so, or the next ingest would redo every file.
            db.execute(sa.update(f).where(f.c.collection == collection).values(
                config=sa.func.replace(f.c.config, f"emb={row.embedder};",
                                       f"emb={target.embedder};")))
            db.execute(sa.update(versions_t).where(versions_t.c.collection == collection,
                                                   versions_t.c.version == version)
                       .values(status="ready"))
            db.execute(sa.insert(switches_t).values(collection=collection,
                                                    from_version=row.version, to_version=version,
                                                    at=now_text()))
        return True

    def previous_version(self, collection: str) -> int | None:
        """The version served before the last switch (None: never switched)."""
        s = switches_t
        return self.scalar(sa.select(s.c.from_version).where(s.c.collection == collection)
                           .order_by(s.c.id.desc()).limit(1))


def _first_generation() -> int:
    # Below 2**30: a PostgreSQL INTEGER has room for a billion writes after it.
    return secrets.randbelow(1 << 30) + 1


def _version(r: Any, active: int) -> RetrievalVersion:
    return RetrievalVersion(r.collection, r.version, r.embedder, r.vectors, r.status,
                            r.created_at, json.loads(r.metrics), r.version == active)


def _chunk(r: Any) -> Chunk:
    return Chunk(
        id=r.id, text=r.text, source=r.path, file_hash=r.file_hash,
        position=r.position, page=r.page, heading=r.heading, anchor=r.anchor,
    )

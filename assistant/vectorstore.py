"""The chunk store: Chroma holds vectors, SQLite holds chunk text and the file manifest, bm25s the
lexical index. SQLite is the source of truth: a vector whose chunk row is missing is never shown.

Chroma gets no document text because its full-text index made adds ~10× slower and the store
~5× bigger at 100k chunks (shared/RUNTIME.md); BM25 is ours anyway.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from assistant.errors import BadRequest, CollectionNotFound, ConfigError, StoreUnavailable
from assistant.schemas import Chunk
from assistant.settings import ChromaSettings
from assistant.sqlite import Database, migrations

_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")


def check_collection_name(name: str) -> str:
    if not _COLLECTION_NAME.match(name) or ".." in name:
        raise BadRequest(
            f"Invalid collection name {name!r}",
            "use 3–63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit",
        )
    return name


def chroma_client(settings: ChromaSettings, persist_dir: Path):
    """PersistentClient under the data dir, or HttpClient when a server URL is set."""
    import chromadb
    from chromadb.config import Settings as ChromaClientSettings

    client_settings = ChromaClientSettings(anonymized_telemetry=False)
    if not settings.url:
        persist_dir.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(persist_dir), settings=client_settings)
    url = urlparse(settings.url if "://" in settings.url else "http://" + settings.url)
    if not url.hostname:
        raise ConfigError(f"Bad Chroma URL {settings.url!r}", "use e.g. http://127.0.0.1:8000")
    try:
        client = chromadb.HttpClient(
            host=url.hostname,
            port=url.port or (443 if url.scheme == "https" else 8000),
            ssl=url.scheme == "https",
            settings=client_settings,
        )
        client.heartbeat()
    except Exception as exc:  # chromadb raises bare ValueError/httpx errors on connect
        raise StoreUnavailable(
            f"Cannot reach the Chroma server at {settings.url} ({type(exc).__name__})",
            "start it with `chroma run --path DIR --port PORT`, or unset LOCALCAT_CHROMA__URL to "
            "use the embedded store",
        ) from exc
    return client


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
            for table in ("chunks", "files"):
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

    def mark_pending(self, collection: str, path: str, file_hash: str, config: str) -> None:
        """Record intent before touching Chroma, so a crash leaves a trail the next run repairs."""
        with self.transaction() as db:
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

    def bm25_dirty(self, collection: str) -> bool:
        row = self.db.execute("SELECT bm25_dirty FROM collections WHERE name=?", (collection,)).fetchone()
        return bool(row and row["bm25_dirty"])

    def set_bm25_clean(self, collection: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE collections SET bm25_dirty=0 WHERE name=?", (collection,))


def _chunk(r: sqlite3.Row) -> Chunk:
    return Chunk(
        id=r["id"], text=r["text"], source=r["path"], file_hash=r["file_hash"],
        position=r["position"], page=r["page"], heading=r["heading"], anchor=r["anchor"],
    )


# Kept by bm25s's 33-word English stop list but carrying no topic; in a small collection a missing
# "what" would weigh as much as a missing subject.
QUESTION_WORDS = frozenset({
    "what", "how", "why", "when", "where", "which", "who", "whom", "whose", "do", "does", "did",
    "can", "could", "should", "would", "will", "may", "might", "must", "i", "me", "my", "we",
    "our", "you", "your", "get", "got", "many", "much", "about", "please", "tell",
})  # fmt: skip


class BM25Index:
    """A persisted bm25s index per collection, rebuilt after an ingest that changed it.

    bm25s has no incremental add; a rebuild of 100k chunks takes seconds, far below the embedding
    cost of the ingest that triggers it. Versions are directories swapped by renaming a pointer
    file, so a reader never sees a half-written index.
    """

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, tuple[str, object, list[str]]] = {}
        self._positions: dict[str, tuple[object, dict[str, int]]] = {}
        self._lock = threading.Lock()

    def _current(self, collection: str) -> str | None:
        try:
            return (self.root / collection / "CURRENT").read_text().strip() or None
        except FileNotFoundError:
            return None

    def rebuild(self, collection: str, items: Iterable[tuple[str, str]]) -> int:
        import bm25s

        ids, texts = [], []
        for chunk_id, text in items:
            ids.append(chunk_id)
            texts.append(text)
        base = self.root / collection
        base.mkdir(parents=True, exist_ok=True)
        version = f"v{int.from_bytes(os.urandom(6), 'big'):x}"
        target = base / version
        if ids:
            retriever = bm25s.BM25()
            retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False),
                            show_progress=False)
            retriever.save(str(target))
        else:
            target.mkdir()
        (target / "ids.json").write_text(json.dumps(ids))
        tmp = base / "CURRENT.tmp"
        tmp.write_text(version)
        os.replace(tmp, base / "CURRENT")
        for old in base.iterdir():
            if old.is_dir() and old.name != version:
                shutil.rmtree(old, ignore_errors=True)
        return len(ids)

    def drop(self, collection: str) -> None:
        shutil.rmtree(self.root / collection, ignore_errors=True)
        self._cache.pop(collection, None)

    def _load(self, collection: str):
        version = self._current(collection)
        cached = self._cache.get(collection)
        if cached and cached[0] == version:
            return cached[1], cached[2]
        with self._lock:
            if version is None:
                return None, []
            import bm25s

            folder = self.root / collection / version
            ids = json.loads((folder / "ids.json").read_text())
            retriever = bm25s.BM25.load(str(folder)) if ids else None
            self._cache[collection] = (version, retriever, ids)
            return retriever, ids

    def coverage(self, collection: str, query: str, chunk_ids: Iterable[str]) -> float:
        """The largest share of the query's weight (its terms' idf) that one of the chunks holds.

        1.0 when a chunk has every query term, less as rarer terms are missing. Raw BM25 scores
        grow with the collection (an exact "extension 4417" scores 0.9 among 5 chunks, an
        off-topic question 4–6 among 2,600); this share means the same at any size.
        """
        import bisect
        import math

        import bm25s

        retriever, ids = self._load(collection)
        terms = set(bm25s.tokenize([query], stopwords="en", return_ids=False,
                                   show_progress=False)[0]) - QUESTION_WORDS - {""}
        if retriever is None or not terms:
            return 0.0
        cached = self._positions.get(collection)
        if cached is None or cached[0] is not retriever:
            cached = (retriever, {chunk_id: i for i, chunk_id in enumerate(ids)})
            self._positions[collection] = cached
        docs = {cached[1][c] for c in chunk_ids if c in cached[1]}
        vocab, indptr = retriever.vocab_dict, retriever.scores["indptr"]
        indices = retriever.scores["indices"]  # per term, the sorted rows that contain it
        total, held = 0.0, dict.fromkeys(docs, 0.0)
        for term in terms:
            j = vocab.get(term)
            lo, hi = (int(indptr[j]), int(indptr[j + 1])) if j is not None and j + 1 < len(indptr) else (0, 0)
            weight = math.log(1 + (len(ids) - (hi - lo) + 0.5) / (hi - lo + 0.5))
            total += weight
            for d in docs:
                at = bisect.bisect_left(indices, d, lo, hi)
                if at < hi and indices[at] == d:
                    held[d] += weight
        return max(held.values(), default=0.0) / total

    def search(self, collection: str, query: str, k: int) -> list[tuple[str, float]]:
        """(chunk id, BM25 score) best first; only chunks sharing a term with the query."""
        import bm25s

        retriever, ids = self._load(collection)
        if retriever is None or not ids:
            return []
        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        if not tokens or not tokens[0]:
            return []
        docs, scores = retriever.retrieve(tokens, k=min(k, len(ids)), show_progress=False)
        return [(ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]

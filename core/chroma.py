"""Chroma behind one small class: the only code that speaks Chroma's API.

Vectors only (no document text, see core/chunkstore.py). ``PersistentClient`` under the data dir,
or ``HttpClient`` when ``chroma.url`` is set: same code, a settings switch.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from core.errors import ConfigError, StoreUnavailable
from core.redact import redact_url
from core.schemas import Chunk
from core.settings import ChromaSettings


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
        raise ConfigError(f"Bad Chroma URL {redact_url(settings.url)!r}",
                          "use e.g. http://127.0.0.1:8000")
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
            f"Cannot reach the Chroma server at {redact_url(settings.url)} ({type(exc).__name__})",
            "start it with `chroma run --path DIR --port PORT`, or unset LOCALCAT_CHROMA__URL to "
            "use the embedded store",
        ) from exc
    return client


# Chroma rejects adds above its max batch size (~5k); stay well below.
_BATCH = 1000
# A learned retrieval version's vectors live beside the collection's own, as <collection>--r<N>.
VERSION_SUFFIX = re.compile(r"--r(\d+)$")


def version_vectors(collection: str, version: int) -> str:
    """The Chroma collection of retrieval version ``version`` (0: the collection's own name)."""
    if version == 0:
        return collection
    suffix = f"--r{version}"
    # 63: the longest collection name we allow (and older Chroma servers); cut, it stays unique.
    if len(collection) + len(suffix) > 63:
        digest = hashlib.sha1(collection.encode()).hexdigest()[:8]
        collection = f"{collection[: 62 - len(suffix) - len(digest)]}-{digest}"
    return collection + suffix


class VectorStore:
    """Vectors per collection, keyed by chunk id, with the chunk's source in their metadata.

    The only user of Chroma's API: upsert, delete by source, search, drop. ``route`` names the
    Chroma collection that holds a collection's vectors now (its active retrieval version).
    """

    def __init__(self, connect: Callable[[], Any], route: Callable[[str], str] | None = None):
        self._connect = connect
        self._route = route or (lambda name: name)

    @cached_property
    def client(self):
        """Chroma's client, opened on first use: a re-ingest of unchanged files never needs it
        (opening the embedded store costs ~1.5 s)."""
        return self._connect()

    def pinned(self, collection: str, vectors: str) -> VectorStore:
        """This store with ``collection`` read from and written to the Chroma collection ``vectors``.

        A retriever keeps the vectors its embedder made even if the collection switches
        version meanwhile; learning writes a version that is not served yet.
        """
        route = self._route
        return VectorStore(lambda: self.client,
                           lambda name: vectors if name == collection else route(name))

    def _collection(self, name: str, *, create: bool = False):
        name = self._route(name)
        if create:
            return self.client.get_or_create_collection(
                name, metadata={"hnsw:space": "cosine"}, embedding_function=None
            )
        return self.client.get_collection(name, embedding_function=None)

    def create(self, collection: str) -> None:
        self._collection(collection, create=True)

    def upsert(self, collection: str, chunks: Sequence[Chunk], vectors: Sequence) -> None:
        coll = self._collection(collection, create=True)
        for i in range(0, len(chunks), _BATCH):
            part = chunks[i : i + _BATCH]
            coll.upsert(ids=[c.id for c in part], embeddings=vectors[i : i + _BATCH],
                        metadatas=[_metadata(c) for c in part])

    def delete_sources(self, collection: str, sources: Sequence[str]) -> None:
        """Remove every vector whose chunk came from one of ``sources``."""
        if sources:
            coll = self._collection(collection, create=True)
            coll.delete(where={"source": {"$in": list(sources)}})

    def search(self, collection: str, vector: Sequence[float], n: int) -> list[tuple[str, float]]:
        """(chunk id, cosine similarity), best first."""
        # No count() first: it cost 14 of 18 ms per query at 100k chunks, and Chroma already
        # returns what there is when n_results exceeds it.
        from chromadb.errors import NotFoundError

        try:
            coll = self._collection(collection)
        except NotFoundError:  # no file of the collection has been written yet
            return []
        res = coll.query(query_embeddings=[list(vector)], n_results=n, include=["distances"])
        return [(i, 1.0 - float(d)) for i, d in zip(res["ids"][0], res["distances"][0], strict=True)]

    def vectors(self, collection: str, ids: Sequence[str]) -> dict[str, list[float]]:
        """The stored vectors of ``ids`` (those that exist)."""
        got = self._collection(collection).get(ids=list(ids), include=["embeddings"])
        return {i: list(v) for i, v in zip(got["ids"], got["embeddings"], strict=True)}

    def ids(self, collection: str) -> set[str]:
        """Every chunk id that has a vector (none when the collection does not exist yet)."""
        from chromadb.errors import NotFoundError

        try:
            coll = self._collection(collection)
        except NotFoundError:
            return set()
        out: set[str] = set()
        while page := coll.get(include=[], limit=10 * _BATCH, offset=len(out))["ids"]:
            out.update(page)
        return out

    def delete_ids(self, collection: str, ids: Sequence[str]) -> None:
        ids = list(ids)
        for i in range(0, len(ids), _BATCH):
            self._collection(collection, create=True).delete(ids=ids[i : i + _BATCH])

    def rekey(self, collection: str, moves: Sequence[tuple[str, str]], chunks: dict[str, Chunk]) -> None:
        """Move vectors from old ids to new ones (``chunks`` by new id gives their metadata).

        Copy first, then delete: a crash in between leaves both, and the next call redoes it.
        """
        for i in range(0, len(moves), _BATCH):
            part = moves[i : i + _BATCH]
            old = self.vectors(collection, [o for o, _ in part])
            keep = [(o, n) for o, n in part if o in old and n in chunks]
            if keep:
                self.upsert(collection, [chunks[n] for _, n in keep], [old[o] for o, _ in keep])
            self._collection(collection).delete(ids=[o for o, _ in part])

    def drop(self, collection: str) -> None:
        """Delete a collection's vectors, its retrieval versions' too; already gone is fine."""
        names = [c.name for c in self.client.list_collections()]
        versions = [n for n in names if (m := VERSION_SUFFIX.search(n))
                    and n == version_vectors(collection, int(m[1]))]
        for name in (collection, *versions):
            self.drop_vectors(name)

    def drop_vectors(self, name: str) -> None:
        """Delete one Chroma collection by its own name (deleted by hand, a crash mid-drop: fine)."""
        from chromadb.errors import NotFoundError

        with contextlib.suppress(NotFoundError):
            self.client.delete_collection(name)

    def heartbeat(self) -> None:
        self.client.heartbeat()


def _metadata(c: Chunk) -> dict:
    meta = {"source": c.source, "position": c.position, "file_hash": c.file_hash}
    meta.update({k: v for k, v in (("page", c.page), ("heading", c.heading), ("anchor", c.anchor))
                 if v is not None})
    return meta

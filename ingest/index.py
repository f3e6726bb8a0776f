"""The ingest run: files → hash check → sections → chunks → embeddings → Chroma + chunk store.

Per file, nothing is written until it has parsed, chunked and embedded, so a bad file never
touches the store. Writes then go: manifest row 'pending' → Chroma delete-by-source + add →
one SQLite transaction swapping the chunk rows and marking 'done'. A crash anywhere leaves a
'pending' row; the next run redoes that file from scratch, so it ends with exactly the chunks a
clean ingest gives. Retrieval reads text from SQLite, so stray vectors are never shown.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.bm25 import BM25Index
from core.chroma import VectorStore
from core.chunkstore import ChunkStore, EmbedderChanged, check_collection_name
from core.errors import BadFile, Cancelled
from core.schemas import Chunk, FileResult, IngestReport
from core.settings import Settings
from ingest.loaders import iter_files
from ingest.parse import Parser
from ingest.stamps import real_paths

if TYPE_CHECKING:  # importing it costs a re-ingest of unchanged files ~0.15 s
    from langchain_core.embeddings import Embeddings

# Files are embedded and written together until their chunks reach this.
_EMBED_BATCH = 256
# A cancellable ingest (a server's) encodes this many chunks between checks: 64 took 4 s with
# both cores busy parsing zip bombs, too long for a server that must stop within 5 s; 8 take
# under 1 s, and 96 chunks encoded 8 at a time were no slower than in one call.
_CANCEL_EVERY = 8


@dataclass
class _Prepared:
    """A file parsed and chunked, waiting to be embedded and written."""

    key: str
    digest: str
    existed: bool
    chunks: list[Chunk]


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Progress:
    """Callbacks for a UI: files found, a file finished, chunks embedded and written."""

    on_files: Callable[[int], None] = lambda total: None
    on_file_done: Callable[[FileResult], None] = lambda result: None
    on_chunks: Callable[[int], None] = lambda written: None


class Indexer:
    """Writes documents into one collection; the only writer of the chunk store and Chroma."""

    def __init__(self, settings: Settings, embedders: Callable[[str], Embeddings],
                 vectors: VectorStore, store: ChunkStore, bm25: BM25Index, parser: Parser):
        self.settings = settings
        self.parser = parser
        # The embedder of a collection: the one it was built with, or the configured one.
        self.embedders = embedders
        self.vectors = vectors
        self.store = store
        self.bm25 = bm25

    def config_key(self, collection: str, embedder: str | None = None) -> str:
        """What besides file content decides the chunks: changing it re-ingests everything."""
        c = self.settings.chunking
        name = embedder or self._embedder_name(collection)
        return f"emb={name};size={c.chunk_size};overlap={c.chunk_overlap}"

    def _embedder_name(self, collection: str) -> str:
        """The collection's embedder as it recorded it: an unchanged file is checked without
        building the embedder (its module alone took a tenth of a re-ingest's time)."""
        return self.store.embedder_of(collection) or self.embedders(collection).name

    def _collection(self, name: str) -> None:
        check_collection_name(name)
        if self.store.embedder_of(name) is None:
            embeddings = self.embedders(name)
            self.store.ensure_collection(name, embeddings.name, lambda: embeddings.dimension)
        if self.store.rekey_pending(name):
            self.finish_migration(name)

    def ingest(
        self,
        paths: Iterable[Path],
        collection: str,
        *,
        prune: bool = True,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> IngestReport:
        """Ingest files and folders; with ``cancel``, ``Cancelled`` soon after it is set.

        A cancelled run stops between files or embedding slices (a running parse is killed);
        what it wrote is whole and a later run of the same paths finishes the rest."""
        progress = progress or Progress()
        started = time.perf_counter()
        self._collection(collection)
        report = IngestReport(collection=collection)
        paths = [Path(p) for p in real_paths(paths)]

        # Files left 'pending' by a crashed run are redone whatever their hash says.
        for p in paths:
            if not p.exists():
                report.files.append(
                    FileResult(path=str(p), status="failed", reason="no such file or folder")
                )
        # One walk over all of them: a file named beside its folder is seen once.
        found = list(iter_files([p for p in paths if p.exists()]))
        progress.on_files(len(found))

        seen: set[str] = set()
        batch: list[_Prepared] = []
        # Files being parsed by the workers, oldest first; results are taken in order so the
        # report follows the file order, and the window keeps workers busy during encodes.
        parsing: deque[tuple[Path, str, bool, Future]] = deque()
        window = 2 * self.parser.workers + 2
        # Read once, not once a file: a switch of retrieval version meanwhile re-stamps the files,
        # which then no longer match and are done again (rare, and correct).
        config = self.config_key(collection)

        def done(result: FileResult) -> None:
            report.files.append(result)
            progress.on_file_done(result)

        def write(files: list[_Prepared]) -> None:
            results = self._write(files, collection, cancel)
            progress.on_chunks(sum(r.chunks for r in results if r.status != "failed"))
            for result in results:
                done(result)

        def take_parsed() -> None:
            nonlocal batch
            path, digest, existed, future = parsing.popleft()
            try:
                chunks = self.parser.result(future, cancel)
            except BadFile as exc:
                done(FileResult(path=str(path), status="failed", reason=str(exc)))
                return
            batch.append(_Prepared(str(path), digest, existed, chunks))
            if sum(len(p.chunks) for p in batch) >= _EMBED_BATCH:
                write(batch)
                batch = []

        try:
            for path, problem in found:
                _check_cancel(cancel)
                seen.add(str(path))
                checked = (FileResult(path=str(path), status="failed", reason=problem) if problem
                           else self._check(path, collection, config))
                if isinstance(checked, FileResult):
                    done(checked)
                    continue
                parsing.append((path, *checked, self.parser.submit(path, checked[0])))
                while len(parsing) > window:
                    take_parsed()
            while parsing:
                take_parsed()
            write(batch)
        finally:
            for *_, future in parsing:  # left by an error or a cancel: don't let them run on
                future.cancel()

        if prune:
            folders = [p for p in paths if p.is_dir()]
            for rec in self.store.files(collection):
                if rec.path in seen or not any(Path(rec.path).is_relative_to(f) for f in folders):
                    continue
                if Path(rec.path).exists() and rec.state == "done":
                    continue  # still there, just unsupported now or hidden: leave it
                self._remove(rec.path, collection)
                report.files.append(FileResult(path=rec.path, status="removed", chunks=rec.chunks))
        self.refresh_bm25(collection)
        report.seconds = time.perf_counter() - started
        return report

    def _check(self, path: Path, collection: str, config: str) -> tuple[str, bool] | FileResult:
        """(content hash, known before) of a file to parse, or its result when it is unchanged."""
        key = str(path)
        try:
            digest = file_hash(path)
        except OSError as exc:
            return FileResult(path=key, status="failed", reason=f"cannot read: {exc.strerror}")
        old = self.store.file(collection, key)
        if old and old.state == "done" and old.file_hash == digest and old.config == config:
            return FileResult(path=key, status="skipped", chunks=old.chunks)
        return digest, old is not None

    def _write(self, batch: list[_Prepared], collection: str,
               cancel: threading.Event | None = None) -> list[FileResult]:
        """Embed several files' chunks in one call and write them with few Chroma calls.

        One encode and one add per batch instead of per file: a Chroma add costs ~40 ms whatever
        its size, which made small files ingest at 0.7× the raw encode speed (BENCHMARKS.md).
        """
        if not batch:
            return []
        texts = [c.text for p in batch for c in p.chunks]
        embedder = self.embedders(collection)
        try:
            vectors = _encode(embedder, texts, cancel)
        except (ValueError, MemoryError, RuntimeError) as exc:
            if len(batch) == 1:
                reason = f"cannot embed: {type(exc).__name__}: {exc}"
                return [FileResult(path=batch[0].key, status="failed", reason=reason)]
            # Find the file that breaks the encoder and let the others through.
            return [r for p in batch for r in self._write([p], collection, cancel)]
        config = self.config_key(collection, embedder.name)
        try:
            for p in batch:
                self.store.mark_pending(collection, p.key, p.digest, config, embedder.name)
        except EmbedderChanged:  # a learned retrieval version is served now: embed with it
            return self._write(batch, collection, cancel)
        self.vectors.delete_sources(collection, [p.key for p in batch])
        self.vectors.upsert(collection, [c for p in batch for c in p.chunks], vectors)
        results = []
        for p in batch:
            self.store.commit_file(collection, p.key, p.digest, config, p.chunks)
            results.append(FileResult(path=p.key, status="updated" if p.existed else "added",
                                      chunks=len(p.chunks)))
        return results

    def _remove(self, path: str, collection: str) -> None:
        self.vectors.delete_sources(collection, [path])
        self.store.remove_file(collection, path)

    def remove(self, paths: Iterable[str], collection: str) -> IngestReport:
        """Forget files (by their ingested path) from a collection."""
        self.store.require_collection(collection)
        self._collection(collection)
        report = IngestReport(collection=collection)
        for p in paths:
            key = str(Path(p).expanduser().resolve())
            rec = self.store.file(collection, key)
            if rec is None:
                report.files.append(
                    FileResult(path=key, status="failed", reason="not in collection")
                )
                continue
            self._remove(key, collection)
            report.files.append(FileResult(path=key, status="removed", chunks=rec.chunks))
        self.refresh_bm25(collection)
        return report

    def finish_migration(self, collection: str) -> None:
        """Move vectors still under pre-content-id chunk ids (index migration 2) to their new ids."""
        moves = self.store.rekey_pending(collection)
        if moves:
            chunks = self.store.chunks(collection, [n for _, n in moves])
            self.vectors.rekey(collection, moves, chunks)
            self.store.rekey_done(collection, [o for o, _ in moves])
        self.refresh_bm25(collection)

    def refresh_bm25(self, collection: str) -> None:
        self.bm25.sync(collection, self.store)

    def drop_collection(self, collection: str) -> None:
        self.store.require_collection(collection)
        self.vectors.drop(collection)  # with its learned retrieval versions' vectors
        self.store.drop_collection(collection)
        shutil.rmtree(self.settings.learned_dir / collection, ignore_errors=True)  # and models
        self.bm25.drop(collection)


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("Ingest stopped: the process is stopping")


def _encode(embedder, texts: list[str], cancel: threading.Event | None):
    """All texts in one call, or in slices with a cancel check between them (the last check
    is before any write, so a cancelled batch leaves nothing behind)."""
    if cancel is None:
        return embedder.encode(texts)
    import numpy as np

    parts = []
    for i in range(0, len(texts), _CANCEL_EVERY):
        _check_cancel(cancel)
        parts.append(embedder.encode(texts[i:i + _CANCEL_EVERY]))
    _check_cancel(cancel)
    return np.concatenate(parts) if parts else embedder.encode(texts)

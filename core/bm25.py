"""The lexical index: a persisted bm25s index per collection."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

# Kept by bm25s's 33-word English stop list but carrying no topic; in a small collection a missing
# "what" would weigh as much as a missing subject.
QUESTION_WORDS = frozenset({
    "what", "how", "why", "when", "where", "which", "who", "whom", "whose", "do", "does", "did",
    "can", "could", "should", "would", "will", "may", "might", "must", "i", "me", "my", "we",
    "our", "you", "your", "get", "got", "many", "much", "about", "please", "tell",
})  # fmt: skip


# A term asked for by its exact spelling, which an embedding blurs and BM25 matches: a dotted or
# underscored name (os.path, SOUND_MIXER_SYNTH), a call (len()), camelCase, a word in capitals
# (EXCLUSIVE, HTTP), a number of 3+ digits, `code`.
_EXACT_TERM = re.compile(
    r"\w_\w|[A-Za-z]\.[A-Za-z_]|\w\(|[a-z][A-Z]|\b[A-Z][A-Z0-9]{2,}\b|\b\d{3,}\b|`")


def names_exact_terms(query: str) -> bool:
    """The question names an identifier, code or number (see _EXACT_TERM), not only prose words."""
    return bool(_EXACT_TERM.search(query))


class ChunkSource(Protocol):
    """What the index is rebuilt from (core/chunkstore.py ChunkStore)."""

    def generation(self, collection: str) -> int | None: ...

    def all_chunks(self, collection: str) -> Iterator[tuple[str, str]]: ...


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
        self._build_locks: dict[str, threading.Lock] = {}
        self._checked: dict[str, float] = {}

    def _pointer(self, collection: str) -> tuple[str | None, int | None]:
        """(version folder, the chunk store generation it was built from) of the current index."""
        try:
            text = (self.root / collection / "CURRENT").read_text().split()
        except FileNotFoundError:
            return None, None
        if not text:
            return None, None
        return text[0], int(text[1]) if len(text) > 1 else None

    def _current(self, collection: str) -> str | None:
        return self._pointer(collection)[0]

    def built_generation(self, collection: str) -> int | None:
        return self._pointer(collection)[1]

    def sync(self, collection: str, store: ChunkSource, *, every_s: float = 0.0) -> bool:
        """Rebuild from ``store`` when its generation of the collection moved past this index's
        (another process, or another server on a shared database, changed it); True if rebuilt.

        ``every_s`` > 0 asks the store at most that often (a search path calls this each query).
        """
        now = time.monotonic()
        if every_s and now - self._checked.get(collection, -every_s) < every_s:
            return False
        self._checked[collection] = now
        generation = store.generation(collection)
        if generation is None or generation == self.built_generation(collection):
            return False
        with self._lock_for(collection):
            if generation == self.built_generation(collection):
                return False  # another thread rebuilt it meanwhile
            # The generation is read before the chunks: a write in between makes the index look
            # older than it is, so the next sync rebuilds again, never the other way round.
            self.rebuild(collection, store.all_chunks(collection), generation=generation)
        return True

    def _lock_for(self, collection: str) -> threading.Lock:
        with self._lock:
            return self._build_locks.setdefault(collection, threading.Lock())

    def rebuild(self, collection: str, items: Iterable[tuple[str, str]],
                generation: int | None = None) -> int:
        import bm25s

        ids, texts = [], []
        for chunk_id, text in items:
            ids.append(chunk_id)
            texts.append(text)
        base = self.root / collection
        base.mkdir(parents=True, exist_ok=True)
        version = f"v{int.from_bytes(os.urandom(6), 'big'):x}"
        target = base / version
        tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False) if ids else None
        if tokens is not None and tokens.vocab:
            retriever = bm25s.BM25()
            retriever.index(tokens, show_progress=False)
            retriever.save(str(target))
        else:  # no chunks, or only stop words (bm25s cannot index an empty vocabulary)
            target.mkdir()
            ids = []
        (target / "ids.json").write_text(json.dumps(ids))
        tmp = base / f"CURRENT.{version}.tmp"
        tmp.write_text(version if generation is None else f"{version} {generation}")
        os.replace(tmp, base / "CURRENT")
        cutoff = time.time() - 60
        for old in base.iterdir():
            # Not the folders of the last minute: another process's rebuild may be about to
            # point CURRENT at its own.
            if old.is_dir() and old.name != version and old.stat().st_mtime < cutoff:
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

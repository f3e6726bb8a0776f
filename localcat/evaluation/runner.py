"""Running the retrieval eval: ingest a corpus into a scratch index, collect each query's dense and
BM25 candidates once, rank them with the retriever's own ``fuse`` and score the rankings.

Each corpus document becomes one file, so a chunk maps back to its document through its source
path. Chunk rankings become document rankings by each document's best chunk. Each side gives
max(candidates, k) chunks as in production (20 by default), so a document that only a chunk beyond
that would have found counts as missed. Unanswerable questions measure the relevance bar: how often
an answerable question gets "nothing found" and how often an unanswerable one still retrieves.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ConfigError
from localcat.evaluation.datasets import BeirSet
from localcat.evaluation.metrics import doc_ranking, ndcg_at_k, score_run

if TYPE_CHECKING:  # settings (pydantic-settings) stay out of `localcat --help`'s imports
    from core.settings import RetrievalSettings, Settings

MODES = ("dense", "bm25", "fused")
SIM_GRID = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)
COVERAGE_GRID = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.01)


# --- ranking, as HybridRetriever.search does it -------------------------------------------------


@dataclass
class Candidates:
    """What one query got from each side: (chunk id, cosine) and (chunk id, BM25 score), best first."""

    dense: list[tuple[str, float]]
    lexical: list[tuple[str, float]]
    coverage: float = 0.0  # BM25Index.coverage of the first COVERAGE_DEPTH BM25 hits
    query: str = ""  # the question (its exact terms choose BM25's weight)

    @property
    def top_similarity(self) -> float | None:
        return self.dense[0][1] if self.dense else None

    @property
    def top_bm25(self) -> float:
        return self.lexical[0][1] if self.lexical else 0.0


def mode_settings(rs: RetrievalSettings, mode: str) -> RetrievalSettings:
    """Retrieval settings for one mode; dense and BM25 alone switch the other side's weight off
    (BM25 alone ranks every question, prose or not, at its own weight)."""
    return {"dense": rs.model_copy(update={"bm25_weight": 0.0}),
            "bm25": rs.model_copy(update={"dense_weight": 0.0,
                                          "prose_bm25_weight": rs.bm25_weight}),
            "fused": rs}[mode]


def unfiltered(rs: RetrievalSettings) -> RetrievalSettings:
    """The same ranking with no relevance bar (every candidate passes)."""
    return rs.model_copy(update={"min_similarity": -1.0, "min_coverage": 0.0})


def rank(c: Candidates, rs: RetrievalSettings) -> list[str]:
    """Chunk ids as the retriever orders them (before its cut to k), or [] when the relevance bar
    turns the question away: the retriever's own ``fuse`` on the collected candidates."""
    from assistant.retriever import fuse

    return [i for i, _ in fuse(c.query, c.dense, c.lexical, lambda: c.coverage, rs)]


# --- running it ---------------------------------------------------------------------------------


@dataclass
class Prepared:
    """Documents ingested into a scratch collection, ready to query."""

    container: object
    collection: str
    chunk_doc: dict[str, str]  # chunk id → document (BEIR doc id, or file name)
    source_doc: dict[str, str]  # a chunk's source path → document
    ingest_seconds: float
    ingest_summary: dict[str, int]

    @property
    def chunks(self) -> int:
        return len(self.chunk_doc)

    def doc_of(self, source: str) -> str:
        return self.source_doc.get(source) or Path(source).name


def _doc_file(doc_id: str) -> str:
    return hashlib.sha1(doc_id.encode()).hexdigest()[:20] + ".txt"


def prepare(data: BeirSet, work_dir: Path, settings: Settings, *, quiet: bool = False) -> Prepared:
    """Write each corpus document as a file and ingest them with the real Indexer.

    The work dir keeps files and index between runs: ingest skips unchanged documents, and each
    chunking configuration gets its own collection, so switching back and forth costs nothing.
    """
    corpus_dir = work_dir / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    file_doc: dict[str, str] = {}
    for doc_id, (title, text) in data.corpus.items():
        path = corpus_dir / _doc_file(doc_id)
        body = f"{title}\n\n{text}" if title else text
        if not path.is_file() or path.read_text(encoding="utf-8") != body:
            path.write_text(body, encoding="utf-8")
        file_doc[str(path.resolve())] = doc_id
    for stale in corpus_dir.iterdir():
        if str(stale.resolve()) not in file_doc:
            stale.unlink()
    ch = settings.chunking
    return _ingest([corpus_dir], work_dir, settings, f"eval-s{ch.chunk_size}-o{ch.chunk_overlap}",
                   file_doc, quiet=quiet)


def prepare_files(paths: list[Path], work_dir: Path, settings: Settings, *,
                  quiet: bool = False) -> Prepared:
    """Ingest files and folders as they are; a chunk's document is its file name."""
    resolved = sorted(str(Path(p).expanduser().resolve()) for p in paths)
    # One collection per set of paths: ingest prunes files that left a folder, not other folders.
    digest = hashlib.sha1("\n".join(resolved).encode()).hexdigest()[:8]
    ch = settings.chunking
    return _ingest([Path(p) for p in resolved], work_dir, settings,
                   f"docs-{digest}-s{ch.chunk_size}-o{ch.chunk_overlap}", {}, quiet=quiet)


def _ingest(paths: list[Path], work_dir: Path, settings: Settings, collection: str,
            source_doc: dict[str, str], *, quiet: bool) -> Prepared:
    """Ingest into ``collection`` under ``work_dir/data`` (an embedded Chroma, never the user's)."""
    from tqdm import tqdm

    from ingest.index import Progress
    from localcat.container import Container

    scratch = settings.model_copy(update={
        "data_dir": work_dir / "data",
        "chroma": settings.chroma.model_copy(update={"url": None}),
    })
    c = Container(scratch)
    bar = tqdm(total=0, unit="doc", file=sys.stderr, disable=quiet, desc=f"ingest → {collection}")
    progress = Progress(on_files=lambda n: setattr(bar, "total", n) or bar.refresh(),
                        on_file_done=lambda r: bar.update())
    started = time.perf_counter()
    try:
        report = c.indexer.ingest(paths, collection, progress=progress)
    finally:
        bar.close()
    failed = [f for f in report.files if f.status == "failed"]
    if failed:
        raise ConfigError(f"{len(failed)} documents failed to ingest, e.g. "
                          f"{source_doc.get(failed[0].path, failed[0].path)}: {failed[0].reason}",
                          "check the documents (empty ones are refused)")
    chunks = c.store.chunks(collection, c.store.chunk_ids(collection))
    prepared = Prepared(c, collection, {}, source_doc, time.perf_counter() - started,
                        report.summary())
    prepared.chunk_doc.update({cid: prepared.doc_of(ch.source) for cid, ch in chunks.items()})
    return prepared


def collect(prepared: Prepared, queries: Mapping[str, str], depth: int,
            *, quiet: bool = False) -> tuple[dict[str, Candidates], dict[str, float]]:
    """Dense and BM25 candidates for every query (depth each), and the p50 time of each side."""
    from tqdm import tqdm

    from assistant.retriever import COVERAGE_DEPTH

    c = prepared.container
    retriever = c.retriever(prepared.collection)
    out: dict[str, Candidates] = {}
    times: dict[str, list[float]] = {"dense": [], "bm25": []}
    for qid, text in tqdm(queries.items(), desc="queries", unit="q", file=sys.stderr, disable=quiet):
        t0 = time.perf_counter()
        dense = retriever.dense(text, depth)
        t1 = time.perf_counter()
        lexical = c.bm25.search(prepared.collection, text, depth)
        t2 = time.perf_counter()
        times["dense"].append(t1 - t0)
        times["bm25"].append(t2 - t1)
        top = [i for i, _ in lexical[:COVERAGE_DEPTH]]
        out[qid] = Candidates(dense, lexical, c.bm25.coverage(prepared.collection, text, top), text)
    return out, {k: 1000 * statistics.median(v) for k, v in times.items() if v}


def threshold_rates(answerable: Mapping[str, Candidates], qrels: Mapping[str, Mapping[str, int]],
                    unanswerable: Mapping[str, Candidates], kinds: Mapping[str, str],
                    chunk_doc: Mapping[str, str], rs: RetrievalSettings) -> dict[str, float]:
    """What the relevance bar in ``rs`` does with the fused ranking.

    nothing_found: answerable questions told "nothing found"; answer_in_top_k: answerable
    questions whose relevant document is among the k chunks the model would get; retrieved[kind]:
    unanswerable questions that still get chunks.
    """
    found = {q: rank(c, rs) for q, c in answerable.items()}
    out = {
        "nothing_found": sum(not r for r in found.values()) / max(len(found), 1),
        "answer_in_top_k": sum(any(qrels[q].get(chunk_doc.get(i, ""), 0) > 0 for i in r[: rs.k])
                               for q, r in found.items()) / max(len(found), 1),
    }
    by_kind: dict[str, list[bool]] = {}
    for q, c in unanswerable.items():
        by_kind.setdefault(kinds[q], []).append(bool(rank(c, rs)))
    out.update({f"retrieved[{k}]": sum(v) / len(v) for k, v in sorted(by_kind.items())})
    return out


def evaluate(data: BeirSet, prepared: Prepared, rs: RetrievalSettings, *,
             quiet: bool = False) -> dict:
    """The full report: metrics per mode, the relevance bar now and swept, and per-query ranks."""
    depth = max(rs.candidates, rs.k)
    answerable, query_ms = collect(prepared, data.queries, depth, quiet=quiet)
    unanswerable, _ = collect(prepared, {q: t for q, (t, _) in data.unanswerable.items()}, depth,
                              quiet=True)
    kinds = {q: kind for q, (_, kind) in data.unanswerable.items()}
    runs = {mode: {q: doc_ranking(rank(c, unfiltered(mode_settings(rs, mode))), prepared.chunk_doc)
                   for q, c in answerable.items()}
            for mode in MODES}
    metrics = {mode: score_run(run, data.qrels) for mode, run in runs.items()}

    sweep = []
    for sim in SIM_GRID:
        for cov in COVERAGE_GRID:
            bar = rs.model_copy(update={"min_similarity": sim, "min_coverage": cov})
            rates = threshold_rates(answerable, data.qrels, unanswerable, kinds,
                                    prepared.chunk_doc, bar)
            sweep.append({"min_similarity": sim, "min_coverage": cov, **rates})

    def first_rank(ranked: list[str], rels: Mapping[str, int]) -> int | None:
        return next((r for r, d in enumerate(ranked, 1) if rels.get(d, 0) > 0), None)

    # Per query, for paired comparisons: fused nDCG@10, and whether the relevant document is
    # among the k chunks the model would be shown (the relevance bar applied).
    shown = {q: any(data.qrels[q].get(prepared.chunk_doc.get(i, ""), 0) > 0
                    for i in rank(c, rs)[: rs.k]) for q, c in answerable.items()}
    per_query = [
        {"id": q, "text": data.queries[q],
         **{f"rank_{m}": first_rank(runs[m][q], data.qrels[q]) for m in MODES},
         "ndcg_fused": ndcg_at_k(runs["fused"][q], data.qrels[q]), "shown": shown[q],
         "top_similarity": answerable[q].top_similarity, "top_bm25": answerable[q].top_bm25,
         "coverage": answerable[q].coverage}
        for q in data.queries
    ] + [
        {"id": q, "text": t, "kind": kind, "top_similarity": unanswerable[q].top_similarity,
         "top_bm25": unanswerable[q].top_bm25, "coverage": unanswerable[q].coverage}
        for q, (t, kind) in data.unanswerable.items()
    ]
    return {
        "dataset": {"documents": len(data.corpus), "queries": len(data.queries),
                    "unanswerable": len(data.unanswerable)},
        "collection": prepared.collection,
        "chunks": prepared.chunks,
        "ingest": {"seconds": round(prepared.ingest_seconds, 2), **prepared.ingest_summary},
        "settings": {"retrieval": rs.model_dump(),
                     "chunking": prepared.container.settings.chunking.model_dump(),
                     "embedding": prepared.container.embeddings.name},
        "metrics": metrics,
        "query_ms_p50": query_ms,
        "thresholds": {
            "current": threshold_rates(answerable, data.qrels, unanswerable, kinds,
                                       prepared.chunk_doc, rs),
            "sweep": sweep,
        },
        "queries": per_query,
    }

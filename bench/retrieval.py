"""Fused retrieval latency vs raw Chroma kNN at 10k and 100k chunks.

    .venv/bin/python bench/retrieval.py [--sizes 10000 100000] [--queries 300] [--work-dir DIR]

Target (issue 5): fused p95 ≤ 2× the raw kNN p95. The collection is synthetic but goes through our
own store: random unit vectors added to Chroma (no document text, as the Indexer does), chunk rows
committed to the ChunkStore, the BM25 index built by BM25Index from Zipf-distributed word bags of
~100 words. Both sides get the same precomputed query vector, so the figure is retrieval alone:
ours = HybridRetriever.search (dense + BM25 + fusion + SQLite texts); raw = collection.query with
n_results = candidates (the dense half of our work). Calls alternate ours/raw per query. A final row
adds the real MiniLM query embedding to both sides.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import append, p50, pct, verdict

DIM = 384
VOCAB = 30_000
WORDS_PER_CHUNK = 100


class FixedQueryEmbeddings:
    """Stands in for the embedder: returns the vector set before each call, so both sides match."""

    name = "synthetic"
    dimension = DIM

    def __init__(self) -> None:
        self.vector: list[float] = []

    def embed_query(self, text: str) -> list[float]:
        return self.vector


def words(rng: np.random.Generator, n: int) -> np.ndarray:
    # Zipf ranks over a fixed vocabulary: a few very common terms, a long tail of rare ones.
    return np.minimum(rng.zipf(1.15, n), VOCAB) - 1


def build(c, collection: str, n: int, seed: int = 0) -> float:
    """Fill a collection with n synthetic chunks through our store; returns seconds taken."""
    from core.schemas import Chunk

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i:05d}x" for i in range(VOCAB)])
    c.store.ensure_collection(collection, "synthetic", DIM)
    coll = c.vectors.client.get_or_create_collection(collection, metadata={"hnsw:space": "cosine"},
                                             embedding_function=None)
    per_file = 1000
    for start in range(0, n, per_file):
        m = min(per_file, n - start)
        path = f"/synthetic/file{start // per_file:05d}.txt"
        digest = hashlib.sha256(path.encode()).hexdigest()
        vecs = rng.standard_normal((m, DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        texts = [" ".join(vocab[words(rng, WORDS_PER_CHUNK)]) for _ in range(m)]
        chunks = [Chunk(id=f"{start + i:08d}", text=t, source=path, file_hash=digest, position=i)
                  for i, t in enumerate(texts)]
        c.store.mark_pending(collection, path, digest, "synthetic")
        coll.add(ids=[ch.id for ch in chunks], embeddings=vecs,
                 metadatas=[{"source": path, "position": ch.position} for ch in chunks])
        c.store.commit_file(collection, path, digest, "synthetic", chunks)
    c.indexer.refresh_bm25(collection)
    return time.perf_counter() - t0


def measure(c, collection: str, n_queries: int, real_embedder) -> dict:
    from assistant.retriever import HybridRetriever

    rs = c.settings.retrieval
    fake = FixedQueryEmbeddings()
    parts = {"embeddings": fake, "vectors": c.vectors, "store": c.store, "bm25": c.bm25,
             "collection": collection, "settings": rs}
    ours = HybridRetriever(**parts)
    coll = c.vectors.client.get_collection(collection, embedding_function=None)
    rng = np.random.default_rng(1)
    vocab = [f"w{i:05d}x" for i in range(VOCAB)]
    queries = []
    for _ in range(n_queries + 20):
        v = rng.standard_normal(DIM).astype(np.float32)
        queries.append((" ".join(vocab[i] for i in words(rng, 6)), (v / np.linalg.norm(v)).tolist()))
    n = max(rs.candidates, rs.k)
    t_ours, t_raw, t_dense, t_bm25 = [], [], [], []
    for i, (text, vec) in enumerate(queries):
        fake.vector = vec
        pair = []
        for side in ((0, 1) if i % 2 else (1, 0)):
            t0 = time.perf_counter()
            if side == 0:
                ours.search(text)
            else:
                coll.query(query_embeddings=[vec], n_results=n, include=["distances"])
            pair.append((side, time.perf_counter() - t0))
        t0 = time.perf_counter()
        ours.dense(text, n)
        t1 = time.perf_counter()
        c.bm25.search(collection, text, n)
        t2 = time.perf_counter()
        if i >= 20:  # warm-up: first loads of the BM25 index and HNSW segments
            for side, dt in pair:
                (t_ours, t_raw)[side].append(dt * 1000)
            t_dense.append((t1 - t0) * 1000)
            t_bm25.append((t2 - t1) * 1000)
    out = {"ours": t_ours, "raw": t_raw, "dense": t_dense, "bm25": t_bm25}
    if real_embedder is not None:
        real = HybridRetriever(embeddings=real_embedder, vectors=c.vectors, store=c.store,
                               bm25=c.bm25, collection=collection, settings=rs)
        t_real, t_real_raw = [], []
        for i, (text, _) in enumerate(queries[: min(100, n_queries) + 5]):
            t0 = time.perf_counter()
            real.search(text)
            t1 = time.perf_counter()
            coll.query(query_embeddings=[real_embedder.embed_query(text)], n_results=n,
                       include=["distances"])
            t2 = time.perf_counter()
            if i >= 5:
                t_real.append((t1 - t0) * 1000)
                t_real_raw.append((t2 - t1) * 1000)
        out.update({"ours+embed": t_real, "raw+embed": t_real_raw})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--work-dir", type=Path, help="keep the built collections here for re-runs")
    ap.add_argument("--no-embed", action="store_true", help="skip the rows with real MiniLM")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from core.settings import Settings
    from localcat.container import Container

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="localcat-bench-retrieval-"))
    c = Container(Settings().model_copy(update={"data_dir": work}))
    real = None
    if not args.no_embed:
        real = c.embeddings
        real.embed_query("warm-up")
    rows, notes = [], []
    for size in args.sizes:
        name = f"synthetic-{size}"
        if c.store.has_collection(name) and len(c.store.chunk_ids(name)) == size:
            built = "reused"
        else:
            if c.store.has_collection(name):
                c.indexer.drop_collection(name)
            built = f"built in {build(c, name, size):.0f} s"
        t = measure(c, name, args.queries, real)
        r50, r95 = p50(t["ours"]) / p50(t["raw"]), pct(t["ours"], 95) / pct(t["raw"], 95)
        rows.append(f"| {size:,} | fused search | {p50(t['ours']):.1f} / {pct(t['ours'], 95):.1f} | "
                    f"{p50(t['raw']):.1f} / {pct(t['raw'], 95):.1f} | {r50:.2f}× / {r95:.2f}× | "
                    f"{verdict(r95, 2.0, higher_is_better=False)} |")
        if "ours+embed" in t:
            e50 = p50(t["ours+embed"]) / p50(t["raw+embed"])
            e95 = pct(t["ours+embed"], 95) / pct(t["raw+embed"], 95)
            rows.append(f"| {size:,} | same, with MiniLM query embedding | {p50(t['ours+embed']):.1f} / "
                        f"{pct(t['ours+embed'], 95):.1f} | {p50(t['raw+embed']):.1f} / "
                        f"{pct(t['raw+embed'], 95):.1f} | {e50:.2f}× / {e95:.2f}× | |")
        notes.append(f"- {size:,} chunks ({built}): parts of ours, p50 / p95 ms: "
                     f"`dense()` {p50(t['dense']):.1f} / {pct(t['dense'], 95):.1f} (Chroma "
                     f"get_collection + query), BM25 {p50(t['bm25']):.1f} / "
                     f"{pct(t['bm25'], 95):.1f}")
    rs = c.settings.retrieval
    body = "\n".join([
        f"{args.queries} queries per size after 20 warm-up; candidates {rs.candidates} per side, "
        f"k {rs.k}; raw = `collection.query(n_results={max(rs.candidates, rs.k)})`, same vector.",
        "",
        "| chunks | measure | ours p50 / p95 ms | raw kNN p50 / p95 ms | ratio p50 / p95 | target p95 ≤ 2× |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        *notes,
    ])
    append("Retrieval latency (bench/retrieval.py)", body, write=not args.no_write)
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

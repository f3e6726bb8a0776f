"""Ingest throughput vs the raw sentence-transformers encode of the same chunks; re-ingest vs first.

    .venv/bin/python bench/ingest.py [--corpus DIR_OR_BEIR] [--docs 120] [--no-cli] [--profile]

Targets (issue 5): ours ≥ 0.9× the raw encode's chunks/s; re-ingesting an unchanged corpus ≥ 20×
faster than the first ingest. Ours runs the real Indexer (load, chunk, embed, Chroma, SQLite,
BM25) on a fresh data dir; raw encodes the very chunk texts ours produced, with the same loaded
model, batch size and torch threads. The rounds alternate (ours, raw, raw, ours) to share the
machine's noise. `--cli` (default on) also times `localcat ingest` twice in fresh processes, which is
what a user waits for (model load and imports included).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, append, materialise, verdict


def main() -> None:
    default = Path.home() / ".local/share/localcat/eval/python-faq"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=default if default.is_dir() else REPO / "samples")
    ap.add_argument("--docs", type=int, default=120, help="documents taken from a BEIR corpus")
    ap.add_argument("--no-cli", action="store_true", help="skip the fresh-process CLI timing")
    ap.add_argument("--profile", action="store_true", help="cProfile one extra ingest")
    ap.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    args = ap.parse_args()

    from core.settings import Settings
    from localcat.container import Container

    tmp = Path(tempfile.mkdtemp(prefix="localcat-bench-ingest-"))
    docs = materialise(args.corpus, tmp / "docs", args.docs)
    base = Settings()
    bs = base.embedding.batch_size

    def ours(tag: str):
        c = Container(base.model_copy(update={"data_dir": tmp / tag}))
        c.embeddings.encode(["warm-up"])  # the model is loaded once per process and shared
        t0 = time.perf_counter()
        first = c.indexer.ingest([docs], "bench")
        t1 = time.perf_counter()
        again = c.indexer.ingest([docs], "bench")
        t2 = time.perf_counter()
        assert again.chunks_written == 0, again.summary()
        texts = [t for _, t in c.store.all_chunks("bench")]
        return c, texts, t1 - t0, t2 - t1, first.chunks_written

    def raw(c, texts):
        model = c.embeddings.model
        t0 = time.perf_counter()
        model.encode(texts, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True,
                     show_progress_bar=False)
        return time.perf_counter() - t0

    rows = []
    c, texts, first_s, again_s, chunks = ours("r1")
    raw_s = [raw(c, texts), raw(c, texts)]
    c, _, first2, again2, _ = ours("r2")
    ours_s = [first_s, first2]
    reingest_s = [again_s, again2]
    ours_rate = 2 * chunks / sum(ours_s)
    raw_rate = 2 * len(texts) / sum(raw_s)
    ratio = ours_rate / raw_rate
    speedup = sum(ours_s) / sum(reingest_s)
    import torch

    rows.append(f"| ingest throughput | {ours_rate:.2f} chunks/s | {raw_rate:.2f} chunks/s (raw "
                f"`SentenceTransformer.encode`, batch {bs}) | {ratio:.2f}× | ≥ 0.9× | "
                f"{verdict(ratio, 0.9, higher_is_better=True)} |")
    rows.append(f"| re-ingest unchanged, in process | {sum(reingest_s) / 2 * 1000:.0f} ms | first "
                f"ingest {sum(ours_s) / 2:.1f} s | {speedup:.0f}× faster | ≥ 20× | "
                f"{verdict(speedup, 20, higher_is_better=True)} |")

    if not args.no_cli:
        env = {**os.environ, "LOCALCAT_DATA_DIR": str(tmp / "cli")}
        cmd = [sys.executable, "-m", "localcat", "ingest", str(docs), "-q", "--json"]
        walls = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
            walls.append(time.perf_counter() - t0)
            if out.returncode:
                sys.exit(out.stderr)
        cli_speedup = walls[0] / min(walls[1:])
        rows.append(f"| re-ingest unchanged, `localcat ingest` fresh process | "
                    f"{min(walls[1:]):.2f} s | first run {walls[0]:.1f} s | {cli_speedup:.0f}× "
                    f"faster | ≥ 20× | {verdict(cli_speedup, 20, higher_is_better=True)} |")

    prof = ""
    if args.profile:
        c = Container(base.model_copy(update={"data_dir": tmp / "prof"}))
        profiler = cProfile.Profile()
        profiler.enable()
        c.indexer.ingest([docs], "bench")
        profiler.disable()
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(12)
        prof = buf.getvalue()
        print(prof)

    n_files = sum(1 for p in docs.rglob("*") if p.is_file())
    body = "\n".join([
        f"{n_files} documents from `{args.corpus}` → {chunks} chunks (chunk_size "
        f"{base.chunking.chunk_size}), MiniLM-L6-v2, torch threads {torch.get_num_threads()}; "
        "rounds alternated ours, raw, raw, ours.",
        "",
        "| measure | ours | raw / baseline | ratio | target | |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    append("Ingest throughput and re-ingest (bench/ingest.py)", body, write=not args.no_write)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

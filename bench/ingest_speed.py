"""Ingest speed before/after the parse workers and all-core encoding, the int8 backend, and
fresh-process re-ingest, all on one corpus in one run.

    .venv/bin/python bench/ingest_speed.py [--corpus BEIR_OR_DIR] [--docs 1000] [--before REV]

Each ingest is a real `localcat ingest` in a fresh process on a fresh data dir: what a user waits
for. "before" runs the code of REV (default: the last commit before this work) from a git
worktree with the same virtualenv. "raw" encodes the very chunk texts the ingest produced with
the same backend, batch size and threads, handed over in the indexer's slices (each backend
batches within a call: by length, for both), in a process that has already loaded the model, so
ingest/raw is the share of the machine's encode speed that the pipeline keeps. samples/ (6
files) is ingested before and after too: its first ingest is mostly start-up, so its re-ingest
speed-up is the one the command's own start-up bounds. A re-ingest of unchanged files answers from
the first run's stamp; it is also timed with the stamp removed, when every file's hash is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, append, materialise

BEFORE = "0b35e1f"  # main before the parse workers (issue 11)


def run_cli(code_dir: Path, module: str, docs: Path, data: Path, env_extra: dict) -> tuple[float, dict]:
    """Wall time and JSON report of one `ingest` in a fresh process running code_dir's code."""
    env = {**os.environ, "LOCALCAT_DATA_DIR": str(data), **env_extra}
    boot = (f"import sys; sys.path.insert(0, {str(code_dir)!r}); sys.argv[0] = 'localcat'; "
            f"from {module} import main; main()")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", boot, "ingest", str(docs), "-q", "--json"],
                         capture_output=True, text=True, env=env, cwd=code_dir)
    wall = time.perf_counter() - t0
    if out.returncode not in (0, 1):
        sys.exit(f"ingest failed ({out.returncode}): {out.stderr[-2000:]}")
    return wall, json.loads(out.stdout)


def full_check(code_dir: Path, module: str, docs: Path, data: Path, env_extra: dict) -> float | None:
    """A re-ingest that has to check every file's hash: the stamp of the last run removed (None
    for code without stamps)."""
    stamps = data / "cache" / "ingest-stamps"
    if not stamps.is_dir():
        return None
    shutil.rmtree(stamps)
    return run_cli(code_dir, module, docs, data, env_extra)[0]


def _full(first: float, full: float | None) -> str:
    return "— | —" if full is None else f"{full:.2f} s | {first / full:.0f}×"


def raw_rate(texts: list[str], backend: str, threads: int) -> float:
    """Chunks/s of the bare encoder (model loaded and warmed up first), called as the indexer
    calls it."""
    from core.settings import Settings
    from ingest.index import _EMBED_BATCH
    from localcat.container import Container

    settings = Settings(data_dir=Path(tempfile.mkdtemp()), embedding={"backend": backend,
                                                                       "ingest_threads": threads})
    emb = Container(settings).embeddings
    emb.encode(texts[:64])
    t0 = time.perf_counter()
    for i in range(0, len(texts), _EMBED_BATCH):
        emb.encode(texts[i : i + _EMBED_BATCH])
    return len(texts) / (time.perf_counter() - t0)


def chunk_texts(data: Path) -> list[str]:
    import sqlite3

    db = sqlite3.connect(data / "index.sqlite")
    return [r[0] for r in db.execute("SELECT text FROM chunks ORDER BY path, position")]


def main() -> None:
    default = Path.home() / ".local/share/localcat/eval/python-faq"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=default if default.is_dir() else REPO / "samples")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--before", default=BEFORE, help="git revision of the 'before' code")
    ap.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="localcat-bench-speed-"))
    docs = materialise(args.corpus, tmp / "docs", args.docs)
    old = tmp / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(old), args.before], cwd=REPO,
                   check=True, capture_output=True)
    threads = len(os.sched_getaffinity(0))
    rows, rates = [], {}
    try:
        for i, (tag, code, module, env) in enumerate([
            ("before (1 torch thread, parse then encode)", old, "assistant.cli", {}),
            ("after, fp32", REPO, "localcat.cli",
             {"LOCALCAT_EMBEDDING__BACKEND": "sentence-transformers"}),
            ("after, int8", REPO, "localcat.cli", {"LOCALCAT_EMBEDDING__BACKEND": "onnx-int8"}),
        ]):
            data = tmp / f"data{i}"
            if "int8" in tag:  # the one-time export is set-up, not ingest
                subprocess.run([sys.executable, "-c", (
                    "from core.settings import Settings; from localcat.container import Container;"
                    f"Container(Settings(data_dir={str(data)!r}, embedding={{'backend': "
                    "'onnx-int8'})).embeddings.prepare()")], cwd=REPO, check=True)
            wall, report = run_cli(code, module, docs, data, env)
            chunks = sum(f["chunks"] for f in report["files"] if f["status"] in ("added", "updated"))
            again, _ = run_cli(code, module, docs, data, env)
            rates[tag] = chunks / wall
            rows.append((tag, chunks, wall, again, full_check(code, module, docs, data, env), data))
        texts = chunk_texts(rows[1][5])
        raw_fp32 = raw_rate(texts, "sentence-transformers", threads)
        raw_int8 = raw_rate(texts, "onnx-int8", threads)
        small = []
        for i, (tag, code, module) in enumerate([("before", old, "assistant.cli"),
                                                 ("after, default (int8)", REPO, "localcat.cli")]):
            first6, _ = run_cli(code, module, REPO / "samples", tmp / f"samples{i}", {})
            again6, _ = run_cli(code, module, REPO / "samples", tmp / f"samples{i}", {})
            full6 = full_check(code, module, REPO / "samples", tmp / f"samples{i}", {})
            small.append((tag, first6, again6, full6))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO,
                       capture_output=True)

    before = rates[rows[0][0]]
    table = ["| run | chunks | first ingest | chunks/s | vs before | raw encoder, same backend "
             "and threads | ingest / raw | re-ingest unchanged | speed-up | re-ingest without "
             "the stamp (hash check) | speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for tag, chunks, wall, again, full, _ in rows:
        raw = {"after, fp32": raw_fp32, "after, int8": raw_int8}.get(tag)
        table.append(
            f"| {tag} | {chunks} | {wall:.1f} s | {chunks / wall:.1f} | "
            f"{chunks / wall / before:.2f}× | {f'{raw:.1f}/s' if raw else '—'} | "
            f"{f'{chunks / wall / raw:.2f}' if raw else '—'} | {again:.2f} s | {wall / again:.0f}× | "
            f"{_full(wall, full)} |")
    for tag, first6, again6, full6 in small:
        table.append(f"| samples/ (6 files), {tag} | — | {first6:.1f} s | — | — | — | — | "
                     f"{again6:.2f} s | {first6 / again6:.0f}× | {_full(first6, full6)} |")
    body = "\n".join([
        f"{len(list(docs.iterdir()))} documents of `{args.corpus.name}`; every run a fresh "
        f"`localcat ingest` process on a fresh data dir, then the same again (re-ingest); "
        f"{threads} cores; before = `{args.before}`.",
        "",
        *table,
    ])
    print(body)
    append("Ingest speed: parse workers, all-core encode, int8 (bench/ingest_speed.py)", body,
           write=not args.no_write)


if __name__ == "__main__":
    main()

"""Sweep chunking, fusion and the relevance bar on a BEIR folder; print a Markdown summary.

    .venv/bin/python bench/tune_retrieval.py ~/.local/share/localcat/eval/python-faq \
        --work-dir /tmp/faq-eval --chunking 1000:150 500:75 1500:200 --json-out tune.json

Each chunking config is ingested once by the real Indexer (cached in --work-dir, one collection
per config); every query then takes its dense and BM25 candidates once (depth 50) and all fusion
settings are ranked from them with ``localcat.evaluation.rank``, which orders and filters exactly
as ``HybridRetriever.search`` does. The fusion grid weighs BM25 alike for every question; the
prose sweep then varies only prose_bm25_weight (questions naming no exact term), reported per
split of the FAQ answer set (answers.jsonl: chosen on dev, held-out only reported).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.settings import ChunkingSettings, Settings  # noqa: E402
from localcat.evaluation import (  # noqa: E402
    COVERAGE_GRID,
    SIM_GRID,
    collect,
    doc_ranking,
    load_answers,
    load_beir,
    prepare,
    rank,
    score_run,
    threshold_rates,
    unfiltered,
)

RRF_K = (1, 5, 10, 20, 30, 60, 100)
WEIGHTS = ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.75), (1.0, 0.5), (1.0, 0.35), (1.0, 0.25),
           (1.0, 0.1))
CANDIDATES = (10, 20, 40)
PROSE_WEIGHTS = (0.0, 0.1, 0.25, 0.35, 0.5, 0.75, 1.0)
DEPTH = 50


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--chunking", nargs="+", default=["1000:150"], help="SIZE:OVERLAP ...")
    ap.add_argument("--splits", nargs="+", default=["test", "identifiers"],
                    help="qrels splits; the first one also drives the relevance-bar sweep")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    splits = {name: load_beir(args.folder, name) for name in args.splits}
    data = splits[args.splits[0]]
    base = Settings()
    kinds = {q: kind for q, (_, kind) in data.unanswerable.items()}
    results = []
    for spec in args.chunking:
        size, overlap = (int(x) for x in spec.split(":"))
        settings = base.model_copy(update={"chunking": ChunkingSettings(chunk_size=size,
                                                                        chunk_overlap=overlap)})
        t0 = time.perf_counter()
        prepared = prepare(data, args.work_dir, settings)
        ingest_s = time.perf_counter() - t0
        answerable, _ = collect(prepared, data.queries, DEPTH, quiet=True)
        unanswerable, _ = collect(prepared, {q: t for q, (t, _) in data.unanswerable.items()},
                                  DEPTH, quiet=True)
        per_split = {args.splits[0]: answerable}
        for name in args.splits[1:]:
            per_split[name], _ = collect(prepared, splits[name].queries, DEPTH, quiet=True)
        fusion = []
        for rrf_k, (dw, bw), cand in itertools.product(RRF_K, WEIGHTS, CANDIDATES):
            rs = base.retrieval.model_copy(update={"rrf_k": rrf_k, "dense_weight": dw,
                                                   "bm25_weight": bw, "prose_bm25_weight": bw,
                                                   "candidates": cand})
            row = {"rrf_k": rrf_k, "dense_weight": dw, "bm25_weight": bw, "candidates": cand}
            for name, cands in per_split.items():
                run = {q: doc_ranking(rank(c, unfiltered(rs)), prepared.chunk_doc)
                       for q, c in cands.items()}
                scores = score_run(run, splits[name].qrels)
                row.update(scores if name == args.splits[0]
                           else {f"{name}:{k}": v for k, v in scores.items()})
            fusion.append(row)
        # The relevance bar under the default fusion and under the best one found above.
        best = max(fusion, key=lambda f: (f["ndcg@10"], f["hit@3"]))
        bars: dict[str, list] = {}
        for name, fuse in (("default", {}), ("best", {k: best[k] for k in
                                                      ("rrf_k", "dense_weight", "bm25_weight", "candidates")})):
            bars[name] = []
            for sim, cov in itertools.product(SIM_GRID, COVERAGE_GRID):
                rs = base.retrieval.model_copy(update={**fuse, "min_similarity": sim, "min_coverage": cov})
                bars[name].append({"min_similarity": sim, "min_coverage": cov,
                                   **threshold_rates(answerable, data.qrels, unanswerable, kinds,
                                                     prepared.chunk_doc, rs)})
        prose = prose_sweep(args.folder, per_split, splits, prepared.chunk_doc, base)
        sims = {q: c.top_similarity for q, c in {**answerable, **unanswerable}.items()}
        results.append({"chunk_size": size, "chunk_overlap": overlap, "chunks": prepared.chunks,
                        "ingest_seconds": round(ingest_s, 1), "fusion": fusion, "prose": prose,
                        "thresholds": bars, "top_similarity": sims})
        print(summary(results[-1], base), flush=True)
        print(prose_summary(prose), flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))


def prose_sweep(folder: Path, per_split: dict, splits: dict, chunk_doc: dict,
                base: Settings) -> list[dict]:
    """nDCG@10 and hit@k per prose_bm25_weight, the first split cut by the answer set's splits."""
    first = next(iter(per_split))
    groups: dict[str, tuple[dict, dict]] = {}
    answers = folder / "answers.jsonl"
    split_of = {a.id: a.split for a in load_answers(answers)} if answers.is_file() else {}
    for part in sorted({s for s in split_of.values() if s}):
        ids = [q for q in per_split[first] if split_of.get(q) == part]
        groups[f"{first} {part}"] = ({q: per_split[first][q] for q in ids},
                                     {q: splits[first].qrels[q] for q in ids})
    for name, cands in per_split.items():
        if name != first or not groups:
            groups[name] = (cands, splits[name].qrels)
    rows = []
    for w in PROSE_WEIGHTS:
        rs = unfiltered(base.retrieval.model_copy(update={"prose_bm25_weight": w}))
        row: dict = {"prose_bm25_weight": w}
        for name, (cands, qrels) in groups.items():
            run = {q: doc_ranking(rank(c, rs), chunk_doc) for q, c in cands.items()}
            row[name] = score_run(run, qrels) | {"questions": len(cands)}
        rows.append(row)
    return rows


def prose_summary(rows: list[dict]) -> str:
    names = [k for k in rows[0] if k != "prose_bm25_weight"]
    out = ["\n### prose_bm25_weight (bm25_weight 1.0 for questions naming an exact term)\n",
           "| prose_bm25_weight | " + " | ".join(
               f"{n} ({rows[0][n]['questions']}) nDCG@10 / hit@1 / hit@3" for n in names) + " |",
           "|---|" + "---|" * len(names)]
    for row in rows:
        out.append(f"| {row['prose_bm25_weight']} | " + " | ".join(
            f"{row[n]['ndcg@10']:.3f} / {row[n]['hit@1']:.3f} / {row[n]['hit@3']:.3f}"
            for n in names) + " |")
    return "\n".join(out)


def summary(res: dict, base: Settings) -> str:
    r = base.retrieval

    def pick(**kw):
        return next(f for f in res["fusion"] if all(f[k] == v for k, v in kw.items()))

    rows = [("default fused", pick(rrf_k=r.rrf_k, dense_weight=1.0, bm25_weight=1.0,
                                   candidates=r.candidates)),
            ("dense only", pick(rrf_k=r.rrf_k, dense_weight=1.0, bm25_weight=0.0,
                                candidates=r.candidates)),
            ("bm25 only", pick(rrf_k=r.rrf_k, dense_weight=0.0, bm25_weight=1.0,
                               candidates=r.candidates))]
    best = sorted(res["fusion"], key=lambda f: (-f["ndcg@10"], -f["hit@3"]))[:5]
    rows += [(f"best #{i}", f) for i, f in enumerate(best, 1)]
    out = [f"\n## chunk_size {res['chunk_size']}, overlap {res['chunk_overlap']}: "
           f"{res['chunks']} chunks, ingest {res['ingest_seconds']} s\n",
           "| config | rrf_k | w dense | w bm25 | cand | nDCG@10 | R@10 | MRR@10 | hit@1 | hit@3 | hit@10 "
           "| ident nDCG@10 | ident hit@3 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, f in rows:
        ident = [v for k, v in f.items() if k.endswith(":ndcg@10")] + [
            v for k, v in f.items() if k.endswith(":hit@3")]
        extra = " | ".join(f"{v:.3f}" for v in ident) or " | "
        out.append(f"| {name} | {f['rrf_k']} | {f['dense_weight']} | {f['bm25_weight']} | "
                   f"{f['candidates']} | {f['ndcg@10']:.3f} | {f['recall@10']:.3f} | "
                   f"{f['mrr@10']:.3f} | {f['hit@1']:.3f} | {f['hit@3']:.3f} | {f['hit@10']:.3f} "
                   f"| {extra} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()

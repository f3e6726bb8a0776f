"""Retrieval quality on a BEIR-format folder (`localcat eval`): dense, BM25 and fused, side by side.

The corpus is ingested by the real ``Indexer`` into a scratch data dir (each corpus document becomes
one file, so a chunk maps back to its document through its source path); each query then takes its
dense and BM25 candidates from the real ``HybridRetriever`` parts once, and the three rankings are
made from them exactly as ``HybridRetriever.search`` makes its own (``rank``). Chunk rankings become
document rankings by each document's best chunk. Metrics follow BEIR/pytrec_eval: nDCG@10 with
linear gains, recall@10, MRR@10 and hit@k, averaged over the queries that have a relevant document.
Each side gives max(candidates, k) chunks as in production (20 by default), so a document that only
a chunk beyond that would have found counts as missed.

Questions the corpus does not answer (``unanswerable.jsonl`` in the folder, BEIR query format with
an optional ``metadata.kind``) measure the relevance bar: how often an answerable question gets
"nothing found" and how often an unanswerable one still retrieves something.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from core.errors import ConfigError, MissingDependency

if TYPE_CHECKING:  # settings (pydantic-settings) stay out of `localcat --help`'s imports
    from core.settings import RetrievalSettings, Settings

KS = (1, 3, 5, 10)
MODES = ("dense", "bm25", "fused")
SIM_GRID = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)
COVERAGE_GRID = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.01)


# --- the data set -----------------------------------------------------------------------------


@dataclass
class BeirSet:
    corpus: dict[str, tuple[str, str]]  # doc id → (title, text)
    queries: dict[str, str]  # query id → text, only those with a relevant document
    qrels: dict[str, dict[str, int]]  # query id → {doc id: grade > 0}
    unanswerable: dict[str, tuple[str, str]] = field(default_factory=dict)  # id → (text, kind)


def _jsonl(path: Path) -> Iterable[dict]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{n} is not JSON ({exc.msg})",
                                      "each line must be one JSON object") from exc


def load_beir(folder: Path, split: str = "test") -> BeirSet:
    """Read corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv and the optional unanswerable.jsonl."""
    paths = {"corpus": folder / "corpus.jsonl", "queries": folder / "queries.jsonl",
             "qrels": folder / "qrels" / f"{split}.tsv"}
    for path in paths.values():
        if not path.is_file():
            raise ConfigError(
                f"{folder} is not a BEIR folder: {path.relative_to(folder)} is missing",
                "give a folder with corpus.jsonl, queries.jsonl and qrels/test.tsv, e.g. one "
                "written by scripts/build_eval_set.py",
            )
    corpus = {str(d["_id"]): (d.get("title") or "", d.get("text") or "") for d in _jsonl(paths["corpus"])}
    texts = {str(q["_id"]): q["text"] for q in _jsonl(paths["queries"])}
    qrels: dict[str, dict[str, int]] = {}
    with paths["qrels"].open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts or (n == 1 and not parts[-1].lstrip("-").isdigit()):
                continue  # blank line or the "query-id corpus-id score" header
            if len(parts) == 4:  # TREC style: qid 0 docid grade
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise ConfigError(f"{paths['qrels']}:{n}: expected 'query-id corpus-id score'",
                                  "use tab-separated BEIR qrels")
            qid, doc, grade = parts[0], parts[1], int(parts[2])
            if grade > 0 and qid in texts and doc in corpus:
                qrels.setdefault(qid, {})[doc] = grade
    if not qrels:
        raise ConfigError(f"No query in {paths['qrels']} has a relevant document in the corpus",
                          "check that the qrels ids match queries.jsonl and corpus.jsonl")
    unanswerable = {}
    if (folder / "unanswerable.jsonl").is_file():
        for q in _jsonl(folder / "unanswerable.jsonl"):
            kind = (q.get("metadata") or {}).get("kind", "unanswerable")
            unanswerable[str(q["_id"])] = (q["text"], kind)
    return BeirSet(corpus, {q: texts[q] for q in qrels}, qrels, unanswerable)


# --- metrics ------------------------------------------------------------------------------------


def _dcg(gains: Iterable[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int = 10) -> float:
    ideal = _dcg(sorted(rels.values(), reverse=True)[:k])
    return _dcg(rels.get(d, 0) for d in ranked[:k]) / ideal if ideal else 0.0


def recall_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int = 10) -> float:
    relevant = {d for d, g in rels.items() if g > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int = 10) -> float:
    return next((1.0 / r for r, d in enumerate(ranked[:k], 1) if rels.get(d, 0) > 0), 0.0)


def hit_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    return float(any(rels.get(d, 0) > 0 for d in ranked[:k]))


def score_run(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Mean metrics over the queries in qrels; a query missing from the run scores zero."""
    rows = []
    for qid, rels in qrels.items():
        ranked = run.get(qid, [])
        row = {"ndcg@10": ndcg_at_k(ranked, rels), "recall@10": recall_at_k(ranked, rels),
               "mrr@10": mrr_at_k(ranked, rels)}
        row.update({f"hit@{k}": hit_at_k(ranked, rels, k) for k in KS})
        rows.append(row)
    return {m: sum(r[m] for r in rows) / len(rows) for m in rows[0]} if rows else {}


def doc_ranking(chunk_ids: Iterable[str], chunk_doc: Mapping[str, str]) -> list[str]:
    """Documents in the order of their best chunk."""
    return list(dict.fromkeys(chunk_doc[c] for c in chunk_ids if c in chunk_doc))


# --- ranking, as HybridRetriever.search does it -------------------------------------------------


@dataclass
class Candidates:
    """What one query got from each side: (chunk id, cosine) and (chunk id, BM25 score), best first."""

    dense: list[tuple[str, float]]
    lexical: list[tuple[str, float]]
    coverage: float = 0.0  # BM25Index.coverage of the first COVERAGE_DEPTH BM25 hits

    @property
    def top_similarity(self) -> float | None:
        return self.dense[0][1] if self.dense else None

    @property
    def top_bm25(self) -> float:
        return self.lexical[0][1] if self.lexical else 0.0


def mode_settings(rs: RetrievalSettings, mode: str) -> RetrievalSettings:
    """Retrieval settings for one mode; dense and BM25 alone switch the other side's weight off."""
    return {"dense": rs.model_copy(update={"bm25_weight": 0.0}),
            "bm25": rs.model_copy(update={"dense_weight": 0.0}), "fused": rs}[mode]


def unfiltered(rs: RetrievalSettings) -> RetrievalSettings:
    """The same ranking with no relevance bar (every candidate passes)."""
    return rs.model_copy(update={"min_similarity": -1.0, "min_coverage": 0.0})


def rank(c: Candidates, rs: RetrievalSettings) -> list[str]:
    """Chunk ids as the retriever orders them (before its cut to k), or [] when the relevance bar
    turns the question away: the retriever's own ``fuse`` on the collected candidates."""
    from assistant.retriever import fuse

    return [i for i, _ in fuse(c.dense, c.lexical, lambda: c.coverage, rs)]


# --- running it ---------------------------------------------------------------------------------


@dataclass
class Prepared:
    """A corpus ingested into a scratch collection, ready to query."""

    container: object
    collection: str
    chunk_doc: dict[str, str]
    chunks: int
    ingest_seconds: float
    ingest_summary: dict[str, int]


def _doc_file(doc_id: str) -> str:
    return hashlib.sha1(doc_id.encode()).hexdigest()[:20] + ".txt"


def prepare(data: BeirSet, work_dir: Path, settings: Settings, *, quiet: bool = False) -> Prepared:
    """Write each corpus document as a file and ingest them with the real Indexer.

    The work dir keeps files and index between runs: ingest skips unchanged documents, and each
    chunking configuration gets its own collection, so switching back and forth costs nothing.
    """
    from tqdm import tqdm

    from ingest.index import Progress
    from localcat.container import Container

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
    scratch = settings.model_copy(update={
        "data_dir": work_dir / "data",
        "chroma": settings.chroma.model_copy(update={"url": None}),
    })
    c = Container(scratch)
    collection = f"eval-s{ch.chunk_size}-o{ch.chunk_overlap}"
    bar = tqdm(total=0, unit="doc", file=sys.stderr, disable=quiet, desc=f"ingest → {collection}")
    progress = Progress(on_files=lambda n: setattr(bar, "total", n) or bar.refresh(),
                        on_file_done=lambda r: bar.update())
    started = time.perf_counter()
    try:
        report = c.indexer.ingest([corpus_dir], collection, progress=progress)
    finally:
        bar.close()
    failed = [f for f in report.files if f.status == "failed"]
    if failed:
        raise ConfigError(f"{len(failed)} corpus documents failed to ingest, e.g. "
                          f"{file_doc.get(failed[0].path, failed[0].path)}: {failed[0].reason}",
                          "check the corpus texts (empty documents are refused)")
    chunks = c.store.chunks(collection, c.store.chunk_ids(collection))
    chunk_doc = {cid: file_doc[ch.source] for cid, ch in chunks.items() if ch.source in file_doc}
    return Prepared(c, collection, chunk_doc, len(chunk_doc), time.perf_counter() - started,
                    report.summary())


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
        out[qid] = Candidates(dense, lexical, c.bm25.coverage(prepared.collection, text, top))
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

    per_query = [
        {"id": q, "text": data.queries[q],
         **{f"rank_{m}": first_rank(runs[m][q], data.qrels[q]) for m in MODES},
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


# --- output -------------------------------------------------------------------------------------


def render_table(report: dict) -> str:
    metrics = report["metrics"]
    names = list(next(iter(metrics.values())))
    lines = [f"{'':<7}" + "".join(f"{n:>11}" for n in names)]
    lines += [f"{mode:<7}" + "".join(f"{metrics[mode][n]:>11.3f}" for n in names) for mode in metrics]
    rs, cur = report["settings"]["retrieval"], report["thresholds"]["current"]
    ch = report["settings"]["chunking"]
    d = report["dataset"]
    lines.insert(0, f"{d['queries']} queries, {d['documents']} documents → {report['chunks']} chunks "
                    f"(chunk_size {ch['chunk_size']}, overlap {ch['chunk_overlap']}); "
                    f"rrf_k {rs['rrf_k']}, weights dense {rs['dense_weight']} / bm25 "
                    f"{rs['bm25_weight']}, candidates {rs['candidates']}")
    lines.append("")
    lines.append(f"relevance bar min_similarity {rs['min_similarity']}, min_coverage {rs['min_coverage']}: "
                 f"answerable told 'nothing found' {cur['nothing_found']:.1%}; answer in the top "
                 f"{rs['k']} chunks {cur['answer_in_top_k']:.1%}")
    for key, value in cur.items():
        if key.startswith("retrieved["):
            lines.append(f"  unanswerable {key[10:-1]} questions that still retrieve chunks: {value:.1%}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Metrics per mode (left); the relevance bar's trade-off as min_similarity varies (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = report["metrics"]
    names = list(next(iter(metrics.values())))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(metrics)
    for i, (mode, values) in enumerate(metrics.items()):
        xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(names))]
        left.bar(xs, [values[n] for n in names], width, label=mode)
    left.set_xticks(range(len(names)), names, rotation=20)
    left.set_ylim(0, 1)
    left.set_title(f"{report['dataset']['queries']} queries, {report['chunks']} chunks")
    left.legend()

    rs = report["settings"]["retrieval"]
    sweep = report["thresholds"]["sweep"]
    # The configured min_coverage, or the grid's nearest when it is off the grid.
    nearest = min({r["min_coverage"] for r in sweep}, key=lambda v: abs(v - rs["min_coverage"]))
    rows = [r for r in sweep if r["min_coverage"] == nearest]
    xs = [r["min_similarity"] for r in rows]
    right.plot(xs, [r["nothing_found"] for r in rows], "o-", label="answerable: nothing found")
    right.plot(xs, [r["answer_in_top_k"] for r in rows], "s-", label=f"answer in top {rs['k']}")
    for key in rows[0]:
        if key.startswith("retrieved["):
            right.plot(xs, [r[key] for r in rows], "^--", label=f"{key[10:-1]}: still retrieves")
    right.axvline(rs["min_similarity"], color="grey", lw=0.8)
    right.set_xlabel(f"min_similarity (min_coverage = {nearest})")
    right.set_ylim(-0.02, 1.02)
    right.set_title("relevance bar")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _require_matplotlib() -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise MissingDependency("matplotlib, which draws the eval plot (or pass --no-plot),",
                                "pip install -c constraints.txt -e '.[eval]'")


@click.command("eval")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True, help="qrels/SPLIT.tsv to use.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the scratch index here, so re-runs skip unchanged documents "
                   "(default: a temporary folder, deleted afterwards).")
@click.option("--chunk-size", type=int, default=None, help="Override chunking.chunk_size.")
@click.option("--chunk-overlap", type=int, default=None, help="Override chunking.chunk_overlap.")
@click.option("--rrf-k", type=int, default=None, help="Override retrieval.rrf_k.")
@click.option("--dense-weight", type=float, default=None, help="Override retrieval.dense_weight.")
@click.option("--bm25-weight", type=float, default=None, help="Override retrieval.bm25_weight.")
@click.option("--candidates", type=int, default=None, help="Override retrieval.candidates.")
@click.option("--min-similarity", type=float, default=None, help="Override retrieval.min_similarity.")
@click.option("--min-coverage", type=float, default=None, help="Override retrieval.min_coverage.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the PNG (default: FOLDER/eval.png).")
@click.option("--no-plot", is_flag=True, help="Skip the plot.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def eval_command(folder: Path, split: str, work_dir: Path | None, chunk_size: int | None,
                 chunk_overlap: int | None, rrf_k: int | None, dense_weight: float | None,
                 bm25_weight: float | None, candidates: int | None, min_similarity: float | None,
                 min_coverage: float | None, plot_path: Path | None, no_plot: bool, as_json: bool,
                 quiet: bool) -> None:
    """Measure retrieval on a BEIR folder: nDCG@10, recall@10, MRR@10, hit@k for dense, BM25, fused.

    FOLDER holds corpus.jsonl, queries.jsonl, qrels/test.tsv and optionally unanswerable.jsonl
    (questions the corpus does not answer, to measure the relevance bar). The corpus is ingested
    into a scratch index, never into your collections. Settings overrides apply to this run only.

    Example: localcat eval ~/.local/share/localcat/eval/python-faq --work-dir /tmp/faq-eval
    """
    from core.settings import RetrievalSettings, Settings

    if not no_plot:
        _require_matplotlib()
    settings = Settings()
    chunking = {k: v for k, v in (("chunk_size", chunk_size), ("chunk_overlap", chunk_overlap))
                if v is not None}
    retrieval = {k: v for k, v in (("rrf_k", rrf_k), ("dense_weight", dense_weight),
                                   ("bm25_weight", bm25_weight), ("candidates", candidates),
                                   ("min_similarity", min_similarity), ("min_coverage", min_coverage))
                 if v is not None}
    # Validated copies: a bad override fails here with pydantic's message, not deep in a run.
    try:
        settings = settings.model_copy(update={
            "chunking": type(settings.chunking).model_validate({**settings.chunking.model_dump(), **chunking}),
            "retrieval": RetrievalSettings.model_validate({**settings.retrieval.model_dump(), **retrieval}),
        })
    except ValueError as exc:
        raise ConfigError(f"Bad override: {exc}", "check the option values") from exc

    data = load_beir(folder, split)
    scratch = work_dir or Path(tempfile.mkdtemp(prefix="localcat-eval-"))
    try:
        prepared = prepare(data, scratch, settings, quiet=quiet)
        report = evaluate(data, prepared, settings.retrieval, quiet=quiet)
    finally:
        if work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    report["dataset"]["folder"] = str(folder)
    if not no_plot:
        target = plot_path or folder / "eval.png"
        plot(report, target)
        report["plot"] = str(target)
        click.echo(f"plot: {target}", err=True)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render_table(report))

"""`localcat eval --suite`: retrieval on every domain of a multi-domain suite (written by
scripts/build_eval_suite.py), each domain's figures beside the mean and the worst domain, and
paired intervals against an earlier run's report (``--baseline``).

One domain's tuning says little about another's documents, so settings are judged on the mean
*and* the worst domain: a change is kept when it raises the mean and lowers no domain beyond
noise. Settings are chosen on the dev splits; the test splits are reported once.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.settings import Settings

# The per-domain figures the suite reports (fused ranking unless named), in table order.
FIGURES = ("ndcg@10", "hit@1", "hit@3", "shown", "dense ndcg@10", "bm25 ndcg@10", "nothing_found")
# The per-query scores a baseline is compared on.
PAIRED = ("ndcg@10", "shown")


def load_suite(folder: Path) -> list[dict]:
    """The domains listed in FOLDER/suite.json, each with its folder."""
    index = folder / "suite.json"
    if not index.is_file():
        raise ConfigError(f"{folder} is not an eval suite: suite.json is missing",
                          "build one with `python scripts/build_eval_suite.py FOLDER`")
    domains = json.loads(index.read_text(encoding="utf-8"))["domains"]
    for d in domains:
        d["folder"] = str(folder / d["name"])
    return domains


def run_suite(folder: Path, split: str, work_dir: Path | None, settings: Settings, *,
              domains: list[str] | None = None, quiet: bool = False) -> dict:
    """Retrieval per domain on ``split``; the scratch indexes live in ``work_dir/<domain>``."""
    from localcat.evaluation.datasets import load_beir
    from localcat.evaluation.runner import evaluate, prepare

    listed = load_suite(folder)
    if domains:
        unknown = set(domains) - {d["name"] for d in listed}
        if unknown:
            raise ConfigError(f"No domain {', '.join(sorted(unknown))} in {folder}/suite.json",
                              "name one of: " + ", ".join(d["name"] for d in listed))
        listed = [d for d in listed if d["name"] in domains]
    scratch = work_dir or Path(tempfile.mkdtemp(prefix="localcat-suite-"))
    rows = []
    try:
        for d in listed:
            data = load_beir(Path(d["folder"]), split)
            report = evaluate(data, prepare(data, scratch / d["name"], settings, quiet=quiet),
                              settings.retrieval, quiet=quiet)
            rows.append(domain_row(d, report))
    finally:
        if work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return {"suite": str(folder), "split": split, "settings": _settings(settings),
            "domains": rows, **summarise(rows)}


def domain_row(domain: dict, report: dict) -> dict:
    """One domain's figures and its per-query scores (for paired comparisons)."""
    m = report["metrics"]
    answered = [q for q in report["queries"] if "kind" not in q]
    return {
        "name": domain["name"], "kind": domain.get("kind", ""),
        "queries": report["dataset"]["queries"], "documents": report["dataset"]["documents"],
        "chunks": report["chunks"],
        "ndcg@10": m["fused"]["ndcg@10"], "hit@1": m["fused"]["hit@1"],
        "hit@3": m["fused"]["hit@3"], "shown": report["thresholds"]["current"]["answer_in_top_k"],
        "dense ndcg@10": m["dense"]["ndcg@10"], "bm25 ndcg@10": m["bm25"]["ndcg@10"],
        "nothing_found": report["thresholds"]["current"]["nothing_found"],
        "query_ms_p50": report["query_ms_p50"], "ingest_s": report["ingest"]["seconds"],
        "per_query": {q["id"]: {"ndcg@10": q["ndcg_fused"], "shown": float(q["shown"])}
                      for q in answered},
    }


def summarise(rows: list[dict]) -> dict:
    """The mean over domains (each domain weighs the same) and the worst domain per figure."""
    if not rows:
        return {"mean": {}, "worst": {}}
    mean = {f: sum(r[f] for r in rows) / len(rows) for f in FIGURES}
    # For "nothing found" lower is better, so its worst domain is the highest.
    worst = {f: (max if f == "nothing_found" else min)(rows, key=lambda r, f=f: r[f])
             for f in FIGURES}
    return {"mean": mean, "worst": {f: {"value": r[f], "domain": r["name"]}
                                    for f, r in worst.items()}}


def compare(report: dict, baseline: dict) -> dict:
    """Paired bootstrap intervals of (this run − baseline) per domain and for the mean over
    domains, on the queries both runs scored."""
    from core.stats import paired_bootstrap

    old = {r["name"]: r for r in baseline["domains"]}
    out: dict = {"baseline_settings": baseline.get("settings"), "domains": {}, "mean": {}}
    pairs: dict[str, list[tuple[list[float], list[float]]]] = {f: [] for f in PAIRED}
    for row in report["domains"]:
        if row["name"] not in old:
            continue
        before = old[row["name"]]["per_query"]
        shared = sorted(set(row["per_query"]) & set(before))
        if not shared:
            continue
        out["domains"][row["name"]] = {}
        for f in PAIRED:
            new = [row["per_query"][q][f] for q in shared]
            was = [before[q][f] for q in shared]
            pairs[f].append((new, was))
            iv = paired_bootstrap(new, was)
            out["domains"][row["name"]][f] = _interval(iv)
    for f in PAIRED:
        if pairs[f]:
            out["mean"][f] = _interval(_mean_of_domains(pairs[f]))
    return out


def _mean_of_domains(pairs: list[tuple[list[float], list[float]]], resamples: int = 2000,
                     seed: int = 0):
    """The interval of the mean over domains of each domain's mean difference, resampling the
    queries within each domain (a stratified paired bootstrap)."""
    import numpy as np

    from core.stats import CONFIDENCE, Interval

    rng = np.random.default_rng(seed)
    diffs = [np.asarray(new, float) - np.asarray(old, float) for new, old in pairs]
    draws = np.mean([d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
                     for d in diffs], axis=0)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Interval(float(np.mean([d.mean() for d in diffs])), float(low), float(high),
                    sum(len(d) for d in diffs), CONFIDENCE, resamples)


def _interval(iv) -> dict:
    return {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n}


def _settings(settings: Settings) -> dict:
    return {"embedding": settings.embedding.backend,
            "chunking": settings.chunking.model_dump(),
            "retrieval": settings.retrieval.model_dump()}


def render_suite(report: dict) -> str:
    """Each domain's figures, then the mean and the worst domain; then any comparison."""
    head = f"{'domain':<22}{'kind':<8}{'queries':>8}" + "".join(f"{f:>15}" for f in FIGURES)
    lines = [f"suite {report['suite']} · split {report['split']} · embedder "
             f"{report['settings']['embedding']}", head]
    for r in report["domains"]:
        lines.append(f"{r['name']:<22}{r['kind']:<8}{r['queries']:>8}"
                     + "".join(f"{r[f]:>15.3f}" for f in FIGURES))
    if report["mean"]:
        n = sum(r["queries"] for r in report["domains"])
        lines.append(f"{'mean':<22}{'':<8}{n:>8}"
                     + "".join(f"{report['mean'][f]:>15.3f}" for f in FIGURES))
        lines.append(f"{'worst':<22}{'':<8}{'':>8}" + "".join(
            f"{report['worst'][f]['value']:>8.3f} {report['worst'][f]['domain'][:6]:<6}"
            for f in FIGURES))
    cmp = report.get("compare")
    if cmp:
        lines += ["", "vs baseline (paired, 95 % interval):"]
        for name, figs in [*cmp["domains"].items(), ("mean of domains", cmp["mean"])]:
            lines.append(f"  {name:<20}" + "  ".join(
                f"{f} {v['mean']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]" for f, v in figs.items()))
    return "\n".join(lines)


def plot_suite(report: dict, path: Path) -> None:
    """Bars per domain for nDCG@10 and answer shown, with the mean as a line."""
    from localcat.evaluation.report import _pyplot

    plt = _pyplot()
    names = [r["name"] for r in report["domains"]]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(names) + 4), 4), sharey=True)
    for ax, f in zip(axes, ("ndcg@10", "shown"), strict=True):
        ax.bar(names, [r[f] for r in report["domains"]])
        if report["mean"]:
            ax.axhline(report["mean"][f], linestyle="--", color="black", label="mean")
            ax.legend()
        ax.set_title(f"{f} ({report['split']})")
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_ylim(0, 1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)

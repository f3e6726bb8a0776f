"""The eval reports as text tables and PNG plots."""

from __future__ import annotations

from pathlib import Path

from core.errors import MissingDependency


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
                    f"{rs['bm25_weight']} (prose {rs['prose_bm25_weight']}), "
                    f"candidates {rs['candidates']}")
    lines.append("")
    lines.append(f"relevance bar min_similarity {rs['min_similarity']}, min_coverage {rs['min_coverage']}: "
                 f"answerable told 'nothing found' {cur['nothing_found']:.1%}; answer in the top "
                 f"{rs['k']} chunks {cur['answer_in_top_k']:.1%}")
    for key, value in cur.items():
        if key.startswith("retrieved["):
            lines.append(f"  unanswerable {key[10:-1]} questions that still retrieve chunks: {value:.1%}")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(ax, series: dict[str, list[float | None]], names: list[str]) -> None:
    """Grouped bars: one group per name, one bar per series (a missing value draws nothing)."""
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [v if v is not None else 0.0 for v in values], width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.legend(fontsize=8)


def _save(fig, plt, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(report: dict, path: Path) -> None:
    """Metrics per mode (left); the relevance bar's trade-off as min_similarity varies (right)."""
    plt = _pyplot()
    metrics = report["metrics"]
    names = list(next(iter(metrics.values())))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    _bars(left, {mode: [values[n] for n in names] for mode, values in metrics.items()}, names)
    left.set_ylim(0, 1)
    left.set_title(f"{report['dataset']['queries']} queries, {report['chunks']} chunks")

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
    _save(fig, plt, path)


# --- answers --------------------------------------------------------------------------------------

# (key, row label, unit): shares are 0–1, seconds and tokens/s are printed as such.
ANSWER_ROWS = (
    ("source_shown", "reference source among the chunks shown", "share"),
    ("cited", "answers with a [n] citation", "share"),
    ("citation_correct", "citations pointing at the reference source", "share"),
    ("grounded_answers", "grounded: source shown, not 'not found'", "count"),
    ("grounded_citation_correct", "grounded answers citing the source", "share"),
    ("key_fact_recall", "key-fact recall (first 60 content words)", "share"),
    ("token_f1", "token F1 against the reference", "share"),
    ("support", "support: answer words found in cited chunks", "share"),
    ("not_found", "answerable questions told 'not found'", "share"),
    ("refusal", "unanswerable questions refused", "share"),
    ("repetition", "answers that loop (a 4-gram 3 times, more than a source)", "share"),
    ("latency_p50_s", "latency p50", "s"),
    ("latency_p95_s", "latency p95", "s"),
    ("ttft_p50_s", "time to first token p50", "s"),
    ("ttft_p95_s", "time to first token p95", "s"),
    ("tokens_per_s", "tokens/s while writing", "tok/s"),
)


def _cell(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return {"share": f"{value:.3f}", "s": f"{value:.2f} s", "tok/s": f"{value:.1f}",
            "count": f"{value}"}[unit]


def render_answer_table(report: dict) -> str:
    """One row a measure, one column a model."""
    models = report["models"]
    width = max(12, *(len(m) + 2 for m in models))
    d, ch = report["dataset"], report["settings"]["chunking"]
    lines = [
        f"{d['questions']} questions ({d['answerable']} answerable, {d['unanswerable']} not) over "
        f"{report['chunks']} chunks (chunk_size {ch['chunk_size']}, k "
        f"{report['settings']['retrieval']['k']})",
        f"{'':<46}" + "".join(f"{m:>{width}}" for m in models),
    ]
    for key, label, unit in ANSWER_ROWS:
        lines.append(f"{label:<46}" + "".join(
            f"{_cell(m['metrics'][key], unit):>{width}}" for m in models.values()))
    lines.append("")
    lines += [f"{name}: {m['tag']}" for name, m in models.items()]
    return "\n".join(lines)


def plot_answers(report: dict, path: Path) -> None:
    """Answer quality per model (left); latency and time to first token per model (right)."""
    plt = _pyplot()
    models = report["models"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 1]})
    shares = [(k, k.replace("_", " ")) for k, _, unit in ANSWER_ROWS if unit == "share"]
    _bars(left, {name: [m["metrics"][k] for k, _ in shares] for name, m in models.items()},
          [label for _, label in shares])
    left.set_ylim(0, 1)
    left.set_title(f"{report['dataset']['questions']} questions: answer quality")
    times = ["latency_p50_s", "latency_p95_s", "ttft_p50_s"]
    _bars(right, {name: [m["metrics"][k] for k in times] for name, m in models.items()},
          ["latency p50", "latency p95", "first token p50"])
    right.set_ylabel("seconds")
    right.set_title("speed")
    _save(fig, plt, path)


def require_matplotlib() -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise MissingDependency("matplotlib, which draws the eval plot (or pass --no-plot),",
                                "pip install -c constraints.txt -e '.[eval]'")

"""`localcat eval`: retrieval on a BEIR folder, or answers to a set of questions with references."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import click

from core.errors import ConfigError
from localcat.evaluation.report import require_matplotlib


@click.command("eval")
@click.argument("folder", required=False,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--answers", "answers_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Measure answers: a JSONL of {question, answer, source?} "
                                 '("answer": null for questions the documents do not answer).')
@click.option("--docs", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="With --answers: the files or folders the questions are about (repeatable); "
                   "instead of FOLDER's BEIR corpus.")
@click.option("--model", "models", multiple=True,
              help="With --answers: a model to answer with, repeatable for a side-by-side run: "
                   "'default' (what `localcat serve` serves), a GGUF file, or ollama:NAME. "
                   "[default: default]")
@click.option("--records", "records_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None,
              help="With --answers: write one JSON line per question and model (the chunks shown, "
                   "the model's text, the marked-up text, each sentence's sources), to study or "
                   "re-score citations offline.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="With --answers: only the first N questions.")
@click.option("--split", default=None,
              help="qrels/SPLIT.tsv to use [default: test]; with --answers, only the questions "
                   "whose \"split\" is SPLIT (e.g. heldout).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the scratch index here, so re-runs skip unchanged documents "
                   "(default: a temporary folder, deleted afterwards).")
@click.option("--chunk-size", type=int, default=None, help="Override chunking.chunk_size.")
@click.option("--chunk-overlap", type=int, default=None, help="Override chunking.chunk_overlap.")
@click.option("--rrf-k", type=int, default=None, help="Override retrieval.rrf_k.")
@click.option("--dense-weight", type=float, default=None, help="Override retrieval.dense_weight.")
@click.option("--bm25-weight", type=float, default=None, help="Override retrieval.bm25_weight.")
@click.option("--prose-bm25-weight", type=float, default=None,
              help="Override retrieval.prose_bm25_weight.")
@click.option("--candidates", type=int, default=None, help="Override retrieval.candidates.")
@click.option("--min-similarity", type=float, default=None, help="Override retrieval.min_similarity.")
@click.option("--min-coverage", type=float, default=None, help="Override retrieval.min_coverage.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the PNG (default: FOLDER/eval.png; with --answers, "
                   "FOLDER/ANSWERS.png or $data_dir/eval/ANSWERS.png).")
@click.option("--no-plot", is_flag=True, help="Skip the plot.")
@click.option("--suite", "suite", is_flag=True,
              help="FOLDER is a multi-domain suite (scripts/build_eval_suite.py): retrieval per "
                   "domain, the mean and the worst domain [split default: dev].")
@click.option("--domain", "domains", multiple=True, help="With --suite: only this domain "
              "(repeatable).")
@click.option("--baseline", "baseline_path", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), default=None,
              help="With --suite: an earlier run's --json report; adds paired 95 % intervals of "
                   "the difference per domain and for the mean.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def eval_command(folder: Path | None, answers_path: Path | None, docs: tuple[Path, ...],
                 models: tuple[str, ...], records_path: Path | None, limit: int | None,
                 split: str | None,
                 work_dir: Path | None, chunk_size: int | None, chunk_overlap: int | None,
                 rrf_k: int | None, dense_weight: float | None, bm25_weight: float | None,
                 prose_bm25_weight: float | None, candidates: int | None, min_similarity: float | None, min_coverage: float | None,
                 plot_path: Path | None, no_plot: bool, suite: bool, domains: tuple[str, ...],
                 baseline_path: Path | None, as_json: bool, quiet: bool) -> None:
    """Measure retrieval on a BEIR folder (nDCG@10, recall@10, MRR@10, hit@k for dense, BM25,
    fused), or, with --answers, the answers of one or more models.

    FOLDER holds corpus.jsonl, queries.jsonl, qrels/test.tsv and optionally unanswerable.jsonl
    (questions the corpus does not answer, to measure the relevance bar). With --answers, each
    question goes through the real pipeline and the report gives, per model: reference source
    among the chunks shown, citation correctness, key-fact recall, token F1, support, "not
    found" and refusal rates, looping answers, latency, time to first token and tokens/s. The
    documents are ingested into a scratch index, never into your collections. Settings overrides
    apply to this run only.

    Examples:

        localcat eval ~/.local/share/localcat/eval/python-faq --work-dir /tmp/faq-eval

        localcat eval --answers bench/answers-samples.jsonl --docs samples/ --model default

        localcat eval --suite ~/.local/share/localcat/eval/suite --json > dev.json
    """
    from core.settings import RetrievalSettings, Settings

    if answers_path is None and (docs or models or limit or records_path):
        raise click.UsageError("--docs, --model, --limit and --records go with --answers")
    if suite and (answers_path is not None or folder is None):
        raise click.UsageError("--suite takes the suite's FOLDER, without --answers")
    if (domains or baseline_path) and not suite:
        raise click.UsageError("--domain and --baseline go with --suite")
    if answers_path is None and folder is None:
        raise click.UsageError("give a BEIR FOLDER, or --answers ANSWERS.jsonl with --docs")
    if answers_path is not None and (folder is None) == (not docs):
        raise click.UsageError("with --answers, give the documents: --docs PATH or a BEIR FOLDER "
                               "(one of them)")
    if not no_plot:
        require_matplotlib()
    settings = Settings()
    chunking = {k: v for k, v in (("chunk_size", chunk_size), ("chunk_overlap", chunk_overlap))
                if v is not None}
    retrieval = {k: v for k, v in (("rrf_k", rrf_k), ("dense_weight", dense_weight),
                                   ("bm25_weight", bm25_weight),
                                   ("prose_bm25_weight", prose_bm25_weight), ("candidates", candidates),
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

    if suite:
        return _suite(folder, split or "dev", list(domains), baseline_path, work_dir, settings,
                      None if no_plot else plot_path or folder / f"suite-{split or 'dev'}.png",
                      as_json, quiet)
    if answers_path is not None:
        report, default_plot = _answers(answers_path, folder, list(docs), list(models) or ["default"],
                                        split, limit, work_dir, settings, quiet, records_path)
    else:
        report, default_plot = _retrieval(folder, split or "test", work_dir, settings, quiet)
    if not no_plot:
        from localcat.evaluation.report import plot, plot_answers

        target = plot_path or default_plot
        (plot_answers if answers_path is not None else plot)(report, target)
        report["plot"] = str(target)
        click.echo(f"plot: {target}", err=True)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        from localcat.evaluation.report import render_answer_table, render_table

        click.echo((render_answer_table if answers_path is not None else render_table)(report))


def _scratch(work_dir: Path | None) -> Path:
    return work_dir or Path(tempfile.mkdtemp(prefix="localcat-eval-"))


def _retrieval(folder: Path, split: str, work_dir: Path | None, settings, quiet: bool):
    from localcat.evaluation.datasets import load_beir
    from localcat.evaluation.runner import evaluate, prepare

    data = load_beir(folder, split)
    scratch = _scratch(work_dir)
    try:
        report = evaluate(data, prepare(data, scratch, settings, quiet=quiet), settings.retrieval,
                          quiet=quiet)
    finally:
        if work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    report["dataset"]["folder"] = str(folder)
    return report, folder / "eval.png"


def _answers(answers_path: Path, folder: Path | None, docs: list[Path], models: list[str],
             split: str | None, limit: int | None, work_dir: Path | None, settings, quiet: bool,
             records_path: Path | None = None):
    from localcat.evaluation.answering import evaluate_answers, resolve_model
    from localcat.evaluation.datasets import load_answers, load_beir
    from localcat.evaluation.records import RecordWriter
    from localcat.evaluation.runner import prepare, prepare_files

    items = load_answers(answers_path, split=split, limit=limit)
    for spec in models:  # a bad --model fails before minutes of ingest
        resolve_model(spec, settings)
    scratch = _scratch(work_dir)
    try:
        if folder is not None:
            prepared = prepare(load_beir(folder), scratch, settings, quiet=quiet)
        else:
            prepared = prepare_files(docs, scratch, settings, quiet=quiet)
        records = RecordWriter(records_path) if records_path is not None else None
        report = evaluate_answers(items, prepared, models, settings, quiet=quiet, records=records)
        if records_path is not None:
            report["records"] = str(records_path)
    finally:
        if work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    report["dataset"].update(answers=str(answers_path), split=split,
                             docs=[str(folder)] if folder else [str(d) for d in docs])
    plots = folder if folder is not None else settings.data_dir / "eval"
    return report, plots / f"{answers_path.stem}.png"


def _suite(folder: Path, split: str, domains: list[str], baseline_path: Path | None,
           work_dir: Path | None, settings, plot_path: Path | None, as_json: bool,
           quiet: bool) -> None:
    from localcat.evaluation.suite import compare, plot_suite, render_suite, run_suite

    baseline = None
    if baseline_path is not None:  # read first: a bad file fails before minutes of ingest
        try:
            baseline = json.loads(baseline_path.read_text(encoding="utf-8"))
            baseline["domains"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{baseline_path} is not a suite report ({exc})",
                              "give the --json output of an earlier `localcat eval --suite`") \
                from exc
    report = run_suite(folder, split, work_dir, settings, domains=domains, quiet=quiet)
    if baseline is not None:
        report["compare"] = compare(report, baseline)
        report["compare"]["baseline"] = str(baseline_path)
    if plot_path is not None:
        plot_suite(report, plot_path)
        report["plot"] = str(plot_path)
        click.echo(f"plot: {plot_path}", err=True)
    click.echo(json.dumps(report, indent=2) if as_json else render_suite(report))

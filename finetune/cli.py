"""`localcat finetune …` (feedback → data set → LoRA → eval → export → register) and `localcat models`.

Registered into the ``localcat`` group, which hands every command its parts. Heavy parts (torch, unsloth, llama.cpp)
are imported by the step that needs them, so ``--help`` stays fast. Steps print progress and
chatter on stderr; stdout carries only the result (JSON with ``--json``).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import BaseModel

from core.clikit import ErrorGroup, parts
from core.errors import BadRequest, ConfigError
from finetune.retrieval_cli import retrieval_part

if TYPE_CHECKING:
    from finetune.artifacts import DatasetReport, EvalReport, ExportResult, TrainResult

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Context:
    """The container's settings and parts, with this command's finetune overrides."""

    def __init__(self, overrides: dict[str, Any] | None = None):
        self.parts = parts()
        self.settings = self.parts.settings
        self.ft = self.settings.finetune.model_copy(update={k: v for k, v in (overrides or {}).items() if v is not None})

    @property
    def root(self) -> Path:
        return self.settings.data_dir / "finetune"

    @property
    def cache_dir(self) -> Path:
        return self.root / ".bases"

    def run_dir(self, run: str | None, *, new: bool = False) -> Path:
        from finetune.artifacts import RunLayout
        from finetune.dataset import new_run_name

        if run is None and new:
            run = new_run_name()
        if run is None:
            runs = [RunLayout(p) for p in self.root.iterdir() if not p.name.startswith(".")
                    and RunLayout(p).dataset_json.is_file()] if self.root.is_dir() else []
            if not runs:
                raise ConfigError("There is no fine-tune run yet",
                                  "start one with `localcat finetune dataset` or `finetune run`")
            return max(runs, key=lambda r: r.dataset_json.stat().st_mtime).root
        if not _RUN_NAME.match(run):
            raise BadRequest(f"Invalid run name {run!r}",
                             "use letters, digits, '.', '_' or '-' (at most 64)")
        path = self.root / run
        if not new and not RunLayout(path).dataset_json.is_file():
            raise ConfigError(f"No fine-tune run {run!r} in {self.root}",
                              "see the folder's runs, or start one with `localcat finetune dataset`")
        return path

    def base(self, spec: str | None = None):
        from finetune.base import resolve_base

        return resolve_base(spec or self.ft.base, self.settings.llm)

    def registry(self):
        return self.parts.registry


@contextlib.contextmanager
def _chatter_to_stderr() -> Iterator[None]:
    """unsloth, transformers and llama.cpp's converters print to stdout; keep it for results."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return str(value)


def _emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=_jsonable))
    else:
        click.echo(text(data))


def _run_option(f):
    return click.option("--run", "run", default=None,
                        help="Run name (default: the latest run; a new one for `dataset`/`run`).")(f)


def _base_option(f):
    return click.option("--base", default=None,
                        help="Base model: GGUF file, HF folder or ollama:NAME (default: settings' "
                             "finetune.base, else the served model).")(f)


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(f)


def _quiet_option(f):
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(f)


def _train_options(f):
    options = [
        click.option("--trainer", type=click.Choice(["unsloth", "peft"]), default=None,
                     help="unsloth (default) or the plain PEFT fallback."),
        click.option("--objective", type=click.Choice(["auto", "sft", "kto"]), default=None,
                     help="Learn from corrections (sft), from thumbs up/down (kto, TRL's "
                          "KTOTrainer), or auto: KTO when corrections are too few (default)."),
        click.option("--steps", "max_steps", type=int, default=None,
                     help="Train this many steps (default: epochs decide)."),
        click.option("--epochs", type=float, default=None, help="Passes over the training split."),
        click.option("--lr", "learning_rate", type=float, default=None, help="Learning rate."),
        click.option("--restart", is_flag=True, help="Ignore checkpoints; train from the start."),
        click.option("--threads", type=int, default=None, help="torch threads (default: all)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


# --- steps (shared by the subcommands and `run`) ---------------------------------------------------


def step_dataset(ctx: Context, run_dir: Path) -> DatasetReport:
    from finetune.artifacts import RunLayout
    from finetune.dataset import build_dataset

    s = ctx.settings
    # Nothing ingested yet (no index file, no shared database): contexts from the snapshots.
    store = ctx.parts.store if s.database.url or s.index_db.is_file() else None
    return build_dataset(ctx.parts.feedback, store, RunLayout(run_dir), ctx.ft,
                         history_turns=s.pipeline.history_turns,
                         prompt_version=s.pipeline.prompt_version)


def step_train(ctx: Context, run_dir: Path, base_spec: str | None, restart: bool,
               quiet: bool) -> TrainResult:
    from finetune.train import train

    with _chatter_to_stderr():
        if ctx.ft.trainer == "peft":
            click.secho("Training with the plain PEFT fallback (--trainer peft), not unsloth.",
                        fg="yellow", err=True)
        return train(run_dir, ctx.base(base_spec), ctx.ft, cache_dir=ctx.cache_dir,
                     resume=not restart, progress=not quiet)


def step_eval(ctx: Context, run_dir: Path, base_spec: str | None, quiet: bool) -> EvalReport:
    from finetune.evaluate import evaluate

    with _chatter_to_stderr():
        return evaluate(run_dir, ctx.base(base_spec), ctx.ft, cache_dir=ctx.cache_dir,
                        progress=not quiet)


def step_export(ctx: Context, run_dir: Path, base_spec: str | None) -> ExportResult:
    from finetune.export import export

    with _chatter_to_stderr():
        return export(run_dir, ctx.base(base_spec), ctx.ft, cache_dir=ctx.cache_dir)


def step_register(ctx: Context, run_dir: Path, base_spec: str | None, ollama: bool | None,
                  activate: bool, force: bool) -> dict[str, Any]:
    from finetune.registry import register_run

    with _chatter_to_stderr():
        return register_run(
            run_dir, ctx.base(base_spec), ctx.registry(),
            ollama_host=ctx.settings.llm.ollama_urls, ollama_prefix=ctx.ft.ollama_name,
            ollama=ollama, activate=activate, force=force,
        )


def _version_line(v: dict[str, Any]) -> str:
    m = v.get("metrics") or {}
    a, b = m.get("adapter", {}), m.get("base", {})
    score = (f"loss {b.get('loss', float('nan')):.3f}→{a.get('loss', float('nan')):.3f}, "
             f"F1 {b.get('answer_f1', float('nan')):.2f}→{a.get('answer_f1', float('nan')):.2f}"
             if m else "not evaluated")
    mark = "*" if v["active"] else " "
    ollama = f"  ollama {v['ollama_name']}" if v.get("ollama_name") else ""
    return (f"{mark} {v['name']:<5} {v['run']:<22} {v['base_name']}  {v['trainer']}  {v['status']}"
            f"  {score}  train {v['dataset']['sft']['train']}{ollama}")


# --- commands ----------------------------------------------------------------------------------------


@click.group(cls=ErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
def finetune() -> None:
    """Turn feedback into a better model: data set → LoRA → eval → export → register.

    \b
      localcat finetune run                 # all steps on the served model
      localcat finetune dataset --json      # just build the data set, print its counts
      localcat finetune train --trainer peft --steps 100
      localcat models list                  # registered versions; `models use` / `models rollback`

    Each step works on a run folder under <data_dir>/finetune/<run>; steps after the first use the
    latest run unless --run names one.
    """


@finetune.command()
@_run_option
@click.option("--min-examples", type=int, default=None, help="Fewest training examples accepted.")
@_json_option
def dataset(run: str | None, min_examples: int | None, as_json: bool) -> None:
    """Build SFT and KTO data sets from the feedback store, split train/val/test.

    Example: localcat finetune dataset --run support-v2 --json
    """
    ctx = Context({"min_examples": min_examples})
    run_dir = ctx.run_dir(run, new=True)
    report = step_dataset(ctx, run_dir)
    _emit(report, as_json, lambda r: f"{run_dir.name}: {r.summary()}")


@finetune.command(name="train")
@_run_option
@_base_option
@_train_options
@_json_option
@_quiet_option
def train_cmd(run, base, trainer, objective, max_steps, epochs, learning_rate, restart, threads,
              as_json, quiet) -> None:
    """Train a LoRA on the run's training split (resumes from its last checkpoint).

    Example: localcat finetune train --steps 60
    """
    ctx = Context({"trainer": trainer, "objective": objective, "max_steps": max_steps,
                   "epochs": epochs, "learning_rate": learning_rate, "threads": threads})
    result = step_train(ctx, ctx.run_dir(run), base, restart, quiet)
    _emit(result, as_json, lambda r: r.summary())


@finetune.command(name="eval")
@_run_option
@_base_option
@_json_option
@_quiet_option
def eval_cmd(run, base, as_json, quiet) -> None:
    """Compare base and adapter on the test split; decide whether the adapter is promoted.

    Both answer every test question; the answers are scored against the references (key-fact
    recall, F1, citations, looping) and the adapter is promoted only when its gain is beyond
    noise: enough questions and a paired bootstrap interval above zero.

    Example: localcat finetune eval --json
    """
    ctx = Context()
    report = step_eval(ctx, ctx.run_dir(run), base, quiet)
    _emit(report, as_json, lambda r: r.summary())


@finetune.command(name="export")
@_run_option
@_base_option
@_json_option
def export_cmd(run, base, as_json) -> None:
    """Write the adapter as safetensors and GGUF, and an Ollama Modelfile.

    Example: localcat finetune export && ollama create my-model -f <run>/export/Modelfile
    """
    ctx = Context()
    result = step_export(ctx, ctx.run_dir(run), base)
    _emit(result, as_json, lambda r: r.summary())


def _register_options(f):
    options = [
        click.option("--ollama/--no-ollama", default=None,
                     help="Also create the model in Ollama (default: when an Ollama answers)."),
        click.option("--activate/--no-activate", default=True, show_default=True,
                     help="Serve the new version (running servers follow within models.poll_s)."),
        click.option("--force", is_flag=True, help="Register even if it did not beat the base."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@finetune.command()
@_run_option
@_base_option
@_register_options
@_json_option
def register(run, base, ollama, activate, force, as_json) -> None:
    """Register the exported adapter as a new model version (and in Ollama when one runs).

    Example: localcat finetune register --no-ollama
    """
    ctx = Context()
    version = step_register(ctx, ctx.run_dir(run), base, ollama, activate, force)
    _emit(version, as_json, _version_line)


@finetune.command(name="run")
@_run_option
@_base_option
@click.option("--min-examples", type=int, default=None, help="Fewest training examples accepted.")
@_train_options
@_register_options
@_json_option
@_quiet_option
@retrieval_part  # --only, --collection: retrieval learning first (finetune/retrieval_cli.py)
def run_cmd(run, base, min_examples, trainer, objective, max_steps, epochs, learning_rate,
            restart, threads, ollama, activate, force, as_json, quiet) -> None:
    """All steps: data set, train, eval, export and, when the adapter beats the base beyond
    noise, register (--force registers it anyway).

    Example: localcat finetune run --steps 200 --no-ollama
    """
    ctx = Context({"min_examples": min_examples, "trainer": trainer, "objective": objective,
                   "max_steps": max_steps, "epochs": epochs, "learning_rate": learning_rate,
                   "threads": threads})
    run_dir = ctx.run_dir(run, new=True)
    dataset = step_dataset(ctx, run_dir)
    click.echo(f"data set: {dataset.summary()}", err=True)
    trained = step_train(ctx, run_dir, base, restart, quiet)
    click.echo(f"train: {trained.summary()}", err=True)
    evaluated = step_eval(ctx, run_dir, base, quiet)
    click.echo(f"eval: {evaluated.summary()}", err=True)
    exported = step_export(ctx, run_dir, base)
    version = (step_register(ctx, run_dir, base, ollama, activate, force)
               if evaluated.promoted or force else None)
    out = {"run": run_dir.name, "dataset": dataset, "train": trained, "eval": evaluated,
           "export": exported, "version": version}
    _emit(out, as_json, lambda o: (_version_line(version) if version else
          f"{run_dir.name}: not registered — the adapter {evaluated.reason}")
          + ("" if evaluated.promoted or not version else " (registered with --force)"))


# --- models --------------------------------------------------------------------------------------------


@click.group(cls=ErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
def models() -> None:
    """Fine-tuned model versions: list them, choose the one served, roll back.

    \b
      localcat models list
      localcat models use v3      # or `base` for the model without an adapter
      localcat models rollback    # back to what was served before
    """


@models.command(name="list")
@click.option("--available", is_flag=True,
              help="Show the catalog of embedded models instead (installed or not).")
@_json_option
def models_list(available: bool, as_json: bool) -> None:
    """List registered versions (* marks the one served); --available: the model catalog."""
    if available:
        from core.catalog import available as catalog_rows
        from core.catalog import format_available

        _emit(catalog_rows(parts().settings.llm), as_json, format_available)
        return
    versions = [v.as_dict() for v in Context().registry().versions()]
    if as_json:
        click.echo(json.dumps(versions, indent=2, default=str))
    elif not versions:
        click.echo("No fine-tuned versions yet: `localcat finetune run` makes one.")
    else:
        for v in versions:
            click.echo(_version_line(v))
        if not any(v["active"] for v in versions):
            click.echo("  (serving the base model)")


@models.command(name="use")
@click.argument("name")
def models_use(name: str) -> None:
    """Serve version NAME (e.g. v3, or `base`); running servers follow within models.poll_s."""
    version = Context().registry().use(name)
    click.echo(f"Serving {version.name if version else 'the base model'}; running servers switch "
               "within models.poll_s.")


@models.command(name="rollback")
def models_rollback() -> None:
    """Serve again what was served before the last `models use` / registration."""
    version = Context().registry().rollback()
    click.echo(f"Rolled back: serving {version.name if version else 'the base model'}; running "
               "servers switch within models.poll_s.")

"""`localcat finetune retrieval` (feedback → a learned embedder, gated) and `localcat retrieval`
(its versions: list, use, rollback, drop). Registered by the ``localcat`` group like the others."""

from __future__ import annotations

import functools
import inspect
import io
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from typing import Any

import click

from core.clikit import ErrorGroup, parts


def _collection(name: str | None) -> str:
    return name or parts().settings.chroma.collection


@contextmanager
def _bars(quiet: bool) -> Iterator[Any]:
    """A progress callback drawing one tqdm bar per step on stderr."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}
    labels = {"embed": "re-embed chunks", "score": "held-out questions"}

    def progress(step: str, done: int, total: int) -> None:
        bar = bars.get(step)
        if bar is None or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            bar = bars[step] = tqdm(total=total, desc=labels.get(step, step), unit="",
                                    file=sys.stderr, disable=quiet, leave=False)
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        for bar in bars.values():
            bar.close()


def learn_step(collection: str | None, force: bool, quiet: bool, *,
               required: bool = True) -> dict[str, Any]:
    """The retrieval part of a run, as JSON-ready data. With ``required`` off (`finetune run`
    doing both parts) a part that cannot run is reported, not raised, and generation goes on."""
    from core.errors import CollectionNotFound, ConfigError
    from finetune.dataset import NotEnoughData
    from finetune.retrieval import learn

    name = _collection(collection)
    try:
        with _bars(quiet) as progress:
            report = learn(parts(), name, force=force, progress=progress, quiet=quiet)
    except (NotEnoughData, CollectionNotFound, ConfigError) as exc:
        if required:
            raise
        return {"collection": name, "status": "skipped", "reason": str(exc)}
    return report.model_dump(mode="json") | {"summary": report.summary()}


def describe(result: dict[str, Any]) -> str:
    return result.get("summary") or f"retrieval ({result['collection']}) skipped: {result['reason']}"


def retrieval_part(command: Callable[..., None]) -> Callable[..., None]:
    """Add `--only retrieval|generation` and `--collection` to `finetune run`: the retrieval part
    runs first, then the wrapped command (generation) unless --only retrieval. With --json the
    two results are printed as one object (the generation one with a "retrieval" key)."""

    @click.option("--collection", "-c", default=None, help="Collection whose retrieval learns "
                  "(default: settings' chroma.collection).")
    @click.option("--only", type=click.Choice(["retrieval", "generation"]), default=None,
                  help="Run one part: retrieval (the embedder) or generation (the LoRA). "
                  "Default: both.")
    @functools.wraps(command)
    def run(*args: Any, only: str | None, collection: str | None, **kwargs: Any) -> None:
        as_json = kwargs.get("as_json", False)
        learned = None if only == "generation" else learn_step(
            collection, kwargs.get("force", False), kwargs.get("quiet", False),
            required=only == "retrieval")
        if learned is not None and (only == "retrieval" or not as_json):
            click.echo(json.dumps(learned, indent=2) if as_json else describe(learned))
        if only == "retrieval":
            return
        if learned is None or not as_json:
            return command(*args, **kwargs)
        out = io.StringIO()
        with redirect_stdout(out):
            command(*args, **kwargs)
        click.echo(json.dumps(json.loads(out.getvalue()) | {"retrieval": learned}, indent=2))

    run.__doc__ = (inspect.cleandoc(command.__doc__ or "") + "\n\nRetrieval learning (`localcat "
                   "finetune retrieval`) runs first; --only runs one part, --force promotes both.")
    return run


_collection_option = click.option(
    "--collection", "-c", default=None, help="Collection (default: settings' chroma.collection).")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


@click.command(name="retrieval")
@_collection_option
@click.option("--force", is_flag=True,
              help="Learn with too few held-out questions, and promote whatever the gate says.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@_json_option
def learn_command(collection: str | None, force: bool, quiet: bool, as_json: bool) -> None:
    """Fine-tune the collection's embedder on feedback; serve it if held-out nDCG@10 improves.

    Thumbs-up and corrections tie questions to chunks, thumbs-down to wrong ones. The new
    version is embedded beside the served one (queries keep working) and switched in only when
    it beats it on questions it never trained on.

    Example: localcat finetune retrieval --collection handbook
    """
    result = learn_step(collection, force, quiet)
    click.echo(json.dumps(result, indent=2) if as_json else describe(result))


@click.group(cls=ErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
def retrieval() -> None:
    """Learned retrieval versions of a collection: list them, choose the one served, roll back.

    \b
      localcat finetune retrieval -c handbook   # learn a new version from feedback
      localcat retrieval list -c handbook
      localcat retrieval use r0 -c handbook     # r0: the embedder the collection was ingested with
      localcat retrieval rollback -c handbook   # back to what was served before
    """


def _line(v: Any) -> str:
    gate = v.metrics.get("gate") or {}
    score = (f"  nDCG@10 {gate['ndcg_served']:.3f}→{gate['ndcg_candidate']:.3f} on "
             f"{gate['test_questions']} held-out" if gate.get("ndcg_candidate") is not None else "")
    return (f"{'*' if v.active else ' '} {v.name:<4} {v.status:<9} {v.created_at:<19}  "
            f"{v.embedder}{score}")


@retrieval.command(name="list")
@_collection_option
@_json_option
def list_command(collection: str | None, as_json: bool) -> None:
    """List the collection's retrieval versions (* marks the one served)."""
    from dataclasses import asdict

    versions = parts().store.retrieval_versions(_collection(collection))
    if as_json:
        click.echo(json.dumps([asdict(v) | {"name": v.name} for v in versions], indent=2))
    else:
        click.echo("\n".join(_line(v) for v in versions))


@retrieval.command(name="use")
@click.argument("version")
@_collection_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def use_command(version: str, collection: str | None, quiet: bool) -> None:
    """Serve VERSION (e.g. r2, or r0 for the ingest embedder); takes effect at the next query.

    Chunks ingested since that version was last served are embedded first.
    """
    from core.chunkstore import parse_version
    from finetune.retrieval import use_version

    with _bars(quiet) as progress:
        v = use_version(parts(), _collection(collection), parse_version(version), progress)
    click.echo(f"Serving {v.name} on {v.collection!r}.")


@retrieval.command(name="rollback")
@_collection_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def rollback_command(collection: str | None, quiet: bool) -> None:
    """Serve again the version served before the last switch."""
    from finetune.retrieval import rollback

    with _bars(quiet) as progress:
        v = rollback(parts(), _collection(collection), progress)
    click.echo(f"Rolled back: serving {v.name} on {v.collection!r}.")


@retrieval.command(name="drop")
@click.argument("version")
@_collection_option
def drop_command(version: str, collection: str | None) -> None:
    """Delete a version that is not served: its vectors and its model (the record stays)."""
    from core.chunkstore import parse_version
    from finetune.retrieval import drop_version

    v = drop_version(parts(), _collection(collection), parse_version(version))
    click.echo(f"Dropped {v.name} of {v.collection!r}.")

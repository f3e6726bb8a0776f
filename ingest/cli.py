"""`localcat ingest`, `localcat remove` and `localcat collections`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from core.clikit import parts
from core.schemas import IngestReport

_STATUS_COLOUR = {"added": "green", "updated": "cyan", "removed": "yellow", "failed": "red"}


def _print_report(report: IngestReport, as_json: bool, verbose: bool) -> None:
    if as_json:
        out = report.model_dump(mode="json")
        out["summary"] = report.summary()
        click.echo(json.dumps(out, indent=2))
        return
    for f in report.files:
        if f.status == "failed":
            click.secho(f"failed   {f.path}: {f.reason}", fg="red", err=True)
        elif verbose or f.status != "skipped":
            click.secho(
                f"{f.status:<8} {f.path} ({f.chunks} chunks)",
                fg=_STATUS_COLOUR.get(f.status),
                err=True,
            )
    s = report.summary()
    click.echo(
        f"{report.collection}: {s['added']} added, {s['updated']} updated, {s['skipped']} skipped, "
        f"{s['removed']} removed, {s['failed']} failed; {report.chunks_written} chunks written "
        f"in {report.seconds:.1f}s"
    )


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--collection", "-c", default=None, help="Collection to write to.")
@click.option(
    "--prune/--no-prune",
    default=True,
    show_default=True,
    help="Remove files that are gone from an ingested folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--verbose", "-v", is_flag=True, help="List skipped files too.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def ingest(
    paths: tuple[Path, ...],
    collection: str | None,
    prune: bool,
    as_json: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Index files and folders (PDF, DOCX, HTML, Markdown, text, CSV) into a collection.

    Re-running is cheap: unchanged files are skipped by content hash, changed files replace their
    old chunks, and files deleted from a folder are removed (unless --no-prune). Bad files are
    reported and the rest goes on. Exit code 1 when any file failed.

    Example: localcat ingest ~/handbook docs/faq.md --collection handbook
    """
    from tqdm import tqdm

    from ingest.index import Progress

    c = parts()
    name = collection or c.settings.chroma.collection
    bar = tqdm(total=0, unit="file", file=sys.stderr, disable=quiet, desc=f"ingest → {name}")

    def on_files(total: int) -> None:
        bar.total = total
        bar.refresh()

    def on_done(result) -> None:
        bar.set_postfix_str(Path(result.path).name[-30:], refresh=False)
        bar.update()

    try:
        report = c.indexer.ingest(
            paths, name, prune=prune, progress=Progress(on_files=on_files, on_file_done=on_done)
        )
    finally:
        bar.close()
    _print_report(report, as_json, verbose)
    if report.count("failed"):
        sys.exit(1)


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--collection", "-c", default=None, help="Collection to remove from.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def remove(paths: tuple[str, ...], collection: str | None, as_json: bool) -> None:
    """Remove files from a collection (by the path they were ingested from)."""
    c = parts()
    report = c.indexer.remove(paths, collection or c.settings.chroma.collection)
    _print_report(report, as_json, verbose=True)


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def collections(ctx: click.Context, as_json: bool) -> None:
    """List collections with their file and chunk counts."""
    if ctx.invoked_subcommand:
        return
    rows = parts().store.collections()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No collections yet: run `localcat ingest PATH`.")
    for r in rows:
        click.echo(
            f"{r['name']:<24} {r['files']:>6} files {r['chunks']:>8} chunks  ({r['embedder']})"
        )


@collections.command("delete")
@click.argument("name")
@click.confirmation_option(prompt="Delete this collection and its index?")
def delete_collection(name: str) -> None:
    """Delete collection NAME (vectors, chunk texts, BM25 index). Source files are untouched."""
    parts().indexer.drop_collection(name)
    click.echo(f"Deleted collection {name!r}.")

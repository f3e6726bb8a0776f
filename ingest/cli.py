"""`localcat ingest`, `localcat remove` and `localcat collections`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from core.clikit import parts

if TYPE_CHECKING:  # pydantic's import is a third of a no-change re-ingest
    from core.schemas import IngestReport
    from ingest.stamps import Snapshot

_STATUS_COLOUR = {"added": "green", "updated": "cyan", "removed": "yellow", "failed": "red"}


def _shown(path: str) -> str:
    """A path on one line, as it could be typed: a newline in a name would split the report and a
    right-to-left override would disguise it, so such characters are shown escaped."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in path)


def _report_data(report: IngestReport) -> dict:
    """The report as `--json` prints it (and as an ingest stamp keeps it)."""
    out = report.model_dump(mode="json")
    out["summary"] = report.summary()
    return out


def _print_report(report: dict, as_json: bool, verbose: bool) -> None:
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for f in report["files"]:
        if f["status"] == "failed":
            click.secho(f"failed   {_shown(f['path'])}: {f['reason']}", fg="red", err=True)
        elif verbose or f["status"] != "skipped":
            click.secho(
                f"{f['status']:<8} {_shown(f['path'])} ({f['chunks']} chunks)",
                fg=_STATUS_COLOUR.get(f["status"]),
                err=True,
            )
    s = report["summary"]
    click.echo(
        f"{report['collection']}: {s['added']} added, {s['updated']} updated, {s['skipped']} "
        f"skipped, {s['removed']} removed, {s['failed']} failed; {report['chunks_written']} "
        f"chunks written in {report['seconds']:.1f}s"
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
    old chunks, and files deleted from a folder are removed (unless --no-prune). When no file,
    folder, setting or the collection changed since the last clean run, the re-run answers from
    that run's stamp without opening the stores. Bad files are reported and the rest goes on.
    Exit code 1 when any file failed.

    Example: localcat ingest ~/handbook docs/faq.md --collection handbook
    """
    from ingest import stamps

    started = time.perf_counter()
    stamp = stamps.key(paths, collection, prune)
    if (stamped := stamps.replay(stamp)) is not None:  # nothing changed: no stores opened
        _print_report({**stamped, "seconds": time.perf_counter() - started}, as_json, verbose)
        return
    stamps.forget(stamp)
    before = _snapshot(paths)

    from tqdm import tqdm

    from ingest.index import Progress

    c = parts()
    name = collection or c.settings.chroma.collection
    bar = tqdm(total=0, unit="file", file=sys.stderr, disable=quiet, desc=f"ingest → {name}")

    def on_files(total: int) -> None:
        bar.total = total
        bar.refresh()

    chunks = 0

    def on_chunks(written: int) -> None:
        nonlocal chunks
        chunks += written

    def on_done(result) -> None:
        rate = chunks / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix_str(f"{chunks} chunks, {rate:.1f}/s, {Path(result.path).name[-30:]}",
                            refresh=False)
        bar.update()

    try:
        report = c.indexer.ingest(paths, name, prune=prune, progress=Progress(
            on_files=on_files, on_file_done=on_done, on_chunks=on_chunks))
    finally:
        bar.close()
    _print_report(_report_data(report), as_json, verbose)
    if report.count("failed"):
        sys.exit(1)
    if before is not None and not c.settings.database.url and (after := _snapshot(paths)):
        # What a re-run finds when nothing changes: every file there, skipped.
        from core.schemas import FileResult, IngestReport

        rerun = IngestReport(collection=name, files=[
            FileResult(path=f.path, status="skipped", chunks=f.chunks)
            for f in report.files if f.status != "removed"])
        stamps.record(stamp, before, after, c.settings.index_db, name, _report_data(rerun))


def _snapshot(paths: tuple[Path, ...]) -> Snapshot | None:
    """The files as an ingest stamp records them; None when a folder vanished mid-walk."""
    from ingest.stamps import Snapshot

    try:
        return Snapshot(paths)
    except OSError:
        return None


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--collection", "-c", default=None, help="Collection to remove from.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def remove(paths: tuple[str, ...], collection: str | None, as_json: bool) -> None:
    """Remove files from a collection (by the path they were ingested from)."""
    c = parts()
    report = c.indexer.remove(paths, collection or c.settings.chroma.collection)
    _print_report(_report_data(report), as_json, verbose=True)


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


@click.command()
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--collection", "-c", default=None, help="Collection to keep in step.")
@click.option("--quiet-s", type=float, default=None,
              help="Seconds a folder must be quiet before its changes are ingested "
                   "(default: settings' ingest.watch_quiet_s).")
@click.option("--rescan-s", type=float, default=None,
              help="Seconds between full rescans, for changes whose events were lost; 0: only at "
                   "start (default: settings' ingest.watch_rescan_s).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per batch on stdout.")
def watch(paths: tuple[Path, ...], collection: str | None, quiet_s: float | None,
          rescan_s: float | None, as_json: bool) -> None:
    """Keep a collection in step with folders: ingest files as they are added, changed, renamed
    or deleted, until Ctrl-C.

    Starts with a full re-ingest of the folders (unchanged files are skipped by content hash), so
    changes made while nothing watched are caught too, and repeats it every few minutes for
    changes whose file events were lost. Bursts of changes are ingested together once the folders
    have been quiet for a moment. One line per batch on stderr.

    Example: localcat watch ~/handbook --collection handbook
    """
    import signal
    import threading
    import time

    from ingest.watch import Watcher

    c = parts()
    name = collection or c.settings.chroma.collection

    def on_batch(report: IngestReport, rescan: bool) -> None:
        changed = [f for f in report.files if f.status != "skipped"]
        if as_json:
            click.echo(json.dumps({
                "event": "rescan" if rescan else "batch", "collection": report.collection,
                "summary": report.summary(), "seconds": round(report.seconds, 3),
                "files": [f.model_dump(mode="json") for f in changed],
            }), nl=True)
            sys.stdout.flush()
        for f in changed:
            if f.status == "failed":
                click.secho(f"failed   {_shown(f.path)}: {f.reason}", fg="red", err=True)
        s = report.summary()
        click.echo(
            f"{time.strftime('%H:%M:%S')} {'rescan' if rescan else 'batch '} → {name}: "
            f"{s['added']} added, {s['updated']} updated, {s['removed']} removed, "
            f"{s['failed']} failed, {s['skipped']} unchanged; {report.chunks_written} chunks "
            f"in {report.seconds:.1f}s", err=True)

    # Ctrl-C and a service manager's stop set a flag rather than raise KeyboardInterrupt: raised
    # inside Thread.join, Python 3.11 can mark the still-running watcher thread as ended, and the
    # exit then races the batch it is writing.
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():  # a second Ctrl-C does not wait for the batch under way
            raise KeyboardInterrupt
        stop.set()

    watcher = Watcher(c.indexer, paths, name, on_batch=on_batch,
                      quiet_s=quiet_s or c.settings.ingest.watch_quiet_s,
                      rescan_s=c.settings.ingest.watch_rescan_s if rescan_s is None else rescan_s)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with watcher:
            click.echo(f"Watching {', '.join(map(str, watcher.folders))} → {name}; "
                       "Ctrl-C stops.", err=True)
            while not stop.is_set() and not watcher.wait(0.5):  # a timeout: signals run here
                pass
            if stop.is_set():
                click.echo("Stopping…", err=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if watcher.error is not None:
        raise watcher.error
    click.echo("Stopped.", err=True)

"""Follow folders: file events → debounced batches → the same incremental ingest.

A Watcher starts with one full ingest of its folders (prune on), so what changed while nothing
was watching is caught, then follows watchdog's events, and repeats the full ingest every
``rescan_s`` for changes whose events were lost: inotify drops events when its queue overflows
(a big copy, ``fs.inotify.max_queued_events``), and network file systems send none for changes
made on other machines. A rescan of unchanged files only hashes them.

Events only name paths; what to do with a path is decided when its batch runs, from the disk: a
path that exists is ingested (the content hash skips what did not change), one that is gone is
removed with every file ingested under it. So any order of create / modify / rename / delete
within a batch ends in the right state, and a burst of writes becomes one ``Indexer.ingest`` call
once the folder has been quiet for a moment.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from core.chunkstore import check_collection_name
from core.errors import BadRequest, Cancelled, ConfigError, LocalCatError, StoreUnavailable
from core.schemas import FileResult, IngestReport
from core.settings import Settings
from ingest.index import Indexer
from ingest.loaders import SUPPORTED_SUFFIXES

log = logging.getLogger("localcat.watch")

QUIET_S = 1.0
"""A batch runs once no event came for this long (editors save in several writes)."""
MAX_DELAY_S = 10.0
"""...or this long after its first event, so a folder that never goes quiet is still ingested."""
RESCAN_S = 300.0
"""A full rescan this often catches changes whose events were lost (ingest.watch_rescan_s)."""
_RETRY_S = (1, 2, 5, 10, 30, 60)  # waits after an unreachable Chroma server, then 60 s each

OnBatch = Callable[[IngestReport, bool], None]
"""Called after each batch with its report and whether it was a rescan (at start, then every
``rescan_s``)."""


class AlreadyWatched(ConfigError):
    """Another watcher (maybe in another process) follows this collection."""


class Watcher:
    """Keeps one collection in step with some folders until ``stop()``; safe to stop from any thread.

    Example::

        with Watcher(container.indexer, [Path("~/handbook")], "handbook") as w:
            w.wait()  # until stopped elsewhere, or an error ends it
    """

    def __init__(self, indexer: Indexer, folders: Iterable[Path], collection: str, *,
                 quiet_s: float = QUIET_S, max_delay_s: float = MAX_DELAY_S,
                 rescan_s: float = RESCAN_S, on_batch: OnBatch | None = None):
        self.indexer = indexer
        self.collection = check_collection_name(collection)
        self.folders = sorted({Path(f).expanduser().resolve() for f in folders})
        if not self.folders:
            raise BadRequest("Nothing to watch", "name at least one folder")
        for f in self.folders:
            if not f.is_dir():
                raise BadRequest(f"Cannot watch {f}: not a folder",
                                 "watch the folder that holds it, or ingest it with `localcat ingest`")
        self.quiet_s = quiet_s
        self.max_delay_s = max(max_delay_s, quiet_s)
        self.rescan_s = rescan_s
        """Seconds from the end of one rescan to the next; 0: only the start-up rescan."""
        self.on_batch = on_batch or (lambda report, rescan: None)
        self.batches = 0
        """Batches run so far, the start-up rescan included."""
        self.error: BaseException | None = None
        """What ended the watcher, when it was not ``stop()``."""
        self.ready = threading.Event()
        """Set once the start-up rescan has run (or the watcher ended before it could)."""

        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._first = self._last = 0.0
        self._rescan = True
        self._next_rescan: float | None = None  # monotonic time of the next periodic rescan
        self._stopping = False
        self._cancel = threading.Event()  # ends a batch under way (ingest/index.py checks it)
        self._observer = None
        self._thread: threading.Thread | None = None
        self._lock_file = None

    # --- life cycle -----------------------------------------------------------------------------

    def start(self) -> Watcher:
        """Start following events, then rescan in the background; returns at once."""
        from watchdog import events as ev
        from watchdog.observers import Observer

        self._lock()
        observer = Observer()
        # Only events that can change a file's content or existence: reading files (our own
        # parse workers do) must not wake the watcher.
        wanted = [ev.FileCreatedEvent, ev.FileModifiedEvent, ev.FileClosedEvent,
                  ev.FileDeletedEvent, ev.FileMovedEvent, ev.DirCreatedEvent, ev.DirDeletedEvent,
                  ev.DirMovedEvent]
        handler = _Handler(self)
        try:
            for folder in self.folders:
                observer.schedule(handler, str(folder), recursive=True, event_filter=wanted)
            # Events start queueing before the rescan, so nothing falls between the two.
            observer.start()
        except OSError as exc:
            self._unlock()
            raise ConfigError(
                f"Cannot watch {', '.join(map(str, self.folders))}: {exc.strerror or exc}",
                "for 'inotify watch limit reached', raise it: "
                "`sudo sysctl fs.inotify.max_user_watches=524288`",
            ) from exc
        self._observer = observer
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"localcat-watch-{self.collection}")
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 60) -> None:
        """Stop watching. A batch under way ends at its next file or embedding slice (what it
        wrote is whole: files are written in groups, each whole or not at all); what it had not
        written yet is caught by the next start's rescan."""
        self.request_stop()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._unlock()

    def request_stop(self) -> None:
        """Ask the watcher to stop without waiting for it (``stop()`` waits)."""
        with self._cond:
            self._stopping = True
            self._cancel.set()
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the watcher to end (stopped, or failed: see ``error``); True when it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _lock(self) -> None:
        """One watcher per collection across processes (e.g. `serve --workers 2`): two would
        write the same files at once."""
        import fcntl

        folder = self.indexer.settings.data_dir / "watch"
        folder.mkdir(parents=True, exist_ok=True)
        f = (folder / f"{self.collection}.lock").open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise AlreadyWatched(
                f"Collection {self.collection!r} is already watched by {holder}",
                "stop that watcher, or watch into another collection with -c",
            ) from None
        f.truncate(0)
        f.write(f"localcat pid {os.getpid()}\n")
        f.flush()
        self._lock_file = f

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    # --- events ---------------------------------------------------------------------------------

    def wants(self, path: str, is_directory: bool) -> bool:
        """Whether an event on ``path`` matters: supported files and folders, none hidden, no
        office lock files (``~$report.docx``); temp files fall out by their suffix."""
        p = Path(path)
        root = next((f for f in self.folders if p.is_relative_to(f)), None)
        if root is None or any(part.startswith(".") for part in p.relative_to(root).parts):
            return False
        return is_directory or (p.suffix.lower() in SUPPORTED_SUFFIXES
                                and not p.name.startswith("~"))

    def touch(self, paths: Iterable[str]) -> None:
        """Note paths whose state may have changed; their batch runs after the quiet period."""
        paths = [p for p in paths if p]
        if not paths:
            return
        with self._cond:
            now = time.monotonic()
            if not self._pending:
                self._first = now
            self._last = now
            self._pending.update(paths)
            self._cond.notify_all()

    # --- the batch thread -----------------------------------------------------------------------

    def _run(self) -> None:
        retry = 0
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._due():
                        self._cond.wait(self._until_due())
                    if self._stopping:
                        return
                    # A periodic rescan that falls due covers the batch of events too.
                    rescan, paths = self._rescan or self._rescan_due(), self._pending
                    self._rescan, self._pending = False, set()
                try:
                    report = self._rescan_all() if rescan else self._apply(paths)
                except StoreUnavailable as exc:  # a Chroma server that went away may come back
                    wait = _RETRY_S[min(retry, len(_RETRY_S) - 1)]
                    retry += 1
                    log.warning("watch %s: %s; retrying in %d s", self.collection, exc, wait)
                    with self._cond:
                        self._rescan = self._rescan or rescan
                        self._pending |= paths
                        self._first = self._last = time.monotonic()
                        self._cond.wait_for(lambda: self._stopping, wait)
                    continue
                retry = 0
                self.batches += 1
                if rescan and self.rescan_s > 0:
                    with self._cond:
                        self._next_rescan = time.monotonic() + self.rescan_s
                self.on_batch(report, rescan)
                if rescan:
                    self.ready.set()
        except Cancelled:  # stop() during a batch
            pass
        except BaseException as exc:
            self.error = exc
            log.error("watch %s stopped: %s", self.collection, exc,
                      exc_info=not isinstance(exc, LocalCatError))
        finally:
            self.ready.set()
            if self._observer is not None:
                self._observer.stop()

    def _due(self) -> bool:
        if self._rescan:
            return True
        if not self._pending:
            return self._rescan_due()
        # Events wait for their quiet period even when a rescan is due: files being written
        # would only be hashed half-way.
        now = time.monotonic()
        return now - self._last >= self.quiet_s or now - self._first >= self.max_delay_s

    def _rescan_due(self) -> bool:
        return self._next_rescan is not None and time.monotonic() >= self._next_rescan

    def _until_due(self) -> float | None:
        now = time.monotonic()
        if self._pending:
            return max(0.0, min(self._last + self.quiet_s, self._first + self.max_delay_s) - now)
        if self._next_rescan is not None:
            return max(0.0, self._next_rescan - now)
        return None

    def _rescan_all(self) -> IngestReport:
        return self.indexer.ingest(self.folders, self.collection, prune=True, cancel=self._cancel)

    def _apply(self, paths: set[str]) -> IngestReport:
        """One ingest for what exists, one remove for what is gone (files, or whole folders)."""
        started = time.perf_counter()
        present = sorted(p for p in paths if os.path.exists(p))
        gone = {Path(p) for p in paths if not os.path.exists(p)}
        files: list[FileResult] = []
        if gone:
            # Only what the collection holds: a temp file created and deleted within one batch
            # was never ingested, and remove() would report it as a failure.
            lost = sorted(r.path for r in self.indexer.store.files(self.collection)
                          if _under(Path(r.path), gone) and not os.path.exists(r.path))
            if lost:
                files += self.indexer.remove(lost, self.collection).files
        if present:
            # A new folder is walked whole: naming its files as well would ingest them twice.
            folders = {Path(p) for p in present if os.path.isdir(p)}
            named = [Path(p) for p in present if not _under(Path(p).parent, folders)]
            files += self.indexer.ingest(named, self.collection, prune=False,
                                         cancel=self._cancel).files
        return IngestReport(collection=self.collection, files=files,
                            seconds=time.perf_counter() - started)


def _under(path: Path, folders: set[Path]) -> bool:
    """``path`` is one of ``folders`` or inside one (a set lookup per level, not per folder)."""
    return path in folders or any(parent in folders for parent in path.parents)


class _Handler:
    """watchdog's side: runs on the observer thread, so it only records paths."""

    def __init__(self, watcher: Watcher):
        self.watcher = watcher

    def dispatch(self, event) -> None:
        if event.is_directory and event.event_type not in ("created", "deleted", "moved"):
            return  # a folder's own modified/closed events say nothing its files don't
        paths = [event.src_path, getattr(event, "dest_path", "")]
        self.watcher.touch(os.fsdecode(p) for p in paths
                           if p and self.watcher.wants(os.fsdecode(p), event.is_directory))


def start_watchers(indexer: Indexer, settings: Settings) -> list[Watcher]:
    """A started Watcher per collection named in ``settings.ingest.watch`` (for `localcat serve`).

    A collection that another process already watches is left to it (logged), so several server
    workers do not ingest the same files at once.
    """
    by_collection: dict[str, list[Path]] = defaultdict(list)
    for spec in settings.ingest.watch:
        by_collection[spec.collection or settings.chroma.collection].append(spec.path)
    watchers: list[Watcher] = []
    try:
        for collection, folders in by_collection.items():
            w = Watcher(indexer, folders, collection, quiet_s=settings.ingest.watch_quiet_s,
                        rescan_s=settings.ingest.watch_rescan_s)
            try:
                watchers.append(w.start())
            except AlreadyWatched as exc:
                log.info("%s", exc.problem)
            else:
                log.info("watching %s → %s", ", ".join(map(str, w.folders)), collection)
    except BaseException:
        stop_all(watchers)
        raise
    return watchers


def stop_all(watchers: Iterable[Watcher], timeout: float | None = 60) -> None:
    """Stop several watchers, their in-flight batches winding down together."""
    watchers = list(watchers)
    for w in watchers:
        w.request_stop()
    for w in watchers:
        w.stop(timeout)

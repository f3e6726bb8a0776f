"""Uploads (POST /api/ingest) go through a bounded queue and are journalled until ingested.

At most ``server.max_concurrent_ingests`` uploads are ingested at once and ``server.ingest_queue``
more wait their turn; past that an upload is refused with 429 and a Retry-After, so a burst of
uploads (or of hostile files, each allowed up to ``ingest.parse_timeout_s``) cannot take every
core and thread from the chats. When the server stops, running ingests are cancelled at once
(ingest/index.py stops between files or embedding slices; what it wrote is whole).

An accepted upload is saved under ``data_dir/uploads/<collection>/`` (where it stays: it is the
source citations link to) and named in a journal entry, ``data_dir/uploads/.unfinished/*.json``,
that is removed only once its ingest has run to the end. The next start re-ingests every upload
still in the journal: the content hash skips what was already written, and a file left 'pending'
in the chunk store is redone from scratch.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from core.errors import Busy, Cancelled, LocalCatError
from core.schemas import IngestReport

log = logging.getLogger("localcat.uploads")

_FIRST_GUESS_S = 5.0
"""The expected ingest time before any has finished (Retry-After's basis)."""


class IngestQueue:
    """At most ``running`` jobs at once, ``waiting`` more queued, the rest refused with ``Busy``.

    Example::

        with queue.ticket() as ticket:       # Busy when full
            with ticket.turn() as cancel:     # waits; Cancelled if the server stops meanwhile
                indexer.ingest(paths, name, cancel=cancel)
    """

    def __init__(self, running: int, waiting: int):
        self.limit = running
        self.queue = waiting
        self._cond = threading.Condition()
        self._running = 0
        self._admitted = 0  # running or waiting
        self._cancels: set[threading.Event] = set()
        self._closed = False
        self._mean_s = _FIRST_GUESS_S

    @contextlib.contextmanager
    def ticket(self, *, refuse: bool = True) -> Iterator[_Ticket]:
        """A place in the queue for one upload; ``Busy`` when the queue is full (unless not
        ``refuse``: the start-up resume always gets one)."""
        with self._cond:
            self._check_open()
            if refuse and self._admitted >= self.limit + self.queue:
                raise self._busy()
            self._admitted += 1
        try:
            yield _Ticket(self)
        finally:
            with self._cond:
                self._admitted -= 1

    def status(self) -> dict:
        with self._cond:
            return {"running": self._running, "waiting": self._admitted - self._running,
                    "max_concurrent_ingests": self.limit, "ingest_queue": self.queue,
                    "closed": self._closed}

    def close(self) -> None:
        """Refuse new work, cancel running ingests and wake every waiting one (it raises
        ``Cancelled``); returns at once. Safe from any thread, and more than once."""
        with self._cond:
            self._closed = True
            for cancel in self._cancels:
                cancel.set()
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no upload is admitted; True when none is."""
        with self._cond:
            return self._cond.wait_for(lambda: self._admitted == 0, timeout)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[threading.Event]:
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._running < self.limit)
            self._check_open()
            self._running += 1
            cancel = threading.Event()
            self._cancels.add(cancel)
        started = time.monotonic()
        try:
            yield cancel
        finally:
            with self._cond:
                self._running -= 1
                self._cancels.discard(cancel)
                # A moving mean of how long an upload's ingest takes, for Retry-After.
                self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - started)
                self._cond.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise Cancelled("The server is stopping; the upload was not ingested",
                            "send it again once the server is back")

    def _busy(self) -> Busy:
        # Roughly when a queue place frees: the queue ahead drains `limit` uploads at a time.
        ahead = self._admitted - self.limit + 1
        retry = max(1, math.ceil(self._mean_s * max(1, ahead) / self.limit))
        return Busy(
            f"The server is ingesting {self._running} uploads and {self._admitted - self._running} "
            "more are waiting",
            f"retry in {retry} s (Retry-After), or raise LOCALCAT_SERVER__MAX_CONCURRENT_INGESTS "
            "or LOCALCAT_SERVER__INGEST_QUEUE",
            retry_after=retry,
        )


class _Ticket:
    def __init__(self, queue: IngestQueue):
        self._queue = queue

    def turn(self) -> contextlib.AbstractContextManager[threading.Event]:
        """Wait for a free ingest; yields the event that cancels it."""
        return self._queue._turn()


class Journal:
    """Uploads accepted but not yet ingested to the end, one JSON file each, kept across restarts.

    An entry is locked (flock) while an ingest works on it, so a resume never takes an upload
    that is still being ingested, by this process or by another worker of `serve --workers N`.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def add(self, collection: str, paths: list[Path]) -> Entry:
        """A new entry, locked: ``close()`` it when done with it, ``done()`` first if the ingest
        ran to the end."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{uuid.uuid4().hex}.json"
        tmp = path.with_suffix(".part")
        f = tmp.open("w+")
        fcntl.flock(f, fcntl.LOCK_EX)
        json.dump({"collection": collection, "files": [str(p) for p in paths]}, f)
        f.flush()
        tmp.replace(path)  # whole or absent, whenever the process dies; the lock moves with it
        return Entry(path, collection, paths, f)

    def unfinished(self) -> Iterator[Entry]:
        """Each entry no one is working on, oldest first, locked for the caller (who closes it)."""
        if not self.folder.is_dir():
            return
        listed = []
        for path in self.folder.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):  # finished meanwhile
                listed.append((path.stat().st_mtime, path))
        for _, path in sorted(listed):
            try:
                f = path.open("r")
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # being ingested right now
                f.close()
                continue
            try:
                if not path.exists():  # finished between open and lock
                    raise FileNotFoundError(path)
                data = json.load(f)
                entry = Entry(path, data["collection"], [Path(p) for p in data["files"]], f)
            except FileNotFoundError:
                f.close()
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:  # edited by hand?
                f.close()
                log.error("ignoring the upload journal entry %s: %s", path, exc)
                continue
            yield entry


class Entry:
    """One journalled upload, locked until ``close()``."""

    def __init__(self, path: Path, collection: str, files: list[Path], lock: IO):
        self.path = path
        self.collection = collection
        self.files = files
        self._lock = lock

    def done(self) -> None:
        """The ingest ran to the end: nothing is left to finish."""
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self._lock.close()  # closing releases the flock

    def __enter__(self) -> Entry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ingest_upload(queue: IngestQueue, journal: Journal, collection: str,
                  save: Callable[[], list[Path]],
                  ingest: Callable[[list[Path], threading.Event], IngestReport]) -> IngestReport:
    """Take a queue place (``Busy`` if none), save the files and journal them, wait for a turn,
    ingest; the journal entry goes once the ingest has run to the end."""
    with queue.ticket() as ticket:
        paths = save()
        with journal.add(collection, paths) as entry:
            try:
                with ticket.turn() as cancel:
                    report = ingest(paths, cancel)
            except Cancelled:
                names = ", ".join(p.name for p in paths)
                raise Cancelled(f"The server is stopping; {names} will be ingested when it "
                                "starts again (the upload is kept)") from None
            entry.done()
        return report


def resume(queue: IngestQueue, journal: Journal,
           ingest: Callable[[list[Path], str, threading.Event], IngestReport]) -> None:
    """Ingest the uploads an earlier run accepted but did not finish, one at a time (for a
    thread started with the server); stops quietly when the server stops."""
    for entry in journal.unfinished():
        with entry:
            present = [p for p in entry.files if p.exists()]
            try:
                if present:
                    with queue.ticket(refuse=False) as ticket, ticket.turn() as cancel:
                        report = ingest(present, entry.collection, cancel)
                    log.info("finished an interrupted upload into %s: %s", entry.collection,
                             report.summary())
            except Cancelled:
                return
            except LocalCatError as exc:  # e.g. a Chroma server that is down: next start retries
                log.error("could not finish the upload %s: %s", entry.path.name, exc)
                continue
            entry.done()

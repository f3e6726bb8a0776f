"""SQLite as every LocalCat store uses it: WAL, a busy timeout, IMMEDIATE transactions, one
connection per thread and process, and numbered migrations kept in ``PRAGMA user_version``."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from core.errors import StoreUnavailable

BUSY_TIMEOUT_S = 30.0

Migration = Callable[[sqlite3.Connection], None]


def migrations() -> tuple[list[Migration], Callable[[Migration], Migration]]:
    """A fresh migration list and the decorator that appends to it (append, never edit)."""
    items: list[Migration] = []

    def register(fn: Migration) -> Migration:
        items.append(fn)
        return fn

    return items, register


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # IMMEDIATE takes the write lock up front. A deferred transaction that reads and then writes
    # has to upgrade its lock, and SQLite answers SQLITE_BUSY at once there instead of waiting,
    # because waiting could deadlock against another upgrading reader.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _user_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite3.Connection, steps: Sequence[Migration]) -> int:
    """Apply the migrations past ``PRAGMA user_version`` in one transaction; return how many ran.

    The version is read again under the write lock, so when several processes open a fresh file at
    once one of them migrates and the others wait for it, then find nothing left to do.
    """
    if _user_version(db) == len(steps):
        return 0
    with transaction(db):
        done = _user_version(db)
        if done > len(steps):
            path = db.execute("PRAGMA database_list").fetchone()[2]
            raise StoreUnavailable(
                f"{path} has schema version {done}; this LocalCat knows only up to {len(steps)}",
                "upgrade LocalCat, or point LOCALCAT_DATA_DIR at another folder",
            )
        for fn in steps[done:]:
            fn(db)
        db.execute(f"PRAGMA user_version = {len(steps)}")
    return len(steps) - done


def _enable_wal(db: sqlite3.Connection) -> None:
    # Switching a file to WAL needs an exclusive lock, and SQLite does not wait for it: while
    # another connection holds a write lock (say a second process switching the same fresh file)
    # it answers "database is locked" at once, whatever busy_timeout says. Wait here instead.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class Database:
    """Base of the stores: ``self.db`` is this thread's migrated connection, opened lazily."""

    #: The schema, as migrations; subclasses set their own.
    MIGRATIONS: Sequence[Migration] = ()
    #: What the file is, for error messages.
    KIND = "database"

    def __init__(self, path: Path):
        self.path = Path(path)
        # One connection per thread: sqlite3 connections must not be used by two threads at once.
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[tuple[int, sqlite3.Connection]] = []

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # timeout= is SQLite's busy timeout: a writer waits for another process's write
            # transaction instead of failing with "database is locked".
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            try:
                db.row_factory = sqlite3.Row
                _enable_wal(db)
                # Durable against crashes in WAL mode; a power cut may lose only the last commits.
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA foreign_keys=ON")
                migrate(db, self.MIGRATIONS)
            except BaseException:
                db.close()
                raise
        except (OSError, sqlite3.DatabaseError) as e:
            raise StoreUnavailable(
                f"Cannot open the {self.KIND} {self.path}: {e}",
                f"check that the folder is writable and the file is a LocalCat {self.KIND}, "
                "or set LOCALCAT_DATA_DIR",
            ) from e
        return db

    @property
    def db(self) -> sqlite3.Connection:
        pid = os.getpid()
        db = getattr(self._local, "db", None)
        # A connection inherited through fork() is left alone, not closed: closing it in the child
        # could checkpoint and delete the WAL the parent is still using.
        if db is None or self._local.pid != pid:
            db = self._connect()
            self._local.db, self._local.pid = db, pid
            with self._lock:
                self._connections.append((pid, db))
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with transaction(self.db) as db:
            yield db

    def close(self) -> None:
        """Close this process's connections (at shutdown); the store reopens lazily if used again."""
        pid = os.getpid()
        with self._lock:
            mine = [db for p, db in self._connections if p == pid]
            self._connections = [(p, db) for p, db in self._connections if p != pid]
        for db in mine:
            db.close()
        self._local = threading.local()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

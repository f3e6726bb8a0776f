"""The stores' database: a SQLite file each by default, or one PostgreSQL that several LocalCat
servers share (``database.url``). SQLAlchemy Core for the queries; Alembic for the schema, one
migration history per store (``core/migrations/<store>/``) that serves both databases.

Writes keep SQLite's discipline on both: one writer per store at a time. SQLite gets it from
``BEGIN IMMEDIATE``; PostgreSQL from a transaction-scoped advisory lock named after the store, so
read-then-write transactions ("next version number", "is a file pending?") mean the same there.
"""

from __future__ import annotations

import ast
import os
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import StoreUnavailable
from core.redact import redact, redact_url

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

BUSY_TIMEOUT_S = 30.0
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_WRITE = "localcat_write"


def now_text(delta_s: float = 0) -> str:
    """UTC now (plus ``delta_s``) as stored: 'YYYY-MM-DD HH:MM:SS', which sorts as it compares."""
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).strftime("%Y-%m-%d %H:%M:%S")


def _normalise(url: str) -> str:
    # psycopg 3 is the driver we install; plain postgresql:// would make SQLAlchemy look for psycopg2.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class Database:
    """One database: its engine (per process, built lazily) and which store schemas are migrated.

    ``Database.sqlite(path)`` is a store's own file; ``Database(url)`` a server several stores (and
    several LocalCat servers) share.
    """

    def __init__(self, url: str, *, label: str | None = None):
        self.url = _normalise(url)
        self.label = label or redact_url(self.url)
        self._lock = threading.Lock()
        self._migrate_lock = threading.Lock()
        self._engine: Engine | None = None
        self._pid = 0
        self._migrated: set[str] = set()

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        path = Path(path)
        db = cls(f"sqlite:///{path}", label=str(path))
        db.path = path
        return db

    path: Path | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def engine(self) -> Engine:
        pid = os.getpid()
        if self._engine is None or self._pid != pid:
            with self._lock:
                if self._engine is None or self._pid != pid:
                    if self._engine is not None:
                        # Inherited through fork(): the parent still uses those connections.
                        self._engine.dispose(close=False)
                    self._engine, self._pid, self._migrated = self._create(), pid, set()
        return self._engine

    def _create(self) -> Engine:
        from sqlalchemy import create_engine, event

        if self.is_sqlite:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # timeout= is SQLite's busy timeout: a writer waits for another process's write
            # transaction instead of failing with "database is locked".
            engine = create_engine(self.url, connect_args={"timeout": BUSY_TIMEOUT_S})

            @event.listens_for(engine, "connect")
            def _connect(dbapi: sqlite3.Connection, _record: Any) -> None:
                dbapi.isolation_level = None  # we say BEGIN ourselves (below)
                _enable_wal(dbapi)
                # Durable against crashes in WAL mode; a power cut may lose only the last commits.
                dbapi.execute("PRAGMA synchronous=NORMAL")
                dbapi.execute("PRAGMA foreign_keys=ON")

            @event.listens_for(engine, "begin")
            def _begin(conn: Connection) -> None:
                # IMMEDIATE takes the write lock up front. A deferred transaction that reads and
                # then writes has to upgrade its lock, and SQLite answers SQLITE_BUSY at once
                # there instead of waiting, because waiting could deadlock another upgrading reader.
                write = conn.get_execution_options().get(_WRITE)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

            return engine
        try:
            return create_engine(self.url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                                 pool_timeout=BUSY_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - a bad URL or a missing driver
            raise self._unavailable(e) from e

    def _unavailable(self, e: BaseException, kind: str = "database") -> StoreUnavailable:
        # A driver's error may quote the URL or its connection string (libpq: 'missing "=" after
        # "…" in connection info string').
        if self.is_sqlite:
            return StoreUnavailable(
                redact(f"Cannot open the {kind} {self.label}: {e}"),
                f"check that the folder is writable and the file is a LocalCat {kind}, "
                "or set LOCALCAT_DATA_DIR",
            )
        return StoreUnavailable(
            redact(f"Cannot use the {kind} at {self.label}: {str(e).splitlines()[0]}"),
            "check that PostgreSQL runs and LOCALCAT_DATABASE__URL names it "
            "(postgresql://user:password@host:5432/db; psycopg installed: pip install 'psycopg[binary]')",
        )

    @contextmanager
    def connect(self, *, write: bool, lock: str = "", kind: str = "database") -> Iterator[Connection]:
        """A connection in a transaction, committed at the end; ``write`` takes the store's write
        lock (``lock`` names the store) before anything is read."""
        from sqlalchemy import text as sa_text
        from sqlalchemy.exc import DBAPIError, OperationalError

        try:
            conn = self.engine.connect()
        except (OperationalError, DBAPIError) as e:
            raise self._unavailable(e, kind) from e
        with conn:
            if write:
                conn = conn.execution_options(**{_WRITE: True})
            with conn.begin():
                if write and not self.is_sqlite:
                    conn.execute(sa_text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(lock)})
                yield conn

    def migrate(self, store: str, kind: str) -> None:
        """Bring ``store``'s tables to the newest revision (once per process)."""
        if store in self._migrated and self._pid == os.getpid():
            return
        with self._migrate_lock:
            self.engine  # noqa: B018 - a new process starts with nothing migrated
            if store not in self._migrated:
                try:
                    upgrade(self, store)
                except StoreUnavailable:
                    raise
                except Exception as e:
                    from sqlalchemy.exc import DBAPIError

                    if isinstance(e, (DBAPIError, OSError)):
                        raise self._unavailable(e, kind) from e
                    raise
                self._migrated.add(store)

    def close(self) -> None:
        """Close this process's connections (at shutdown); the engine is rebuilt if used again."""
        with self._lock:
            if self._engine is not None and self._pid == os.getpid():
                self._engine.dispose()
            self._engine, self._migrated = None, set()


def _lock_key(name: str) -> int:
    return zlib.crc32(f"localcat:{name}".encode())


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


# --- migrations -----------------------------------------------------------------------------------

def version_table(store: str) -> str:
    return f"alembic_version_{store}"


def _config(store: str, conn: Connection | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("version_locations", str(MIGRATIONS_DIR / store))
    cfg.attributes.update(connection=conn, version_table=version_table(store))
    return cfg


def head(store: str) -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(store)).get_current_head()


def current(conn: Connection, store: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(conn, opts={"version_table": version_table(store)})
    return ctx.get_current_revision()


_REVISION_LINE = re.compile(r"^(revision|down_revision)(?:\s*:[^=\n]*)?\s*=\s*(.+?)\s*$", re.M)


def _head_from_files(store: str) -> str | None:
    """``store``'s newest revision read from its files' ``revision = "…"`` lines, without Alembic.

    Importing Alembic and loading its script directory cost ~0.3 s, most of a re-ingest of
    unchanged files (BENCHMARKS.md, issue 11), only to learn that nothing is to be done. None
    when a file does not say its revisions plainly: the caller then asks Alembic.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / store).glob("*.py"):
        found = dict(_REVISION_LINE.findall(path.read_text(encoding="utf-8")))
        try:
            revision = ast.literal_eval(found["revision"])
            down = ast.literal_eval(found["down_revision"])
        except (KeyError, ValueError, SyntaxError):
            return None
        down = (down,) if isinstance(down, str) else () if down is None else down
        if not isinstance(revision, str) or not all(isinstance(d, str) for d in down):
            return None
        revisions.add(revision)
        parents.update(down)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _at_revision(database: Database, store: str, revision: str) -> bool:
    """Whether the database's ``store`` schema is at ``revision`` (False when it has none yet)."""
    from sqlalchemy import text as sa_text
    from sqlalchemy.exc import DBAPIError

    try:
        with database.connect(write=False) as conn:
            rows = conn.execute(sa_text(f"SELECT version_num FROM {version_table(store)}")).all()
    except DBAPIError:  # no version table yet: a new database, which Alembic creates
        return False
    return [r[0] for r in rows] == [revision]


def upgrade(database: Database, store: str) -> None:
    """Run ``store``'s pending revisions in one write transaction.

    The revision is read again under the write lock, so when several processes open a fresh
    database at once one of them migrates and the others wait for it, then find nothing to do.
    A SQLite file from before Alembic (numbered migrations in ``PRAGMA user_version``) is first
    stamped with the revision its number stands for: revision N is that migration N.
    """
    newest = _head_from_files(store)
    if newest is not None and _at_revision(database, store, newest):
        return  # the common case, without importing Alembic
    from alembic import command
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config(store))
    newest = script.get_current_head()
    with database.connect(write=False) as conn:
        if current(conn, store) == newest:
            return
    with database.connect(write=True, lock=store) as conn:
        done = current(conn, store)
        if done == newest:
            return
        known = {r.revision for r in script.walk_revisions()}
        if done is not None and done not in known:
            raise StoreUnavailable(
                f"{database.label} has {store} schema revision {done}, which this LocalCat "
                "does not know (a newer LocalCat wrote it)",
                "upgrade LocalCat, or point LOCALCAT_DATA_DIR / LOCALCAT_DATABASE__URL elsewhere",
            )
        cfg = _config(store, conn)
        if done is None and database.is_sqlite:
            legacy = conn.exec_driver_sql("PRAGMA user_version").scalar()
            if legacy:
                revisions = list(reversed(list(script.walk_revisions())))
                if legacy > len(revisions):
                    raise StoreUnavailable(
                        f"{database.label} has schema version {legacy}; this LocalCat knows "
                        f"only up to {len(revisions)}",
                        "upgrade LocalCat, or point LOCALCAT_DATA_DIR at another folder",
                    )
                command.stamp(cfg, revisions[legacy - 1].revision)
        command.upgrade(cfg, "head")


class Store:
    """Base of the stores: a ``Database`` (or a SQLite file path) and a migrated schema."""

    #: The migration folder under core/migrations/ (and the Alembic version table's suffix).
    SCHEMA = ""
    #: What the store is, for error messages.
    KIND = "database"

    def __init__(self, database: Database | Path | str):
        if not isinstance(database, Database):
            database = Database.sqlite(Path(database))
        self.database = database

    @property
    def path(self) -> Path | None:
        """The SQLite file (None on a server database)."""
        return self.database.path

    @contextmanager
    def read(self) -> Iterator[Connection]:
        self.database.migrate(self.SCHEMA, self.KIND)
        with self.database.connect(write=False, kind=self.KIND) as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction; only one per store runs at a time (see the module doc)."""
        self.database.migrate(self.SCHEMA, self.KIND)
        with self.database.connect(write=True, lock=self.SCHEMA, kind=self.KIND) as conn:
            yield conn

    def one(self, statement: Any, *params: Any) -> Any:
        """The first row of a read, or None."""
        with self.read() as conn:
            return conn.execute(statement, *params).first()

    def all(self, statement: Any, *params: Any) -> list[Any]:
        with self.read() as conn:
            return list(conn.execute(statement, *params))

    def scalar(self, statement: Any, *params: Any) -> Any:
        with self.read() as conn:
            return conn.execute(statement, *params).scalar()

    def close(self) -> None:
        self.database.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def insert_ignore(conn: Connection, table: Any, rows: list[dict] | dict, *index: Any) -> None:
    """INSERT … ON CONFLICT DO NOTHING in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    conn.execute(insert(table).on_conflict_do_nothing(index_elements=list(index) or None), rows)


def upsert(conn: Connection, table: Any, row: dict, index: list[str], update: dict) -> None:
    """INSERT … ON CONFLICT (index) DO UPDATE SET update, in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    conn.execute(insert(table).values(**row).on_conflict_do_update(index_elements=index, set_=update))

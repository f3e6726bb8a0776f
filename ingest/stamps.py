"""Ingest stamps: a re-run of `localcat ingest` over files that have not changed answers from a
stamp, without loading the settings, the stores or the embedder (its cost was all start-up).

A stamp is written after an ingest that ended with every file done. It holds what decided that
run (the command's paths and options, the LOCALCAT_* environment, the config file's bytes), what
the files and folders looked like (size, times and inode of each file; the times of each folder
walked, which move when an entry is added, removed or renamed), the collection's row in the
SQLite chunk store (its generation moves with every write to the collection, by any process) and
the report a re-run prints. A re-run with the same inputs, the same file system and the same row
prints that report; anything else (a touched file, a new one, a remove, a learned retrieval
version, PostgreSQL, an unreadable stamp) takes the full path, which checks content hashes.

stdlib only: the point is what this module does not import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

FORMAT = 1
# A file or folder changed this close to the end of an ingest may change again within the file
# system's timestamp granularity without its times moving: such runs write no stamp (git calls
# this "racy").
_RACY_NS = 1_000_000_000
# Environment that decides the effective settings besides LOCALCAT_* (core/settings.py).
_ENV = ("HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "OLLAMA_HOST")


def _folder() -> Path:
    """The data dir when the environment names it (tests, several data dirs), else the cache."""
    if os.environ.get("LOCALCAT_DATA_DIR"):
        return Path(os.environ["LOCALCAT_DATA_DIR"]) / "cache" / "ingest-stamps"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "localcat" / "ingest-stamps"


def real_paths(paths: Iterable[Path]) -> list[str]:
    """The paths as the indexer keys them (and a stamp records them). realpath, not resolve(): a
    symlink loop is reported as missing instead of raising RuntimeError (Python < 3.13)."""
    return [os.path.realpath(Path(p).expanduser()) for p in paths]


def key(paths: Iterable[Path], collection: str | None, prune: bool) -> str | None:
    """What decides an ingest's result besides the files themselves (None: no stamps here)."""
    from importlib.metadata import PackageNotFoundError, version

    config = os.environ.get("LOCALCAT_CONFIG") or "localcat.toml"
    try:
        config_bytes = hashlib.sha256(Path(config).read_bytes()).hexdigest()
    except OSError:
        config_bytes = None
    try:
        code, cwd = version("localcat"), os.getcwd()
    except (PackageNotFoundError, OSError):  # not installed, or in a deleted folder
        return None
    inputs = {
        "format": FORMAT,
        "localcat": code,
        "cwd": cwd,
        "paths": real_paths(paths),
        "collection": collection,
        "prune": prune,
        "env": sorted((k, v) for k, v in os.environ.items()
                      if k.startswith("LOCALCAT_") or k in _ENV),
        "config": [os.path.abspath(config), config_bytes],
    }
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


def _stat(path: str) -> list[int]:
    s = os.stat(path)
    return [s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino, s.st_dev]


class Snapshot:
    """The folders walked and the files found by an ingest of ``paths``, as stat saw them."""

    def __init__(self, paths: Iterable[Path]):
        from ingest.loaders import iter_files

        folders: list[Path] = []
        real = [Path(p) for p in real_paths(paths)]
        found = [p for p, problem in iter_files([p for p in real if p.exists()],
                                                on_folder=folders.append) if problem is None]
        self.taken_ns = time.time_ns()
        self.folders = {str(f): _stat(str(f)) for f in folders}
        self.files = {str(f): _stat(str(f)) for f in found}

    def racy(self) -> bool:
        bar = self.taken_ns - _RACY_NS
        return any(max(s[1], s[2]) >= bar
                   for s in (*self.folders.values(), *self.files.values()))

    def same(self, other: Snapshot) -> bool:
        return self.folders == other.folders and self.files == other.files


def _row(db_file: str, collection: str) -> dict | None:
    # Read-only and never created: a store deleted since is a change, not an empty store.
    with contextlib.closing(sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM collections WHERE name = ?", (collection,)).fetchone()
    return dict(row) if row is not None else None


def record(stamp_key: str | None, before: Snapshot, after: Snapshot, db_file: Path,
           collection: str, report: dict) -> bool:
    """Write the stamp of a finished ingest; False (and no stamp) when the files moved meanwhile
    or too recently to tell."""
    if stamp_key is None or not before.same(after) or after.racy():
        return False
    try:
        row = _row(str(db_file), collection)
        if row is None:
            return False
        folder = _folder()
        folder.mkdir(parents=True, exist_ok=True)
        data = {"folders": after.folders, "files": after.files, "db": str(db_file), "row": row,
                "report": report}
        tmp = folder / f".{stamp_key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, folder / stamp_key)
    except (OSError, sqlite3.Error):  # a stamp is an optimisation: the ingest itself succeeded
        return False
    return True


def forget(stamp_key: str | None) -> None:
    """Drop a stamp before an ingest that may change what it describes."""
    if stamp_key is not None:
        with contextlib.suppress(OSError):
            (_folder() / stamp_key).unlink()


def replay(stamp_key: str | None) -> dict | None:
    """The report of the stamped ingest if nothing it depends on changed since, else None."""
    if stamp_key is None:
        return None
    try:
        data = json.loads((_folder() / stamp_key).read_text())
        stats = {**data["folders"], **data["files"]}
        if any(_stat(path) != s for path, s in stats.items()):
            return None
        if _row(data["db"], data["row"]["name"]) != data["row"]:
            return None
        return data["report"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, sqlite3.Error):
        return None

"""A re-ingest where nothing changed answers from the last clean run's stamp, in a fresh process,
without opening the stores; any change to the files, the settings or the collection goes the full
way. Real `localcat ingest` processes on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ingest import stamps

# Runs `localcat ingest` and says on stderr whether the stores' code was imported at all.
_RUN = """
import sys
from localcat.cli import main
try:
    main(sys.argv[1:], prog_name="localcat")
finally:
    print("OPENED" if "sqlalchemy" in sys.modules else "STAMPED", file=sys.stderr)
"""


def ingest(*args: str, env: dict | None = None) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", _RUN, "ingest", "-q", "--json", *args],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr.strip().splitlines()[-1]


def statuses(report: dict) -> dict[str, str]:
    return {Path(f["path"]).name: f["status"] for f in report["files"]}


def test_an_unchanged_reingest_answers_from_the_stamp_and_any_change_goes_the_full_way(
        tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Leave\n\nStaff get 25 days of annual leave.\n")
    (docs / "sub" / "b.txt").write_text("The office opens at 8 and closes at 18.\n")
    time.sleep(1.1)  # older than the racy window, as files usually are

    first, how = ingest(str(docs))
    assert how == "OPENED" and statuses(first) == {"a.md": "added", "b.txt": "added"}
    again, how = ingest(str(docs))
    assert how == "STAMPED"
    assert statuses(again) == {"a.md": "skipped", "b.txt": "skipped"}
    assert again["chunks_written"] == 0 and again["summary"]["skipped"] == 2

    # The files are as they were, but the collection changed: the full path puts the file back.
    subprocess.run([sys.executable, "-m", "localcat", "remove", str(docs / "a.md")], check=True,
                   capture_output=True)
    back, how = ingest(str(docs))
    assert how == "OPENED" and statuses(back) == {"a.md": "added", "b.txt": "skipped"}
    assert ingest(str(docs))[1] == "STAMPED"

    # A new file in a subfolder moves only that subfolder's times.
    (docs / "sub" / "c.md").write_text("Parking is free for staff.\n")
    new, how = ingest(str(docs))
    assert how == "OPENED" and statuses(new)["c.md"] == "added"

    # Another chunk size changes every file's chunks: a setting is an input too.
    time.sleep(1.1)
    resized, how = ingest(str(docs), env={"LOCALCAT_CHUNKING__CHUNK_SIZE": "300",
                                          "LOCALCAT_CHUNKING__CHUNK_OVERLAP": "30"})
    assert how == "OPENED" and set(statuses(resized).values()) == {"updated"}

    # Another collection named on the command line is another stamp.
    other, how = ingest(str(docs), "-c", "other")
    assert how == "OPENED" and set(statuses(other).values()) == {"added"}
    assert ingest(str(docs), "-c", "other")[1] == "STAMPED"

    # A file edited in place, its size and times put back: its change time still moves.
    before = (docs / "a.md").stat()
    time.sleep(1.1)
    (docs / "a.md").write_text("# Leave\n\nStaff get 30 days of annual leave.\n")
    os.utime(docs / "a.md", ns=(before.st_atime_ns, before.st_mtime_ns))
    edited, how = ingest(str(docs), "-c", "other")
    assert how == "OPENED" and statuses(edited)["a.md"] == "updated"


def test_no_stamp_for_files_changed_during_or_just_before_the_ingest(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("one\n")
    fresh = stamps.Snapshot([docs])
    assert fresh.racy()  # written just now: a change within the same clock tick would not show
    (docs / "a.md").write_text("two, longer\n")
    changed = stamps.Snapshot([docs])
    assert not fresh.same(changed)
    db = tmp_path / "index.sqlite"
    assert not stamps.record("k", fresh, changed, db, "default", {})
    assert stamps.replay("k") is None

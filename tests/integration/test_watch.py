"""Watching folders with real file events (watchdog, inotify), the real Indexer and embedded Chroma.

The fake embedder (hash vectors) stands in where what the vectors mean does not matter; one test
runs MiniLM and retrieves a file that appeared while watching.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.index import file_hash
from ingest.watch import AlreadyWatched, Watcher

pytestmark = pytest.mark.integration

WAIT_S = 60  # generous: the machine is shared and busy; a pass usually takes 1–3 s


def wait_for(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.1)


def indexed(container, collection: str) -> dict[str, str]:
    """{path: file hash} of the files the collection holds, finished ones only."""
    return {r.path: r.file_hash for r in container.store.files(collection) if r.state == "done"}


def on_disk(*folders: Path) -> dict[str, str]:
    """What the collection should hold: supported, visible files under the folders, no office
    lock files (~$name.docx)."""
    from ingest.loaders import iter_files

    return {str(p): file_hash(p) for p, problem in iter_files(folders)
            if problem is None and not p.name.startswith("~")}


def in_step(container, collection: str, *folders: Path) -> Callable[[], bool]:
    return lambda: indexed(container, collection) == on_disk(*folders)


def consistent(container, collection: str) -> bool:
    """Chroma and the chunk store hold the same chunk ids."""
    coll = container.vectors.client.get_collection(collection, embedding_function=None)
    return set(coll.get(include=[])["ids"]) == container.store.chunk_ids(collection)


class Recorder:
    """Collects the watcher's batch reports."""

    def __init__(self):
        self.reports = []

    def __call__(self, report, rescan: bool) -> None:
        self.reports.append((report, rescan))

    def failed(self) -> list:
        return [f for r, _ in self.reports for f in r.files if f.status == "failed"]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    """A container with the hash-vector embedder (no model to load)."""
    from localcat.container import Container

    monkeypatch.setenv("LOCALCAT_EMBEDDING__BACKEND", "fake")
    c = Container()
    yield c
    c.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "watched"
    d.mkdir()
    (d / "leave.md").write_text("# Leave\n\nEvery employee gets 27 vacation days per year.\n")
    (d / "it.txt").write_text("The helpdesk extension is 4417.\n")
    return d


def test_the_collection_follows_creates_edits_renames_and_deletes(fake, folder, tmp_path):
    rec = Recorder()
    with Watcher(fake.indexer, [folder], "watched", on_batch=rec) as w:
        assert w.ready.wait(WAIT_S) and w.error is None
        assert set(indexed(fake, "watched")) == {str(folder / "leave.md"), str(folder / "it.txt")}

        (folder / "new.md").write_text("A new page about the espresso machine.\n")
        wait_for(in_step(fake, "watched", folder), "a created file")

        (folder / "it.txt").write_text("The helpdesk moved to extension 5550.\n")
        wait_for(in_step(fake, "watched", folder), "an edited file")
        chunks = fake.store.chunks("watched", list(fake.store.chunk_ids("watched")))
        assert any("5550" in c.text for c in chunks.values())
        assert not any("4417" in c.text for c in chunks.values())

        (folder / "new.md").rename(folder / "renamed.md")
        wait_for(in_step(fake, "watched", folder), "a renamed file")
        assert str(folder / "new.md") not in indexed(fake, "watched")

        (folder / "leave.md").unlink()
        wait_for(in_step(fake, "watched", folder), "a deleted file")

        # An editor's atomic save: write a temp file, rename it over the original.
        (folder / ".renamed.md.swp").write_text("swap")
        (folder / "renamed.md.tmp").write_text("The espresso machine is descaled on Fridays.\n")
        (folder / "renamed.md.tmp").replace(folder / "renamed.md")
        wait_for(lambda: indexed(fake, "watched").get(str(folder / "renamed.md"))
                 == file_hash(folder / "renamed.md"), "an atomic save")

        # Folders: one made with files in it, renamed within the tree, then moved out of it.
        sub = folder / "policies"
        sub.mkdir()
        (sub / "travel.md").write_text("Per-diem for travel is 42 euros.\n")
        (sub / "deep").mkdir()
        (sub / "deep" / "cars.txt").write_text("Company cars need a logbook.\n")
        wait_for(in_step(fake, "watched", folder), "a new folder with files")
        sub.rename(folder / "rules")
        wait_for(in_step(fake, "watched", folder), "a renamed folder")
        assert str(folder / "rules" / "deep" / "cars.txt") in indexed(fake, "watched")
        (folder / "rules").rename(tmp_path / "elsewhere")
        wait_for(in_step(fake, "watched", folder), "a folder moved out of the watched tree")

        # Hidden, lock and temp files are never ingested: write them, then a marker file, and
        # check once the marker is in.
        (folder / ".secret.md").write_text("hidden\n")
        (folder / ".git").mkdir()
        (folder / ".git" / "notes.md").write_text("inside a hidden folder\n")
        (folder / "~$report.docx").write_bytes(b"office lock file")
        (folder / "download.pdf.part").write_text("partial\n")
        (folder / "marker.txt").write_text("marker\n")
        wait_for(lambda: str(folder / "marker.txt") in indexed(fake, "watched"), "the marker")
        assert set(indexed(fake, "watched")) == set(on_disk(folder)) == {
            str(folder / "it.txt"), str(folder / "renamed.md"), str(folder / "marker.txt")}
    assert w.wait(0) and w.error is None
    assert rec.failed() == []  # a temp file gone before its batch is not a failure
    assert consistent(fake, "watched")


def test_a_restart_catches_what_changed_while_nothing_watched(fake, folder):
    with Watcher(fake.indexer, [folder], "watched") as w:
        assert w.ready.wait(WAIT_S) and w.error is None
    before = indexed(fake, "watched")
    assert set(before) == {str(folder / "leave.md"), str(folder / "it.txt")}

    (folder / "it.txt").write_text("The helpdesk moved to extension 5550.\n")
    (folder / "leave.md").unlink()
    (folder / "added.md").write_text("Written while the watcher was down.\n")

    rec = Recorder()
    with Watcher(fake.indexer, [folder], "watched", on_batch=rec) as w:
        assert w.ready.wait(WAIT_S) and w.error is None
        report, rescan = rec.reports[0]
        assert rescan
        assert report.summary() == {"added": 1, "updated": 1, "skipped": 0, "removed": 1,
                                    "failed": 0}
        assert in_step(fake, "watched", folder)()
        # ...and it goes on following events after the rescan.
        (folder / "later.md").write_text("Written after the restart.\n")
        wait_for(in_step(fake, "watched", folder), "a file written after the restart")
    assert consistent(fake, "watched")


def test_stopping_mid_batch_leaves_a_store_the_next_start_completes(fake, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    # Slow parsing down so stop() lands inside the batch whatever the machine's speed: the
    # indexer writes every 256 chunks (one per file here), ~2.6 s apart at 10 ms a file.
    result = fake.indexer.parser.result
    fake.indexer.parser.result = lambda future, cancel=None: (time.sleep(0.01),
                                                             result(future, cancel))[1]
    with Watcher(fake.indexer, [folder], "many") as w:
        assert w.ready.wait(WAIT_S)
        for i in range(600):
            (folder / f"note-{i:03}.txt").write_text(f"Note number {i} says {i * 7}.\n")
        wait_for(lambda: len(indexed(fake, "many")) >= 256, "the batch's first write")
    assert w.error is None
    partial = len(indexed(fake, "many"))
    assert 256 <= partial < 600  # stopped after a write, before the end of the batch
    assert consistent(fake, "many")

    fake.indexer.parser.result = result
    rec = Recorder()
    with Watcher(fake.indexer, [folder], "many", on_batch=rec) as w:
        assert w.ready.wait(WAIT_S) and w.error is None
    assert rec.reports[0][0].count("added") == 600 - partial
    assert in_step(fake, "many", folder)() and len(indexed(fake, "many")) == 600
    assert consistent(fake, "many")


def test_a_periodic_rescan_catches_changes_whose_events_were_lost(fake, folder):
    """As after an inotify queue overflow: no event reaches the watcher, yet the next rescan
    adds, updates and removes what changed."""
    rec = Recorder()
    with Watcher(fake.indexer, [folder], "lost", rescan_s=4, on_batch=rec) as w:
        assert w.ready.wait(WAIT_S) and w.error is None
        w.touch = lambda paths: None  # every event from now on is lost
        (folder / "new.md").write_text("Written while events were lost.\n")
        (folder / "it.txt").write_text("The helpdesk moved to extension 5550.\n")
        (folder / "leave.md").unlink()
        time.sleep(1.5)  # past the quiet period: an event would have been ingested by now
        assert not in_step(fake, "lost", folder)()
        wait_for(in_step(fake, "lost", folder), "the periodic rescan")
    assert w.error is None
    assert [rescan for _, rescan in rec.reports] == [True, True]  # start-up, then periodic
    assert rec.reports[1][0].summary() == {"added": 1, "updated": 1, "skipped": 0,
                                           "removed": 1, "failed": 0}
    assert consistent(fake, "lost")


def test_a_burst_of_1000_writes_costs_one_batched_ingest(fake, tmp_path):
    folder = tmp_path / "burst"
    folder.mkdir()
    calls = {"ingest": 0, "remove": 0}
    for name in calls:
        method = getattr(fake.indexer, name)

        def counted(*args, _method=method, _name=name, **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)
        setattr(fake.indexer, name, counted)

    rec = Recorder()
    with Watcher(fake.indexer, [folder], "burst", on_batch=rec) as w:
        assert w.ready.wait(WAIT_S) and w.error is None
        assert calls == {"ingest": 1, "remove": 0}  # the start-up rescan
        # Ten rounds of 100 writes, 0.3 s apart: a watcher without a quiet period would ingest
        # each round (or less) on its own.
        for i in range(1000):
            (folder / f"f{i:04}.txt").write_text(f"File {i}: the code word is w{i * 31}.\n")
            if i % 100 == 99:
                time.sleep(0.3)
        wait_for(lambda: len(indexed(fake, "burst")) == 1000, "1,000 files", timeout=300)
        time.sleep(2 * w.quiet_s)  # room for a stray late batch to show up
    assert 2 <= calls["ingest"] <= 3, calls  # the rescan + one batch (two if the writes stalled)
    assert calls["remove"] == 0
    assert sum(r.count("added") for r, rescan in rec.reports if not rescan) == 1000
    assert in_step(fake, "burst", folder)() and consistent(fake, "burst")


def test_a_stream_that_never_goes_quiet_is_still_ingested(fake, tmp_path):
    folder = tmp_path / "stream"
    folder.mkdir()
    with Watcher(fake.indexer, [folder], "stream", quiet_s=1.0, max_delay_s=2.0) as w:
        assert w.ready.wait(WAIT_S)
        seen_while_writing = False
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < 8:  # a write every 0.2 s: never quiet for 1 s
            (folder / f"log-{i:03}.txt").write_text(f"Entry {i}.\n")
            i += 1
            time.sleep(0.2)
            seen_while_writing = seen_while_writing or bool(indexed(fake, "stream"))
        assert seen_while_writing
        wait_for(in_step(fake, "stream", folder), "the end of the stream")


def test_one_watcher_per_collection(fake, folder):
    with Watcher(fake.indexer, [folder], "watched") as w:
        assert w.ready.wait(WAIT_S)
        with pytest.raises(AlreadyWatched, match="already watched by localcat pid"):
            Watcher(fake.indexer, [folder], "watched").start()
    # Released on stop.
    with Watcher(fake.indexer, [folder], "watched") as again:
        assert again.ready.wait(WAIT_S) and again.error is None


def test_watching_a_file_or_a_missing_folder_says_what_to_do(fake, folder):
    from core.errors import BadRequest

    with pytest.raises(BadRequest, match="not a folder — watch the folder"):
        Watcher(fake.indexer, [folder / "it.txt"], "watched")
    with pytest.raises(BadRequest, match="not a folder"):
        Watcher(fake.indexer, [folder / "missing"], "watched")


@pytest.fixture
def minilm():
    """A container with the real MiniLM embedder (the settings' default: int8)."""
    from localcat.container import Container

    c = Container()
    yield c
    c.close()


def test_with_minilm_a_new_file_is_retrievable(minilm, folder):
    """The real embedder: a file that appears while watching answers a question about it."""
    with Watcher(minilm.indexer, [folder], "handbook") as w:
        assert w.ready.wait(WAIT_S * 3) and w.error is None
        (folder / "parking.md").write_text(
            "# Parking\n\nThe parking garage closes at 22:15 on weekdays and is shut on Sundays.\n")
        wait_for(in_step(minilm, "handbook", folder), "the new file", timeout=WAIT_S * 3)
    assert minilm.embeddings.name == "all-MiniLM-L6-v2+onnx-int8"
    docs = minilm.retriever("handbook").invoke("When does the parking garage close?")
    assert docs and docs[0].metadata["source"].endswith("parking.md")
    assert "22:15" in docs[0].page_content


def _lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "term"])
def test_localcat_watch_prints_json_batches_and_stops_on_ctrl_c(fake, folder, monkeypatch,
                                                                 stop_signal):
    proc = subprocess.Popen(
        [sys.executable, "-m", "localcat", "watch", str(folder), "-c", "cli", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        rescan = json.loads(lines.get(timeout=WAIT_S * 2))
        assert rescan["event"] == "rescan" and rescan["summary"]["added"] == 2

        # While the command runs, the collection cannot be watched by anyone else.
        with pytest.raises(AlreadyWatched):
            Watcher(fake.indexer, [folder], "cli").start()

        (folder / "new.md").write_text("Added while `localcat watch` runs.\n")
        batch = json.loads(lines.get(timeout=WAIT_S))
        assert batch["event"] == "batch" and batch["summary"]["added"] == 1
        assert [f["path"] for f in batch["files"]] == [str(folder / "new.md")]
        (folder / "it.txt").unlink()
        batch = json.loads(lines.get(timeout=WAIT_S))
        assert batch["summary"]["removed"] == 1

        proc.send_signal(stop_signal)
        assert proc.wait(timeout=WAIT_S) == 0
        err = proc.stderr.read()
        assert "rescan → cli: 2 added" in err and "Stopped." in err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert set(indexed(fake, "cli")) == {str(folder / "leave.md"), str(folder / "new.md")}


def test_serve_follows_the_watch_list_in_settings(folder, monkeypatch):
    from fastapi.testclient import TestClient

    from localcat.container import Container
    from localcat.server import create_app

    monkeypatch.setenv("LOCALCAT_EMBEDDING__BACKEND", "fake")
    monkeypatch.setenv("LOCALCAT_INGEST__WATCH",
                       json.dumps([{"path": str(folder), "collection": "served"}]))
    c = Container()
    try:
        with TestClient(create_app(c, with_ui=False), base_url="http://127.0.0.1") as client:
            wait_for(in_step(c, "served", folder), "the start-up rescan")
            (folder / "new.md").write_text("Added while the server runs.\n")
            wait_for(in_step(c, "served", folder), "a file added while serving")
            served = {r["name"]: r for r in client.get("/api/collections").json()["collections"]}
            assert served["served"]["files"] == 3
        # Shut down with the server: the collection can be watched again.
        with Watcher(c.indexer, [folder], "served") as w:
            assert w.ready.wait(WAIT_S) and w.error is None
    finally:
        c.close()

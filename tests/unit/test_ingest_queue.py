"""The upload queue and journal (localcat/uploads.py), with threads and a recording ingest."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from core.errors import Busy, Cancelled
from core.schemas import IngestReport
from localcat.uploads import IngestQueue, Journal, ingest_upload, resume


class Gate:
    """An ingest that holds its turn until released; records what it was given."""

    def __init__(self):
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.calls: list[list[Path]] = []

    def __call__(self, paths, cancel: threading.Event) -> IngestReport:
        self.calls.append(paths)
        self.started.release()
        while not self.release.wait(0.01):
            if cancel.is_set():
                raise Cancelled("stopped")
        return IngestReport(collection="kb")


def upload_in_thread(queue, journal, gate, path: Path, errors: list) -> threading.Thread:
    def run():
        try:
            ingest_upload(queue, journal, "kb", lambda: [path], gate)
        except (Busy, Cancelled) as exc:
            errors.append(exc)
    t = threading.Thread(target=run)
    t.start()
    return t


def test_runs_at_most_the_limit_queues_the_rest_and_refuses_past_the_queue(tmp_path):
    queue, journal, gate, errors = IngestQueue(2, 1), Journal(tmp_path / "j"), Gate(), []
    threads = [upload_in_thread(queue, journal, gate, tmp_path / f"f{i}", errors)
               for i in range(3)]
    gate.started.acquire(timeout=5), gate.started.acquire(timeout=5)
    assert not gate.started.acquire(timeout=0.2)  # the third waits its turn
    assert queue.status() | {"running": 2, "waiting": 1} == queue.status()

    with pytest.raises(Busy) as refused:
        ingest_upload(queue, journal, "kb", lambda: [tmp_path / "f3"], gate)
    assert refused.value.status == 429 and refused.value.retry_after >= 1
    assert len(list((tmp_path / "j").glob("*.json"))) == 3  # the refused one was not saved

    gate.release.set()
    for t in threads:
        t.join(5)
    assert errors == [] and len(gate.calls) == 3
    assert queue.status()["running"] == queue.status()["waiting"] == 0
    assert not list((tmp_path / "j").glob("*.json"))  # all ran to the end


def test_close_cancels_running_and_waiting_uploads_and_the_journal_keeps_them(tmp_path):
    queue, journal, gate, errors = IngestQueue(1, 2), Journal(tmp_path / "j"), Gate(), []
    threads = [upload_in_thread(queue, journal, gate, tmp_path / f"f{i}", errors)
               for i in range(3)]
    gate.started.acquire(timeout=5)
    queue.close()
    for t in threads:
        t.join(5)
    assert [type(e) for e in errors] == [Cancelled] * 3
    assert all("will be ingested when it starts again" in str(e) for e in errors)
    assert len(gate.calls) == 1  # the waiting ones never started
    kept = [json.loads(p.read_text())["files"] for p in (tmp_path / "j").glob("*.json")]
    assert sorted(Path(f).name for files in kept for f in files) == ["f0", "f1", "f2"]

    # The next start's resume ingests each one once, skipping files that are gone.
    (tmp_path / "f0").write_text("x")
    (tmp_path / "f2").write_text("x")
    done: list[tuple[str, list[str]]] = []
    resume(IngestQueue(1, 0), journal, lambda paths, coll, cancel: (
        done.append((coll, [p.name for p in paths])), IngestReport(collection=coll))[1])
    assert sorted(done) == [("kb", ["f0"]), ("kb", ["f2"])]
    assert not list((tmp_path / "j").glob("*.json"))


def test_resume_leaves_an_upload_that_is_being_ingested_alone(tmp_path):
    """E.g. another worker of `serve --workers 2` still ingests it."""
    journal = Journal(tmp_path / "j")
    busy = journal.add("kb", [tmp_path / "busy.md"])
    with journal.add("kb", [tmp_path / "left.md"]):
        pass  # an upload whose server stopped before it finished
    left = []
    for entry in journal.unfinished():
        with entry:
            left.append(entry.files)
    assert left == [[tmp_path / "left.md"]]
    busy.done()
    busy.close()
    assert len(list((tmp_path / "j").glob("*.json"))) == 1

"""Many writers on one fresh feedback file: every row lands, none fails with "database is locked".

Processes stand in for the server's workers: each opens the new file at the same moment (so they race
on creating the schema) and then writes answers and feedback as fast as it can.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading
import traceback
from pathlib import Path

import pytest

from assistant.feedback import FeedbackStore
from core.schemas import Answer

pytestmark = pytest.mark.integration

WRITERS = 50
ANSWERS_EACH = 4
FEEDBACK_EACH = 3  # per answer


def _answer(worker: int, i: int) -> Answer:
    return Answer(
        question=f"question {i} from writer {worker}",
        standalone_question=f"question {i} from writer {worker}",
        collection="docs",
        answer="an answer [1]",
        grounded=True,
        model="fake",
        prompt_version="test",
    )


def _write(path: Path, worker: int) -> None:
    with FeedbackStore(path) as store:
        for i in range(ANSWERS_EACH):
            answer = _answer(worker, i)
            store.record_answer(answer)
            for j in range(FEEDBACK_EACH):
                rating = "up" if j % 2 else "down"
                store.add_feedback(answer.id, rating, comment=f"{worker}/{i}/{j}", user=str(worker))


def _process_writer(
    path: str, worker: int, start: mp.synchronize.Barrier, results: mp.Queue
) -> None:
    try:
        # All writers open the file together, so they race on WAL set-up and migrations too.
        start.wait(timeout=120)
        _write(Path(path), worker)
        results.put((worker, None))
    except BaseException:
        results.put((worker, traceback.format_exc()))


def _assert_all_rows(path: Path) -> None:
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM answers").fetchone()[0] == WRITERS * ANSWERS_EACH
    assert db.execute("SELECT count(*) FROM feedback").fetchone()[0] == (
        WRITERS * ANSWERS_EACH * FEEDBACK_EACH
    )
    per_writer = dict(db.execute("SELECT user, count(*) FROM feedback GROUP BY user"))
    assert per_writer == {str(w): ANSWERS_EACH * FEEDBACK_EACH for w in range(WRITERS)}
    orphans = db.execute(
        "SELECT count(*) FROM feedback f LEFT JOIN answers a ON a.id = f.answer_id WHERE a.id IS NULL"
    ).fetchone()[0]
    assert orphans == 0
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with FeedbackStore(path) as store:
        assert store.stats()["feedback"] == WRITERS * ANSWERS_EACH * FEEDBACK_EACH


@pytest.mark.slow  # 50 interpreters importing pydantic: ~40 s on a busy 2-core machine
def test_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "feedback.sqlite"
    ctx = mp.get_context("spawn")  # fork would copy pytest's state; spawn is what servers do anyway
    start = ctx.Barrier(WRITERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_process_writer, args=(str(path), w, start, results))
        for w in range(WRITERS)
    ]
    for p in procs:
        p.start()
    try:
        # Drain before join: a child blocks on exit until its queued result is read.
        outcomes = dict(results.get(timeout=300) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    failures = {w: err for w, err in outcomes.items() if err}
    assert not failures, "\n".join(failures.values())
    assert all(p.exitcode == 0 for p in procs)
    _assert_all_rows(path)


def test_concurrent_threads_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "feedback.sqlite"
    store = FeedbackStore(path)  # one store shared by all threads, as in a threaded server
    start = threading.Barrier(WRITERS)
    errors: list[str] = []

    def writer(worker: int) -> None:
        try:
            start.wait(timeout=60)
            for i in range(ANSWERS_EACH):
                answer = _answer(worker, i)
                store.record_answer(answer)
                for j in range(FEEDBACK_EACH):
                    store.add_feedback(answer.id, "up", comment=f"{i}/{j}", user=str(worker))
        except BaseException:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    store.close()
    assert not errors, "\n".join(errors)
    _assert_all_rows(path)

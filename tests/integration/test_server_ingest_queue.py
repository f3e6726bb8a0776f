"""The upload queue of a real `localcat serve` process: a full queue answers 429, chats answer
while zip bombs are being ingested, SIGTERM ends it within 5 s however busy it is, and the next
start finishes the uploads it cancelled.

The bombs are tests/fixtures/hostile.py's lying zip (its directory declares 1 KB for a member that
inflates to 1 GB), each holding a parse worker for ~1-2 s until the memory limit stops it;
HOSTILE_ENV keeps that limit (and so each worker's memory) at 768 MB.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.hostile import HOSTILE_ENV, zip_lying_sizes
from tests.fixtures.servers import free_port, wait_http
from tests.fixtures.tiny_model import TINY_ANSWER

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

COLLECTION = "queued"
EXIT_S = 5.0


@contextlib.contextmanager
def serve(tmp_path: Path, name: str, **settings: int) -> Iterator[tuple[str, subprocess.Popen]]:
    """`localcat serve` in a subprocess with the test's environment; stopped (SIGTERM, then
    SIGKILL) at the end unless the test stopped it."""
    port = free_port()
    env = {**os.environ, **HOSTILE_ENV, "LOCALCAT_SERVER__UI": "false",
           **{f"LOCALCAT_SERVER__{k.upper()}": str(v) for k, v in settings.items()}}
    log = (tmp_path / f"{name}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "localcat", "serve", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", timeout=60)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def stop(proc: subprocess.Popen) -> float:
    """SIGTERM; seconds until the process has exited."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode in (0, -signal.SIGTERM), proc.returncode
    return time.monotonic() - started


def upload(url: str, name: str, data: bytes) -> httpx.Response:
    return httpx.post(url + "/api/ingest", files=[("files", (name, data))],
                      data={"collection": COLLECTION}, timeout=120)


class Uploads:
    """Uploads sent from threads at once, as several users would; ``results[name]`` is the
    response (or the error) each got."""

    def __init__(self, url: str, files: dict[str, bytes]):
        self.results: dict[str, httpx.Response | Exception] = {}
        self.threads = [threading.Thread(target=self._send, args=(url, n, d), daemon=True)
                        for n, d in files.items()]
        for t in self.threads:
            t.start()

    def _send(self, url: str, name: str, data: bytes) -> None:
        try:
            self.results[name] = upload(url, name, data)
        except httpx.HTTPError as exc:
            self.results[name] = exc

    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=120)


def queue_status(url: str) -> dict:
    r = httpx.get(url + "/api/ingest/queue", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_queue(url: str, running: int, waiting: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (status := queue_status(url))["running"] != running or status["waiting"] != waiting:
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def chat(url: str) -> float:
    """Seconds one chat took; asserts it answered."""
    started = time.monotonic()
    r = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "collection": COLLECTION,
        "messages": [{"role": "user", "content": "How many vacation days do I get?"}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == TINY_ANSWER
    return time.monotonic() - started


@pytest.fixture
def bomb(tmp_path: Path) -> bytes:
    folder = tmp_path / "bombs"
    folder.mkdir()
    return (folder / zip_lying_sizes(folder).name).read_bytes()


GOOD = b"# Leave\n\nEvery employee gets 27 vacation days per calendar year.\n"


def test_a_full_queue_answers_429_and_chats_answer_during_five_bombs(tiny_runtime, bomb,
                                                                     tmp_path):
    with serve(tmp_path, "server", max_concurrent_ingests=2, ingest_queue=3) as (url, proc):
        assert upload(url, "leave.md", GOOD).json()["summary"]["added"] == 1
        chat(url)  # loads the model

        bombs = Uploads(url, {f"bomb{i}.docx": bomb for i in range(5)})
        wait_queue(url, running=2, waiting=3)
        full = upload(url, "one-more.md", b"# One more\n\nQueued too late.\n")
        assert full.status_code == 429, full.text
        assert int(full.headers["Retry-After"]) >= 1
        error = full.json()["error"]
        assert error["type"] == "Busy" and error["code"] == 429
        assert "LOCALCAT_SERVER__INGEST_QUEUE" in error["message"]

        during = []
        while bombs.running():
            if queue_status(url)["running"]:
                during.append(chat(url))
        bombs.join()
        print(f"\nchats during 5 bombs: {len(during)}, slowest {max(during):.2f} s, "
              f"median {sorted(during)[len(during) // 2]:.2f} s")
        assert len(during) >= 3, during
        assert max(during) < 10, during

        for name, r in bombs.results.items():
            assert isinstance(r, httpx.Response) and r.status_code == 200, (name, r)
            [result] = r.json()["files"]
            assert result["status"] == "failed" and "memory limit" in result["reason"], result
        wait_queue(url, running=0, waiting=0)
        again = upload(url, "one-more.md", b"# One more\n\nQueued in time.\n")
        assert again.status_code == 200 and again.json()["summary"]["added"] == 1
    # Every upload ran to its end: nothing is left for the next start.
    assert not list((tmp_path / "data" / "uploads" / ".unfinished").glob("*.json"))


def big_markdown() -> bytes:
    """~150 chunks of distinct text: ~15 s to embed (10 chunks/s on 2 cores), so SIGTERM finds
    it under way."""
    parts = ["# Handbook\n"]
    for i in range(150):
        parts.append(f"\n## Rule {i}\n\n" + " ".join(
            f"Rule {i} clause {j} says the badge code for door {i}-{j} is {(i * 7919 + j) % 10007}."
            for j in range(12)) + "\n")
    return "".join(parts).encode()


def test_sigterm_exits_within_5_s_and_the_next_start_finishes_the_uploads(tiny_runtime, bomb,
                                                                         tmp_path):
    from core.settings import Settings

    settings = Settings()
    journal = settings.data_dir / "uploads" / ".unfinished"
    big = big_markdown()
    with serve(tmp_path, "first", max_concurrent_ingests=2, ingest_queue=4) as (url, proc):
        assert upload(url, "leave.md", GOOD).json()["summary"]["added"] == 1  # loads the embedder
        first = Uploads(url, {"handbook.md": big})
        wait_queue(url, running=1, waiting=0)
        bombs = Uploads(url, {f"bomb{i}.docx": bomb for i in range(5)})
        wait_queue(url, running=2, waiting=4)
        time.sleep(0.5)
        assert first.running() and bombs.running()
        seconds = stop(proc)
        print(f"\nSIGTERM to exit with 6 uploads in progress (5 bombs): {seconds:.2f} s")
        assert seconds < EXIT_S
        first.join()
        bombs.join()
        for name, r in (first.results | bombs.results).items():
            # Answered before the server went: the files are kept for the next start.
            assert isinstance(r, httpx.Response) and r.status_code == 503, (name, r)
            error = r.json()["error"]
            assert error["type"] == "Cancelled" and name in error["message"], error

    assert len(list(journal.glob("*.json"))) == 6
    uploads = settings.data_dir / "uploads" / COLLECTION
    handbook = str((uploads / "handbook.md").resolve())
    from localcat.container import Container

    c = Container(settings)
    before = c.store.file(COLLECTION, handbook)
    c.close()
    assert before is None or before.state == "pending"  # interrupted, whichever step it was at
    print(f"handbook.md at SIGTERM: {before.state if before else 'no row yet'}")

    with serve(tmp_path, "second") as (url, proc):
        deadline = time.monotonic() + 180
        while any(journal.glob("*.json")):
            assert time.monotonic() < deadline, list(journal.iterdir())
            time.sleep(0.2)
        wait_queue(url, running=0, waiting=0)
        stop(proc)

    c = Container(Settings())
    files = {Path(f.path).name: f for f in c.store.files(COLLECTION)}
    assert set(files) == {"leave.md", "handbook.md"}  # the bombs were refused again
    assert all(f.state == "done" for f in files.values())
    from ingest.index import file_hash
    from ingest.parse import chunk_file

    clean = chunk_file(Path(handbook), file_hash(Path(handbook)), c.settings.ingest,
                       c.settings.chunking)
    assert files["handbook.md"].chunks == len(clean) > 100
    stored = {i for i, ch in c.store.chunks(COLLECTION, c.store.chunk_ids(COLLECTION)).items()
              if ch.source == handbook}
    assert stored == {ch.id for ch in clean}
    vectors = c.vectors.client.get_collection(COLLECTION, embedding_function=None)
    assert set(vectors.get(include=[])["ids"]) == c.store.chunk_ids(COLLECTION)
    c.close()


def test_an_upload_cut_off_after_its_pending_row_is_redone_at_the_next_start(tmp_path,
                                                                           monkeypatch):
    """A crash between the 'pending' row and the commit (here: Chroma's add fails, as if the
    power went) leaves the upload in the journal; the next start ingests it whole."""
    from fastapi.testclient import TestClient

    from ingest.index import file_hash
    from ingest.parse import chunk_file
    from localcat.container import Container
    from localcat.server import create_app
    from tests.fixtures.servers import chroma_server

    # A Chroma server, so this process and the `localcat serve` one share the vectors safely.
    with chroma_server(tmp_path / "chroma") as chroma:
        monkeypatch.setenv("LOCALCAT_CHROMA__URL", chroma)
        c = Container()

        def power_cut(*args, **kwargs):
            raise RuntimeError("power cut")

        monkeypatch.setattr(c.vectors, "upsert", power_cut)
        with TestClient(create_app(c, with_ui=False), base_url="http://127.0.0.1",
                        raise_server_exceptions=False) as client:
            r = client.post("/api/ingest", files=[("files", ("leave.md", GOOD))],
                            data={"collection": COLLECTION})
        assert r.status_code == 500, r.text
        key = str((c.settings.data_dir / "uploads" / COLLECTION / "leave.md").resolve())
        assert c.store.file(COLLECTION, key).state == "pending"
        journal = c.settings.data_dir / "uploads" / ".unfinished"
        assert len(list(journal.glob("*.json"))) == 1

        with serve(tmp_path, "next") as (url, proc):
            deadline = time.monotonic() + 120
            while any(journal.glob("*.json")):
                assert time.monotonic() < deadline, list(journal.iterdir())
                time.sleep(0.2)
            stop(proc)

        row = c.store.file(COLLECTION, key)
        clean = chunk_file(Path(key), file_hash(Path(key)), c.settings.ingest, c.settings.chunking)
        assert row.state == "done" and row.chunks == len(clean)
        assert c.store.chunk_ids(COLLECTION) == {ch.id for ch in clean}
        vectors = c.vectors.client.get_collection(COLLECTION, embedding_function=None)
        assert set(vectors.get(include=[])["ids"]) == c.store.chunk_ids(COLLECTION)
        c.close()

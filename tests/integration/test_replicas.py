"""Two `localcat serve` replicas as a user starts them, on one PostgreSQL and one `chroma run`, both
answering through one (protocol-level fake) Ollama: what is written through one is served by the
other. The servers are started once for the module; each case uses its own collection."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import sqlalchemy as sa

from tests.fixtures.fake_ollama import FakeOllama
from tests.fixtures.servers import chroma_server, free_port, new_database

pytestmark = pytest.mark.integration

LOCALCAT = Path(sys.executable).parent / "localcat"
BASE_MODEL = "llama3.2"  # llm.ollama_model's default
TUNED_MODEL = "localcat-base:v1"  # the Ollama name the registered version carries


def first_source_sentence(messages: list[dict]) -> str:
    """A faithful model: the first sentence of source [1], cited (or 'not found' with none)."""
    found = re.search(r"^\[1\] \([^)]*\)\n(.+?)[.!?](?:\s|$)", messages[-1]["content"], re.M | re.S)
    return f"{found.group(1).strip()} [1]." if found else "I could not find it in the documents."


@dataclass
class Replica:
    """One `localcat serve --port N` process with its own data dir."""

    name: str
    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def start(self) -> Replica:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as log:
            # A session of its own: killing the group takes its parse workers too, as a machine
            # that dies would.
            self.proc = subprocess.Popen(
                [str(LOCALCAT), "serve", "--port", str(self.port), "--no-ui"],
                env={**self.env, "LOCALCAT_DATA_DIR": str(self.data_dir)},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {self.name} did not answer within {timeout} s")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, the server and its workers at once: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=60)

    def ask(self, question: str, collection: str):
        return self.client().chat.completions.create(
            model="localcat", extra_body={"collection": collection},
            messages=[{"role": "user", "content": question}])

    def upload(self, collection: str, files: dict[str, str | bytes], timeout: float = 120):
        r = httpx.post(self.url + "/api/ingest", data={"collection": collection}, timeout=timeout,
                       files=[("files", (name, body)) for name, body in files.items()])
        assert r.status_code == 200, r.text
        return r.json()


@dataclass
class Cluster:
    database: str
    chroma: str
    ollama: FakeOllama
    a: Replica
    b: Replica
    env: dict[str, str]

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.database.replace("postgresql://", "postgresql+psycopg://"))

    def localcat(self, *args: str, data_dir: Path) -> subprocess.CompletedProcess:
        """A `localcat` command on one replica's machine (its settings, the shared database)."""
        return subprocess.run([str(LOCALCAT), *args], capture_output=True, text=True, timeout=120,
                              env={**self.env, "LOCALCAT_DATA_DIR": str(data_dir)})


def last_chat_model(ollama: FakeOllama) -> str:
    return [r for r in ollama.requests if r["path"] == "/api/chat"][-1]["body"]["model"]


@pytest.fixture(scope="module")
def cluster(postgres_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    database = new_database(postgres_cluster, f"replicas_{uuid.uuid4().hex[:8]}")
    with chroma_server(root / "chroma") as chroma, FakeOllama(
            models=[f"{BASE_MODEL}:latest"], reply=first_source_sentence) as ollama:
        # As a user would configure each server; defaults for everything else (the int8 MiniLM
        # embedder, retrieval.bm25_sync_s = 1 s, models.poll_s = 2 s).
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALCAT_")}
        env.update(LOCALCAT_DATABASE__URL=database, LOCALCAT_CHROMA__URL=chroma,
                   LOCALCAT_LLM__RUNTIME="ollama", OLLAMA_HOST=ollama.url,
                   LOCALCAT_CONFIG=str(root / "no-config.toml"),
                   # The uploads folder is one shared folder, as the README's deployment section
                   # says: an upload's path, which names the file in the shared chunk store, is
                   # then the same whichever replica receives it.
                   LOCALCAT_SERVER__UPLOADS_DIR=str(root / "uploads"),
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
        a = Replica("a", root / "a" / "data", env)
        b = Replica("b", root / "b" / "data", env)
        for replica in (a, b):  # each has a data dir of its own (its BM25 index)
            replica.data_dir.mkdir(parents=True)
        started = time.monotonic()
        try:
            a.start(), b.start()
            a.wait(), b.wait()
            up = time.monotonic() - started
            # Each loads its embedder on first use (seconds): not what the cases measure.
            a.upload("warmup", {"canteen.md": OTHER})
            first = time.monotonic()
            b.ask("When does the canteen close?", "warmup")
            print(f"\n[replicas] both servers answering {up:.1f} s after start; B's first answer "
                  f"(embedder load included) {time.monotonic() - first:.1f} s")
            yield Cluster(database, chroma, ollama, a, b, env)
        finally:
            a.stop(), b.stop()


def until(check: Callable[[], object], timeout: float, every: float = 0.1) -> tuple[object, float]:
    """Call ``check`` until it returns something true; (that value, seconds it took)."""
    started = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout} s: {check.__doc__ or check}")
        time.sleep(every)


def sources(resp) -> list[str]:
    return [Path(c["source"]).name for c in resp.choices[0].message.model_extra["citations"]]


# --- (a) ingest through A, ask through B ---------------------------------------------------------

VALVES = ("# Coolant\n\nThe Zephyr-9 coolant valve is replaced every {days} days by the night "
          "shift. The old valve goes to the recycling bin in hall C.\n")
OTHER = "# Canteen\n\nThe canteen serves soup on Tuesdays and closes at 15:00 on Fridays.\n"
QUESTION = "How often is the Zephyr-9 coolant valve replaced?"


def test_written_through_a_is_answered_by_b(cluster: Cluster):
    a, b = cluster.a, cluster.b
    report = a.upload("plant", {"valves.md": VALVES.format(days=14), "canteen.md": OTHER})
    assert report["summary"]["added"] == 2, report
    uploaded_at = time.monotonic()

    def b_cites_valves():
        resp = b.ask(QUESTION, "plant")
        return resp if "valves.md" in sources(resp) else None

    resp, _ = until(b_cites_valves, timeout=10)
    seen = time.monotonic() - uploaded_at
    content = resp.choices[0].message.content
    assert "every 14 days" in content and "[1]" in content
    citation = resp.choices[0].message.model_extra["citations"][0]
    assert citation["cited"] and Path(citation["source"]).name == "valves.md"
    # B built its own BM25 index from the database: its folder is under B's data dir.
    assert (b.data_dir / "bm25" / "plant" / "CURRENT").is_file()

    # Changed through A: B answers from the new text.
    report = a.upload("plant", {"valves.md": VALVES.format(days=21)})
    assert report["summary"]["updated"] == 1, report
    changed_at = time.monotonic()

    def b_has_new_text():
        return "every 21 days" in b.ask(QUESTION, "plant").choices[0].message.content

    until(b_has_new_text, timeout=10)
    changed = time.monotonic() - changed_at
    resp = b.ask(QUESTION, "plant")
    assert all("14 days" not in c["snippet"] for c in resp.choices[0].message.model_extra["citations"])

    # Sent again, changed, through B: it replaces the file A received (one upload folder).
    report = b.upload("plant", {"valves.md": VALVES.format(days=25)})
    assert report["summary"]["updated"] == 1, report
    resp, _ = until(lambda: (r := a.ask(QUESTION, "plant")) and "every 25 days" in
                    r.choices[0].message.content and r, timeout=10)
    assert sources(resp).count("valves.md") == 1

    # Removed on A's machine (`localcat remove`, A's settings): B no longer shows it.
    path = str(Path(cluster.env["LOCALCAT_SERVER__UPLOADS_DIR"]).resolve() / "plant" / "valves.md")
    done = cluster.localcat("remove", path, "-c", "plant", data_dir=a.data_dir)
    assert done.returncode == 0, done.stderr
    removed_at = time.monotonic()

    def b_forgot_valves():
        return "valves.md" not in sources(b.ask(QUESTION, "plant"))

    until(b_forgot_valves, timeout=10)
    removed = time.monotonic() - removed_at

    # The collection deleted through A and rebuilt with other content: B searches the new one.
    assert httpx.delete(a.url + "/api/collections/plant").status_code == 200
    with pytest.raises(openai.NotFoundError):
        b.ask(QUESTION, "plant")
    a.upload("plant", {"valves.md": VALVES.format(days=30), "canteen.md": OTHER})

    def b_has_rebuilt_text():
        return "every 30 days" in b.ask(QUESTION, "plant").choices[0].message.content

    until(b_has_rebuilt_text, timeout=10)
    print(f"\n[replicas] B cites a file uploaded through A after {seen:.2f} s; a change after "
          f"{changed:.2f} s; a removal after {removed:.2f} s")


# --- (b) feedback written through both ------------------------------------------------------------

def test_fifty_feedback_writers_across_both_replicas(cluster: Cluster):
    a, b = cluster.a, cluster.b
    a.upload("ratings", {"canteen.md": OTHER})
    questions = ["When does the canteen close on Fridays?", "What does the canteen serve?"]
    answers = [r.ask(q, "ratings").id for r in (a, b) for q in questions]  # two answers from each
    n = 50
    start = threading.Barrier(n)
    tag = uuid.uuid4().hex[:8]

    def write(i: int) -> int:
        replica = (a, b)[i % 2]
        # Each replica also rates answers the other one gave.
        body = {"answer_id": answers[(i // 2) % len(answers)], "rating": ("up", "down")[i % 3 == 0],
                "comment": f"{tag} writer {i}"}
        start.wait()
        return httpx.post(replica.url + "/api/feedback", json=body, timeout=60).status_code

    began = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(write, range(n)))
    took = time.monotonic() - began
    assert codes == [200] * n

    for replica in (a, b):
        rows = [json.loads(line) for line in
                httpx.get(replica.url + "/api/feedback/export", timeout=60).text.splitlines()]
        mine = [r for r in rows if (r["comment"] or "").startswith(tag)]
        assert sorted(r["comment"] for r in mine) == sorted(f"{tag} writer {i}" for i in range(n))
        assert len({r["id"] for r in mine}) == n
        assert {r["answer"]["id"] for r in mine} == set(answers)
    print(f"\n[replicas] {n} concurrent feedback writes through A and B in {took:.2f} s, all {n} "
          "exported by both")


# --- (c) a replica killed mid-ingest --------------------------------------------------------------

FACTS = [  # (question, the one sentence of a ledger that answers it)
    ("Where is the spare key of the boiler room?",
     "The spare key of the boiler room hangs in the porter's lodge"),
    ("Where are the forklift batteries charged?",
     "Forklift batteries are charged overnight in loading bay 12"),
    ("Where do visitors sign in?", "Visitors sign the guest book at the north gate"),
    ("When are expense reports due?", "Expense reports are due on the fifth working day"),
]


def ledger(k: int, paragraphs: int = 12) -> str:
    """A file of several chunks: its fact first, then filler of its own."""
    lines = [f"# Ledger {k}\n", FACTS[k][1] + ".\n"]
    lines += [f"Entry {k}-{j}: " + " ".join(f"item{k}x{j}x{w} counted {w * j + k} units"
                                              for w in range(16)) + ".\n"
              for j in range(paragraphs)]
    return "\n".join(lines)


def file_states(engine: sa.Engine, collection: str) -> dict[str, tuple[str, int, int]]:
    """file name → (state, chunks the manifest records, chunk rows present)."""
    query = sa.text(
        "SELECT f.path, f.state, f.chunks, (SELECT count(*) FROM chunks c WHERE c.collection = "
        "f.collection AND c.path = f.path) FROM files f WHERE f.collection = :c")
    with engine.connect() as conn:
        return {Path(r[0]).name: (r[1], r[2], r[3]) for r in conn.execute(query, {"c": collection})}


def swapping_chunks(engine: sa.Engine) -> bool:
    """A server's transaction that swaps a file's chunk rows is waiting for the table lock."""
    with engine.connect() as conn:
        return bool(conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
            "wait_event_type = 'Lock' AND query ILIKE 'DELETE FROM chunks%'")).scalar())


def test_replica_killed_mid_ingest_leaves_nothing_half_written(cluster: Cluster):
    from core.settings import Settings
    from localcat.container import Container

    a, b = cluster.a, cluster.b
    files = {f"ledger{k}.txt": ledger(k) for k in range(len(FACTS))}
    questions = [q for q, _ in FACTS]
    engine = cluster.engine()
    shared = Container(Settings(database={"url": cluster.database}, chroma={"url": cluster.chroma}))
    failed: list[BaseException] = []

    def send():
        try:
            a.upload("bulk", files)
        except (httpx.HTTPError, AssertionError) as exc:  # the connection dies with A
            failed.append(exc)

    sender = threading.Thread(target=send)
    try:
        # Writers of chunk rows wait while the test holds this lock (readers do not): A gets as far
        # as it can, files marked pending and their vectors in Chroma, and stops inside the
        # transaction that swaps the chunk rows in. There it is killed: the worst moment.
        with engine.connect() as hold, hold.begin():
            hold.exec_driver_sql("LOCK TABLE chunks IN SHARE MODE")
            sender.start()
            until(lambda: swapping_chunks(engine), timeout=120, every=0.05)
            written = shared.vectors.ids("bulk")
            assert written and not shared.store.chunk_ids("bulk")  # half-written, as can be
            for q in questions:  # B meanwhile: nothing of the unfinished files
                assert not set(sources(b.ask(q, "bulk"))) & set(files)
            a.kill()
        sender.join(timeout=30)
        assert failed, "the upload finished although A was killed"

        states = file_states(engine, "bulk")
        assert states and all(state == "pending" and rows == 0 for state, _, rows in states.values())
        for q in questions:
            assert not set(sources(b.ask(q, "bulk"))) & set(files)

        # A starts again: its upload journal finishes the upload; the pending files are redone.
        restarted = time.monotonic()
        a.start().wait()

        def all_done():
            now = file_states(engine, "bulk")
            return len(now) == len(files) and all(s == "done" for s, _, _ in now.values()) and now

        states, _ = until(all_done, timeout=120, every=0.2)
        finished = time.monotonic() - restarted
        assert all(rows == recorded > 0 for _, recorded, rows in states.values()), states
        # The vectors written before the kill were replaced: Chroma holds exactly the chunks.
        assert shared.vectors.ids("bulk") == shared.store.chunk_ids("bulk")
        uploads = Path(cluster.env["LOCALCAT_SERVER__UPLOADS_DIR"])
        # The journal entry goes once the resumed upload returns, just after its files are done.
        until(lambda: not list((uploads / ".unfinished").glob("*.json")), timeout=30)
        for k, q in enumerate(questions):
            resp = b.ask(q, "bulk")
            assert sources(resp)[0] == f"ledger{k}.txt"
            assert FACTS[k][1] in resp.choices[0].message.content
        # Sending the upload again changes nothing: every file is known by its content.
        assert a.upload("bulk", files)["summary"]["skipped"] == len(files)
    finally:
        shared.store.close()
        engine.dispose()
    print(f"\n[replicas] A killed with {len(written)} vectors in Chroma and no chunk row; "
          f"restarted, it finished the upload in {finished:.1f} s")


# --- (d) a model version switched on one replica --------------------------------------------------

def test_model_version_switched_anywhere_is_served_by_both(cluster: Cluster, tmp_path: Path):
    from core.db import Database
    from finetune.registry import ModelRegistry
    from tests.unit.test_finetune_registry import base_file, base_info, export_dir

    a, b = cluster.a, cluster.b
    a.upload("models", {"canteen.md": OTHER})
    cluster.ollama.models.append(TUNED_MODEL)
    # A version as `localcat finetune register` leaves it, with tiny stand-in files: registered in
    # the shared registry and in Ollama (so no replica needs the adapter file).
    base = base_file(tmp_path / "base.gguf")
    out = export_dir(tmp_path / "run-1", base)
    from core.gguf import file_sha256

    registry = ModelRegistry(a.data_dir / "models", Database(cluster.database))
    try:
        version = registry.add(run="run-1", base=base_info(base), trainer="unsloth",
                               export_dir=out, dataset={}, metrics={}, status="forced",
                               adapter_sha256=file_sha256(out / "adapter.gguf"))
        registry.set_ollama(version.name, TUNED_MODEL, cluster.ollama.url)
    finally:
        registry.close()

    def model_b_asks_for() -> str:
        b.ask("When does the canteen close on Fridays?", "models")
        return last_chat_model(cluster.ollama)

    assert model_b_asks_for() == BASE_MODEL
    r = httpx.post(a.url + "/api/models/use", json={"name": version.name}, timeout=30)
    assert r.status_code == 200 and r.json() == {"serving": version.name}, r.text
    _, switched = until(lambda: model_b_asks_for() == TUNED_MODEL, timeout=10, every=0.2)
    assert TUNED_MODEL in json.dumps(httpx.get(b.url + "/health").json()["model"])
    # And back with `localcat models rollback` on B's machine; A follows.
    done = cluster.localcat("models", "rollback", data_dir=b.data_dir)
    assert done.returncode == 0, done.stderr

    def model_a_asks_for() -> str:
        a.ask("When does the canteen close on Fridays?", "models")
        return last_chat_model(cluster.ollama)

    _, back = until(lambda: model_a_asks_for() == BASE_MODEL, timeout=10, every=0.2)
    print(f"\n[replicas] B served the version activated through A after {switched:.2f} s; "
          f"A followed the rollback after {back:.2f} s (models.poll_s = 2)")

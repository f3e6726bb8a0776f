"""Chat throughput with one vs two `localcat serve` replicas on one PostgreSQL and one `chroma run`.

    .venv/bin/python bench/replicas.py [--clients 4 16] [--requests 64] [--token-ms 20] [--rounds 2]

Both replicas run for the whole benchmark, started as a user would (`localcat serve --port N`,
LOCALCAT_DATABASE__URL, LOCALCAT_CHROMA__URL, runtime ollama), each with its own data dir; samples/
is ingested once into the shared stores. The model is a fake Ollama (tests/fixtures/fake_ollama.py)
that streams a fixed 20-word answer at --token-ms per word and serves any number of chats at once,
so both arms have the same model and it is not the bottleneck. Arm "one" sends every chat to
replica A; arm "two" spreads the clients over A and B (client i → replica i mod 2, a load
balancer's round robin). Arms alternate (one, two, one, two, …) against the machine's noise.
Each chat is a non-streaming POST /v1/chat/completions (retrieval, prompt, the model's stream,
citation checks, the answer recorded in the shared feedback store); latency is the whole request.
CPU per chat is what the replica processes used (user + system), divided by the chats they served.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import REPO, append, p50, pct

from tests.fixtures.fake_ollama import FakeOllama
from tests.fixtures.servers import chroma_server, free_port, postgres_server

LOCALCAT = Path(sys.executable).parent / "localcat"
ANSWER = ("Employees get 27 vacation days per year and unused days carry over until March 31 of "
          "the next year [1].")  # 20 words
QUESTIONS = ["How many vacation days do employees get per year?", "What is the per-diem for travel?",
             "Who pays for health insurance?", "How do I reset my password?",
             "When are laptops replaced?", "How do I report sick leave?"]


def start(port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen([str(LOCALCAT), "serve", "--port", str(port), "--no-ui"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{url} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system, all threads) the processes have used so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def load(urls: list[str], clients: int, requests: int) -> dict:
    """``clients`` concurrent clients, client i on urls[i % len(urls)], ``requests`` chats in all."""
    results: list[tuple[float, str | None]] = []
    counter = iter(range(requests))

    async def client(i: int, http: httpx.AsyncClient) -> None:
        url = urls[i % len(urls)]
        for n in counter:
            body = {"model": "localcat", "collection": "handbook",
                    "messages": [{"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]}]}
            t0 = time.perf_counter()
            try:
                r = await http.post(url + "/v1/chat/completions", json=body)
                error = None if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:120]}"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            results.append((time.perf_counter() - t0, error))

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients + 4)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - t0
    ok = [t * 1000 for t, e in results if e is None]
    return {"ms": ok, "errors": [e for _, e in results if e is not None], "rps": len(ok) / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--requests", type=int, default=64, help="chats per arm, round and level")
    ap.add_argument("--token-ms", type=float, default=20, help="the fake model's time per word")
    ap.add_argument("--rounds", type=int, default=2, help="times each arm runs per level")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="localcat-bench-replicas-"))
    os.chmod(root, 0o755)  # PostgreSQL runs as `postgres` when this runs as root
    procs: list[subprocess.Popen] = []
    try:
        with postgres_server(root / "pg") as database, chroma_server(root / "chroma") as chroma, \
                FakeOllama(reply=ANSWER, token_delay_s=args.token_ms / 1000) as ollama:
            env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALCAT_")}
            env.update(LOCALCAT_DATABASE__URL=database, LOCALCAT_CHROMA__URL=chroma,
                       LOCALCAT_LLM__RUNTIME="ollama", OLLAMA_HOST=ollama.url,
                       LOCALCAT_CONFIG=str(root / "none.toml"))
            subprocess.run([str(LOCALCAT), "ingest", str(REPO / "samples"), "-c", "handbook", "-q"],
                           env={**env, "LOCALCAT_DATA_DIR": str(root / "ingest")}, check=True,
                           capture_output=True)
            urls = []
            for name in ("a", "b"):
                port, log = free_port(), root / f"{name}.log"
                procs.append(start(port, {**env, "LOCALCAT_DATA_DIR": str(root / name)}, log))
                urls.append(f"http://127.0.0.1:{port}")
            for url, proc, name in zip(urls, procs, "ab", strict=True):
                wait(url, proc, root / f"{name}.log")
            asyncio.run(load(urls, 2, 8))  # warm-up: each loads its embedder, opens its stores
            results: dict[tuple[int, str], list[dict]] = {}
            for clients in args.clients:
                for _ in range(args.rounds):
                    for arm, targets in (("one", urls[:1]), ("two", urls)):
                        used = cpu_s([p.pid for p in procs])
                        run = asyncio.run(load(targets, clients, args.requests))
                        run["cpu_ms"] = (cpu_s([p.pid for p in procs]) - used) * 1000 / max(
                            1, len(run["ms"]))
                        results.setdefault((clients, arm), []).append(run)
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(root, ignore_errors=True)

    rows = []
    for clients in args.clients:
        rps = {}
        for arm in ("one", "two"):
            runs = results[(clients, arm)]
            ms = [t for r in runs for t in r["ms"]]
            errors = sum(len(r["errors"]) for r in runs)
            rps[arm] = sum(r["rps"] for r in runs) / len(runs)
            each = " / ".join(f"{r['rps']:.1f}" for r in runs)
            cpu = sum(r["cpu_ms"] for r in runs) / len(runs)
            rows.append(f"| {clients} | {arm} | {rps[arm]:.1f} ({each}) | {p50(ms):.0f} | "
                        f"{pct(ms, 95):.0f} | {cpu:.0f} | {errors} |")
        rows[-1] += f" {rps['two'] / rps['one']:.2f}× |"
        rows[-2] += " |"
    errors = sorted({e for rs in results.values() for r in rs for e in r["errors"]})
    model_s = 20 * args.token_ms / 1000
    body = "\n".join([
        f"{args.requests} non-streaming chats per arm and round, {args.rounds} rounds per level, "
        f"arms alternated; samples/ in one collection; fake Ollama streaming a 20-word answer at "
        f"{args.token_ms:.0f} ms per word ({model_s:.1f} s of model time per chat, any number at "
        "once); int8 MiniLM embedder; one PostgreSQL 15 and one `chroma run` shared; the clients, "
        "both replicas, PostgreSQL, Chroma and the fake model all on this machine.",
        "",
        "| clients | replicas | chats/s (each round) | p50 ms | p95 ms | replica CPU ms per chat "
        "| errors | two vs one |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        *(["", f"Errors seen: {errors}"] if errors else []),
    ])
    append("Chat throughput, one vs two replicas on one PostgreSQL + `chroma run` "
           "(bench/replicas.py, issue 13)", body, write=not args.no_write)


if __name__ == "__main__":
    main()

"""Server under concurrent streaming chats (latency, errors) and its idle memory, vs bare FastAPI.

    .venv/bin/python bench/server.py [--concurrency 1 4 16] [--requests 48] [--ui]

Ours is `create_app` with the real retriever (MiniLM query embedding, Chroma, BM25 over the
samples/ folder) and a chat model that answers instantly, so the figures are the server's and
retrieval's, not a model's. Raw is a bare FastAPI + uvicorn app streaming the same SSE chunks.
Each runs in its own process, one after the other; the clients (httpx, asyncio) live in this one.
Time to first byte is the first `data:` event (ours: the one with citations, after retrieval).
Idle memory is the server's RSS once ready, and again after the load (MiniLM and torch loaded).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import REPO, append, p50, pct, rss_mib

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, env: dict, ui: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, str(HERE / "_server_app.py"), kind, str(port)] + (["--ui"] if ui else [])
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"{kind} server did not start")
        time.sleep(0.2)


async def one_chat(client: httpx.AsyncClient, url: str, question: str) -> tuple[float, float, str | None]:
    body = {"model": "localcat", "stream": True, "messages": [{"role": "user", "content": question}]}
    t0 = time.perf_counter()
    first = None
    done = False
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return 0.0, 0.0, f"HTTP {resp.status_code}"
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                if first is None:
                    first = time.perf_counter() - t0
                if '"error"' in line:
                    return first, time.perf_counter() - t0, line[:200]
                if line.strip() == "data: [DONE]":
                    done = True
    except httpx.HTTPError as exc:
        return 0.0, 0.0, type(exc).__name__
    total = time.perf_counter() - t0
    return first or total, total, None if done else "stream ended without [DONE]"


QUESTIONS = ["How many vacation days do employees get per year?", "What is the per-diem for travel?",
             "Who pays for health insurance?", "How do I reset my password?",
             "When are laptops replaced?", "How do I report sick leave?"]


async def load(url: str, concurrency: int, requests: int) -> dict:
    results: list[tuple[float, float, str | None]] = []
    counter = iter(range(requests))

    async def worker(client):
        for i in counter:
            results.append(await one_chat(client, url, QUESTIONS[i % len(QUESTIONS)]))

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ok = [r for r in results if r[2] is None]
    errors = [r[2] for r in results if r[2] is not None]
    return {"ttfb": [r[0] * 1000 for r in ok], "total": [r[1] * 1000 for r in ok],
            "errors": errors, "rps": len(ok) / wall}


def run_server(kind: str, env: dict, levels: list[int], requests: int, ui: bool) -> dict:
    proc, url = start(kind, env, ui)
    try:
        time.sleep(1.0)
        idle_start = rss_mib(proc.pid)
        asyncio.run(load(url, 1, 4))  # warm-up: loads MiniLM, opens the stores
        out = {"idle_start": idle_start, "levels": {}}
        for c in levels:
            out["levels"][c] = asyncio.run(load(url, c, requests))
        time.sleep(1.0)
        out["idle_after"] = rss_mib(proc.pid)
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=48, help="chats per concurrency level")
    ap.add_argument("--ui", action="store_true", help="mount the Gradio page in ours (idle memory)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    data = Path(tempfile.mkdtemp(prefix="localcat-bench-server-"))
    env = {**os.environ, "LOCALCAT_DATA_DIR": str(data), "LOCALCAT_LLM__RUNTIME": "embedded",
           "LOCALCAT_CONFIG": str(data / "none.toml")}
    env = {k: v for k, v in env.items() if not k.startswith("LOCALCAT_SERVER__")}
    subprocess.run([sys.executable, "-m", "localcat", "ingest", str(REPO / "samples"), "-q"],
                   env=env, cwd=REPO, check=True, capture_output=True)

    results = {kind: run_server(kind, env, args.concurrency, args.requests, args.ui and kind == "ours")
               for kind in ("ours", "raw")}
    rows = []
    for c in args.concurrency:
        o, r = results["ours"]["levels"][c], results["raw"]["levels"][c]
        rows.append(
            f"| {c} | {p50(o['ttfb']):.0f} / {pct(o['ttfb'], 95):.0f} | {p50(o['total']):.0f} / "
            f"{pct(o['total'], 95):.0f} | {o['rps']:.1f} | {len(o['errors'])} | "
            f"{p50(r['ttfb']):.1f} / {pct(r['ttfb'], 95):.1f} | {p50(r['total']):.1f} / "
            f"{pct(r['total'], 95):.1f} | {r['rps']:.0f} | {len(r['errors'])} |")
    errors = sorted({e for k in results for lv in results[k]["levels"].values() for e in lv["errors"]})
    o, r = results["ours"], results["raw"]
    body = "\n".join([
        f"{args.requests} streaming chats per level over the samples/ collection; instant fake model"
        f"{'; Gradio page mounted' if args.ui else '; no Gradio page (`--no-ui`)'}.",
        "",
        "| clients | ours TTFB p50 / p95 ms | ours total p50 / p95 ms | ours chats/s | ours errors "
        "| raw TTFB p50 / p95 ms | raw total p50 / p95 ms | raw chats/s | raw errors |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Idle RSS: ours {o['idle_start']:.0f} MiB when ready, {o['idle_after']:.0f} MiB after the "
        f"load (MiniLM + torch loaded); raw FastAPI {r['idle_start']:.0f} / {r['idle_after']:.0f} MiB.",
        *([f"Errors seen: {errors}"] if errors else []),
    ])
    append("Server: concurrent streaming chats and idle memory (bench/server.py)", body,
           write=not args.no_write)
    import shutil

    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()

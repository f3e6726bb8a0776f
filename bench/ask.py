"""`localcat ask` latency on the embedded SmolLM2: ours (retrieve + prompt + stream) vs raw
llama.cpp answering the identical prompt, plus the cold CLI wall time a user sees.

    .venv/bin/python bench/ask.py [--questions 5] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, append, p50

QUESTIONS = [
    "How many vacation days do employees get per year?",
    "What is the per diem in Europe?",
    "What is the pension match?",
    "Who is on call and how much is the allowance?",
    "Where do I reset my password?",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="lc-bench-ask-"))
    os.environ.update(LOCALCAT_DATA_DIR=str(data), LOCALCAT_LLM__RUNTIME="embedded",
                      LOCALCAT_LLM__TEMPERATURE="0")

    from assistant.pipeline import Done, Sources, Token
    from core.prompt import ANSWER_PROMPT, format_context
    from localcat.container import Container

    c = Container()
    c.indexer.ingest([REPO / "samples"], "default")
    pipeline = c.pipeline()
    pipeline.llm.load()
    c.embeddings.embed_query("warm up")
    llama = pipeline.llm._load()

    rows = []
    for q in QUESTIONS[: args.questions]:
        llama.reset()  # no KV-cache reuse between runs: both sides evaluate the prompt in full
        t0 = time.perf_counter()
        first = retrieved = None
        tokens = 0
        docs = []
        for event in pipeline.stream(q):
            now = time.perf_counter()
            if isinstance(event, Sources):
                retrieved = now
            elif isinstance(event, Token):
                first = first or now
                tokens += 1
            elif isinstance(event, Done):
                docs = event.answer.citations
        ours_total = time.perf_counter() - t0

        # Raw: the same messages straight into llama.cpp.
        chunks = pipeline.retriever.invoke(q)
        msgs = ANSWER_PROMPT.invoke({"context": format_context(chunks), "history": [],
                                     "question": q}).to_messages()
        raw_msgs = [{"role": {"human": "user", "ai": "assistant"}.get(m.type, m.type),
                     "content": m.content} for m in msgs]
        llama.reset()
        t1 = time.perf_counter()
        raw_first = None
        raw_tokens = 0
        for part in llama.create_chat_completion(raw_msgs, stream=True, temperature=0,
                                                 max_tokens=pipeline.llm.max_tokens, seed=0):
            if part["choices"][0].get("delta", {}).get("content"):
                raw_first = raw_first or time.perf_counter()
                raw_tokens += 1
        raw_total = time.perf_counter() - t1
        rows.append(dict(retrieve=retrieved - t0, first=(first or time.perf_counter()) - t0,
                         total=ours_total, tokens=tokens, raw_first=(raw_first or t1) - t1,
                         raw_total=raw_total, raw_tokens=raw_tokens, cited=len(docs)))

    t = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "localcat", "ask", QUESTIONS[0]],
                         capture_output=True, text=True, env=os.environ, timeout=600)
    cli_wall = time.perf_counter() - t
    assert cli.returncode == 0, cli.stderr

    def col(key):
        return [r[key] for r in rows]

    body = f"""{len(rows)} questions over samples/ (k={c.settings.retrieval.k}), SmolLM2-135M-Instruct Q4_1,
llama.cpp n_threads={c.settings.llm.threads}, temperature 0, max_tokens {pipeline.llm.max_tokens}.

| measure (p50 over questions) | ours | raw llama.cpp, same prompt | ratio |
|---|---|---|---|
| retrieval (embed query + kNN + BM25 + fuse) | {p50(col('retrieve'))*1000:.0f} ms | – | – |
| time to first token | {p50(col('first'))*1000:.0f} ms | {p50(col('raw_first'))*1000:.0f} ms | {p50(col('first'))/p50(col('raw_first')):.2f}× |
| whole answer | {p50(col('total')):.2f} s | {p50(col('raw_total')):.2f} s | {p50(col('total'))/p50(col('raw_total')):.2f}× |
| tokens/s | {p50([r['tokens']/r['total'] for r in rows]):.1f} | {p50([r['raw_tokens']/r['raw_total'] for r in rows]):.1f} | |

Cold `localcat ask` (new process: imports, model loads, retrieval, answer): {cli_wall:.1f} s wall.
"""
    append("Ask latency, embedded SmolLM2 (bench/ask.py)", body, write=not args.no_write)


if __name__ == "__main__":
    main()

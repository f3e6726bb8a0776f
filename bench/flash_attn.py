"""Time to first token with llama.cpp's flash attention off and on, per catalog model.

    .venv/bin/python bench/flash_attn.py RECORDS.jsonl [--model qwen2.5-coder-0.5b ...] [--n 12]

RECORDS is what `localcat eval --answers … --records` writes: each answer's question and the
chunks shown with it, so the prompts have the pipeline's size. Both settings are loaded at once
and run alternately per prompt (the machine is noisy); 64 tokens, greedy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed(llm, messages: list[dict]) -> tuple[float, float, str]:
    llm.reset()
    start, first, text = time.perf_counter(), None, ""
    for chunk in llm.create_chat_completion(messages=messages, max_tokens=64, temperature=0,
                                            stream=True):
        if piece := chunk["choices"][0]["delta"].get("content"):
            first, text = first or time.perf_counter(), text + piece
    return (first or time.perf_counter()) - start, time.perf_counter() - start, text


def main() -> None:
    import llama_cpp

    from core.catalog import CATALOG
    from core.prompt import SYSTEMS

    ap = argparse.ArgumentParser()
    ap.add_argument("records", type=Path)
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--models-dir", type=Path,
                    default=Path.home() / ".local/share/localcat/models/catalog")
    args = ap.parse_args()
    records = [json.loads(line) for line in args.records.open()][: args.n]
    for name in args.model or ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]:
        path = str(args.models_dir / CATALOG[name].file)
        llms = {fa: llama_cpp.Llama(model_path=path, n_ctx=4096, n_threads=2, n_threads_batch=2,
                                    flash_attn=fa, seed=0, verbose=False) for fa in (False, True)}
        first: dict[bool, list[float]] = {False: [], True: []}
        whole: dict[bool, list[float]] = {False: [], True: []}
        same = 0
        for i, r in enumerate(records):
            context = "\n\n".join(f"[{s['n']}] ({s['doc']})\n{s['text']}" for s in r["shown"])
            messages = [{"role": "system", "content": SYSTEMS["rag-v7"]},
                        {"role": "user", "content": f"<reference_material>\n{context}\n"
                                                    f"</reference_material>\n\nQuestion: {r['question']}"}]
            texts = {}
            for fa in (False, True) if i % 2 == 0 else (True, False):
                t_first, t_whole, texts[fa] = timed(llms[fa], messages)
                first[fa].append(t_first)
                whole[fa].append(t_whole)
            same += texts[False] == texts[True]
        ratio = statistics.median(b / a for a, b in zip(first[False], first[True], strict=True))
        ratio_whole = statistics.median(b / a for a, b in zip(whole[False], whole[True], strict=True))
        off, on = statistics.median(first[False]), statistics.median(first[True])
        print(f"| {name} | {off:.2f} → {on:.2f} s | {ratio:.3f} | {ratio_whole:.3f} | {same} of {len(records)} |", flush=True)
        del llms


if __name__ == "__main__":
    main()

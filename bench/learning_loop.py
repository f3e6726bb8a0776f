"""The learning loop as users run it, through the HTTP API: questions to `localcat serve`, ratings
and corrections to /api/feedback, `localcat finetune retrieval` from the command line while the
server keeps serving, and held-out figures before and after, at 25, 50 and 100 feedback rows.

    .venv/bin/python bench/learning_loop.py [--rows 25 50 100] [--model fake|embedded]
        [--answers] [--distractors 100] [--write]

The Python FAQ set's questions split with the learner's own rule (finetune.dataset.split_of):
held-out questions are rated too (the gate needs them) but never train. Measured on them:
- retrieval: document nDCG@10 of the served retriever (dense + BM25, no relevance bar), r0 (as
  ingested) against the version learned at each step (learned with --force so every step is
  measured; the gate's own verdict is reported beside it; r0 serves again before the next step);
- answers (``--answers``, the embedded model; minutes): key-fact recall of the API's answers
  to the held-out questions, before and after. The server runs with reviewed answers off, or a
  held-out question's own correction would answer it: that is measured in bench/reviewed_answers.py.

``--model fake`` answers every chat at once from a protocol-level fake Ollama: the loop's
mechanics and the retrieval figures in CI-size time (retrieval learns from the corrections, not
from the answers' text).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import append

LOCALCAT = Path(sys.executable).parent / "localcat"


class Server:
    """`localcat serve` in a subprocess on the bench's data dir."""

    def __init__(self, env: dict[str, str]):
        from tests.fixtures.servers import free_port, wait_http

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(LOCALCAT), "serve", "--port", str(self.port), "--no-ui"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_http(self.url + "/health", timeout=180)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def chat(url: str, collection: str, question: str) -> dict:
    import httpx

    r = httpx.post(url + "/v1/chat/completions", timeout=300, json={
        "model": "localcat", "collection": collection,
        "messages": [{"role": "user", "content": question}]})
    r.raise_for_status()
    return r.json()


def give_feedback(url: str, collection: str, rows: list[tuple[str, str]]) -> None:
    """Ask each question; a user corrects every answer with the reference (thumbs down)."""
    import httpx

    for question, reference in rows:
        answer_id = chat(url, collection, question)["localcat"]["answer_id"]
        r = httpx.post(url + "/api/feedback", timeout=60, json={
            "answer_id": answer_id, "rating": "down", "correction": reference, "user": "bench"})
        r.raise_for_status()


def held_out_answers(url: str, collection: str, rows: list[tuple[str, str]]) -> dict:
    from core.answer_metrics import key_fact_recall

    recalls, seconds = [], []
    for question, reference in rows:
        t = time.perf_counter()
        content = chat(url, collection, question)["choices"][0]["message"]["content"]
        seconds.append(time.perf_counter() - t)
        recalls.append(key_fact_recall(content, reference))
    return {"recall": sum(recalls) / len(recalls), "s": sum(seconds) / len(seconds)}


def cli(env: dict[str, str], *args: str, as_json: bool = True) -> dict | None:
    done = subprocess.run([str(LOCALCAT), *args, *(["--json"] if as_json else [])], env=env,
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"localcat {' '.join(args)} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout) if as_json else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", type=Path, default=Path.home() / ".local/share/localcat/eval/python-faq")
    ap.add_argument("--rows", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--model", choices=["fake", "embedded"], default="fake")
    ap.add_argument("--answers", action="store_true", help="Held-out answer quality (embedded model).")
    ap.add_argument("--distractors", type=int, default=100,
                    help="Corpus documents no question needs, kept (sorted by id); -1: all.")
    ap.add_argument("--test-fraction", type=float, default=0.4)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/localcat-bench-learning-loop"))
    ap.add_argument("--write", action="store_true", help="Append the table to BENCHMARKS.md.")
    args = ap.parse_args()
    if args.answers and args.model == "fake":
        ap.error("--answers needs --model embedded (the fake model's answers mean nothing)")

    from retrieval_learning import faq_subset, held_out_ndcg

    from core.settings import Settings
    from finetune.dataset import split_of
    from localcat.evaluation.runner import prepare
    from tests.fixtures.fake_ollama import FakeOllama

    data, references = faq_subset(args.set, args.distractors)
    keep = data.corpus

    shutil.rmtree(args.work_dir, ignore_errors=True)
    ft = {"test_fraction": args.test_fraction, "val_fraction": 0}
    started = time.perf_counter()
    prepared = prepare(data, args.work_dir, Settings(data_dir=args.work_dir / "unused",
                                                     finetune=ft), quiet=True)
    c, collection = prepared.container, prepared.collection
    asked = [(q, data.queries[q]) for q in sorted(data.queries) if q in references]
    test = [(q, t) for q, t in asked if split_of(t, c.settings.finetune) == "test"]
    train = [(q, t) for q, t in asked if split_of(t, c.settings.finetune) != "test"]
    print(f"{len(keep)} documents ({prepared.chunks} chunks); {len(train)} questions can train, "
          f"{len(test)} held out", file=sys.stderr)

    env = {**os.environ, "LOCALCAT_DATA_DIR": str(c.settings.data_dir),
           "LOCALCAT_CHROMA__COLLECTION": collection,
           "LOCALCAT_FINETUNE__TEST_FRACTION": str(args.test_fraction),
           "LOCALCAT_FINETUNE__VAL_FRACTION": "0",
           "LOCALCAT_RETRIEVAL__REVIEWED": "false", "HF_HUB_OFFLINE": "1"}
    fake = None
    if args.model == "fake":
        fake = FakeOllama(reply="An answer [1].").__enter__()
        env.update(LOCALCAT_LLM__RUNTIME="ollama", OLLAMA_HOST=fake.url,
                   LOCALCAT_LLM__OLLAMA_MODEL="llama3.2")
    server = Server(env)
    rows_out = []
    try:
        base_ndcg = held_out_ndcg(c, collection, 0, test, data.qrels, prepared.chunk_doc)
        base_answers = held_out_answers(server.url, collection, [
            (t, references[q]) for q, t in test]) if args.answers else None
        give_feedback(server.url, collection, [(t, references[q]) for q, t in test])
        done = 0
        for n in args.rows:
            t0 = time.perf_counter()
            give_feedback(server.url, collection, [(t, references[q]) for q, t in train[done:n]])
            asked_s = time.perf_counter() - t0
            done = n
            report = cli(env, "finetune", "retrieval", "-c", collection, "--force", "-q")
            version = c.store.serving(collection).version
            ndcg = held_out_ndcg(c, collection, version, test, data.qrels, prepared.chunk_doc)
            answers = held_out_answers(server.url, collection, [
                (t, references[q]) for q, t in test]) if args.answers else None
            cli(env, "retrieval", "use", "r0", "-c", collection, as_json=False)
            rows_out.append({"rows": min(n, len(train)), "ndcg": ndcg, "answers": answers,
                             "gate": report.get("gate") or report, "asked_s": asked_s})
            print(json.dumps(rows_out[-1], default=str)[:400], file=sys.stderr)
    finally:
        server.close()
        if fake is not None:
            fake.__exit__(None, None, None)

    lines = [f"Python FAQ set, {len(keep)} documents ({prepared.chunks} chunks), {len(test)} "
             f"held-out questions (rated, never trained), MiniLM-L6 r0; model: {args.model}; "
             f"feedback given through /v1/chat/completions and /api/feedback of a running "
             f"`localcat serve`, learning run by `localcat finetune retrieval --force` beside it; "
             f"{time.perf_counter() - started:.0f} s in all.", "",
             "| feedback rows (train) | held-out nDCG@10 r0 → learned | gate's verdict | "
             "held-out answer recall before → after |", "|---|---|---|---|"]
    for r in rows_out:
        g = r["gate"]
        # Learned with --force: `promoted` then says only that it was switched in; the gate's
        # own verdict is promoted-and-not-forced.
        verdict = ("would promote" if g.get("promoted") and not g.get("forced") else "would refuse") + (
            f": {g['gain']:+.3f} [{g['low']:.3f}, {g['high']:.3f}]" if g.get("gain") is not None else "")
        ans = (f"{base_answers['recall']:.3f} → {r['answers']['recall']:.3f}"
               if r["answers"] and base_answers else "not measured")
        lines.append(f"| {r['rows']} | {base_ndcg:.3f} → {r['ndcg']:.3f} "
                     f"({r['ndcg'] - base_ndcg:+.3f}) | {verdict} | {ans} |")
    print("\n".join(lines))
    if args.write:
        append("The learning loop through the HTTP API", "\n".join(lines))


if __name__ == "__main__":
    main()

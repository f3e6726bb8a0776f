"""The learning loop as users run it, through the HTTP API: questions to `localcat serve`, ratings
and corrections to /api/feedback, `localcat finetune retrieval` from the command line while the
server keeps serving, and held-out figures before and after, at 25, 50 and 100 feedback rows.

    .venv/bin/python bench/learning_loop.py [--rows 25 50 100] [--model fake|embedded]
        [--answers] [--generation-steps 20] [--distractors 100] [--write]

The Python FAQ set's questions split with the learner's own rule (finetune.dataset.split_of):
held-out questions are rated too (the gate needs them) but never train. Measured on them:
- retrieval: document nDCG@10 of the served retriever (dense + BM25, no relevance bar), r0 (as
  ingested) against the version learned at each step (learned with --force so every step is
  measured; the gate's own verdict is reported beside it; r0 serves again before the next step);
- answers (``--answers``, the embedded model; minutes): key-fact recall of the API's answers
  to the held-out questions, before and after. The server runs with reviewed answers off, or a
  held-out question's own correction would answer it: that is measured in bench/reviewed_answers.py.
- generation (``--generation-steps N``, with ``--answers``): after the last step, `localcat
  finetune run --only generation --force` trains a LoRA of the served model on all the
  corrections, the gate judges it (its own verdict is reported), the server serves it (r0
  retrieval), and the held-out answers are measured again; then the base model serves again.

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
    for question, reference in rows:
        correct(url, [chat(url, collection, question)["localcat"]["answer_id"]], [reference])


def held_out_answers(url: str, collection: str, rows: list[tuple[str, str]]) -> dict:
    """Each held-out question asked once: per-question key-fact recall and F1, and answer ids."""
    from core.answer_metrics import is_repetitive, key_fact_recall, token_f1

    recalls, f1s, loops, seconds, ids, models = [], [], [], [], [], set()
    for question, reference in rows:
        t = time.perf_counter()
        reply = chat(url, collection, question)
        seconds.append(time.perf_counter() - t)
        content = reply["choices"][0]["message"]["content"]
        ids.append(reply["localcat"]["answer_id"])
        models.add(reply.get("model", "?"))
        recalls.append(key_fact_recall(content, reference))
        f1s.append(token_f1(content, reference))
        loops.append(is_repetitive(content))
    return {"recall": sum(recalls) / len(recalls), "f1": sum(f1s) / len(f1s),
            "loops": sum(loops), "s": sorted(seconds)[len(seconds) // 2],
            "recalls": recalls, "ids": ids, "models": sorted(models)}


def correct(url: str, answer_ids: list[str], references: list[str]) -> None:
    """A user corrects answers already given with the reference (thumbs down)."""
    import httpx

    for answer_id, reference in zip(answer_ids, references, strict=True):
        r = httpx.post(url + "/api/feedback", timeout=60, json={
            "answer_id": answer_id, "rating": "down", "correction": reference, "user": "bench"})
        r.raise_for_status()


def change(after: dict, before: dict) -> str:
    """Held-out recall before → after with the paired bootstrap interval of the change."""
    from core.stats import paired_bootstrap

    i = paired_bootstrap(after["recalls"], before["recalls"])
    return (f"{before['recall']:.3f} → {after['recall']:.3f} ({i.mean:+.3f} [{i.low:.3f}, "
            f"{i.high:.3f}]); F1 {before['f1']:.3f} → {after['f1']:.3f}; looping "
            f"{before['loops']} → {after['loops']}")


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
    ap.add_argument("--generation-steps", type=int, default=0,
                    help="With --answers: also train a LoRA this many steps after the last row "
                    "count and measure the held-out answers it serves (0: skip).")
    ap.add_argument("--generation-only", action="store_true",
                    help="Give the feedback of every row count but learn only the LoRA.")
    ap.add_argument("--test-fraction", type=float, default=0.4)
    ap.add_argument("--base-cache", type=Path,
                    help="A finetune/.bases folder of an earlier run: its converted base model is "
                    "reused (hard links) instead of converting the GGUF again.")
    ap.add_argument("--held-out-limit", type=int, default=0,
                    help="Measure only the first N held-out questions (a quick check; 0: all).")
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
    if args.base_cache and args.base_cache.is_dir():
        shutil.copytree(args.base_cache, c.settings.data_dir / "finetune" / ".bases",
                        copy_function=os.link)
    asked = [(q, data.queries[q]) for q in sorted(data.queries) if q in references]
    test = [(q, t) for q, t in asked if split_of(t, c.settings.finetune) == "test"]
    train = [(q, t) for q, t in asked if split_of(t, c.settings.finetune) != "test"]
    if args.held_out_limit:
        test = test[: args.held_out_limit]
    print(f"{len(keep)} documents ({prepared.chunks} chunks); {len(train)} questions can train, "
          f"{len(test)} held out", file=sys.stderr)

    env = {**os.environ, "LOCALCAT_DATA_DIR": str(c.settings.data_dir),
           "LOCALCAT_CHROMA__COLLECTION": collection,
           "LOCALCAT_FINETUNE__TEST_FRACTION": str(args.test_fraction),
           "LOCALCAT_FINETUNE__VAL_FRACTION": "0",
           "LOCALCAT_RETRIEVAL__REVIEWED": "false", "HF_HUB_OFFLINE": "1"}
    fake = None
    if args.model == "embedded":
        # The catalog models pulled for the user's own data dir, not the bench's scratch one.
        env["LOCALCAT_LLM__MODELS_DIR"] = str(Settings().llm.models_dir)
    if args.model == "fake":
        fake = FakeOllama(reply="An answer [1].").__enter__()
        env.update(LOCALCAT_LLM__RUNTIME="ollama", OLLAMA_HOST=fake.url,
                   LOCALCAT_LLM__OLLAMA_MODEL="llama3.2")
    server = Server(env)
    rows_out, generation = [], None
    held = [(t, references[q]) for q, t in test]
    try:
        base_ndcg = held_out_ndcg(c, collection, 0, test, data.qrels, prepared.chunk_doc)
        if args.answers:
            # The held-out answers before learning are also what the held-out questions' users
            # correct: the gate needs them rated, and asking twice would only cost time.
            base_answers = held_out_answers(server.url, collection, held)
            correct(server.url, base_answers["ids"], [r for _, r in held])
            print(json.dumps({k: v for k, v in base_answers.items() if k not in ("recalls", "ids")}),
                  file=sys.stderr)
        else:
            base_answers = None
            give_feedback(server.url, collection, held)
        done = 0
        for n in args.rows:
            t0 = time.perf_counter()
            give_feedback(server.url, collection, [(t, references[q]) for q, t in train[done:n]])
            asked_s = time.perf_counter() - t0
            done = n
            if args.generation_only:
                continue
            report = cli(env, "finetune", "retrieval", "-c", collection, "--force", "-q")
            version = c.store.serving(collection).version
            ndcg = held_out_ndcg(c, collection, version, test, data.qrels, prepared.chunk_doc)
            # The server follows the switch within retrieval.bm25_sync_s / its version poll.
            time.sleep(3)
            answers = held_out_answers(server.url, collection, held) if args.answers else None
            cli(env, "retrieval", "use", "r0", "-c", collection, as_json=False)
            rows_out.append({"rows": min(n, len(train)), "ndcg": ndcg, "answers": answers,
                             "gate": report.get("gate") or report, "asked_s": asked_s})
            print(json.dumps({k: v for k, v in rows_out[-1].items() if k != "answers"},
                             default=str)[:400], file=sys.stderr)
            if answers:
                print(f"answers after {n} rows: {change(answers, base_answers)}", file=sys.stderr)
        if args.generation_steps and args.answers:
            time.sleep(3)
            t0 = time.perf_counter()
            run = cli(env, "finetune", "run", "--only", "generation", "--force", "--no-ollama",
                      "--steps", str(args.generation_steps), "-q")
            trained_s = time.perf_counter() - t0
            time.sleep(3)  # the server follows the activated version within models.poll_s
            answers = held_out_answers(server.url, collection, held)
            cli(env, "models", "use", "base", as_json=False)
            generation = {"run": run, "answers": answers, "s": trained_s}
            print(f"answers with the LoRA: {change(answers, base_answers)}; served as "
                  f"{answers['models']}", file=sys.stderr)
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
        ans = change(r["answers"], base_answers) if r["answers"] else "not measured"
        lines.append(f"| {r['rows']} | {base_ndcg:.3f} → {r['ndcg']:.3f} "
                     f"({r['ndcg'] - base_ndcg:+.3f}) | {verdict} | {ans} |")
    if generation:
        ev = generation["run"].get("eval") or {}
        lines += ["", f"Generation: `localcat finetune run --only generation --force --steps "
                  f"{args.generation_steps}` on all {done and min(done, len(train))} train "
                  f"corrections, {generation['s']:.0f} s (data set, training, gate, export); the "
                  f"gate: {'would promote' if ev.get('promoted') else 'would refuse'} "
                  f"({ev.get('reason', '?')}). Served (r0 retrieval) as "
                  f"{', '.join(generation['answers']['models'])}: held-out answer recall "
                  f"{change(generation['answers'], base_answers)}."]
    print("\n".join(lines))
    if args.write:
        append("The learning loop through the HTTP API", "\n".join(lines))


if __name__ == "__main__":
    main()

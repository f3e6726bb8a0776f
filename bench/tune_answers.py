"""Tune the answer settings on the dev split of the FAQ answer set; report the choice on held-out.

Each candidate (prompt version, shown chunks k, repeat penalty) answers the same dev questions
with the default model through `localcat eval --answers` (the real pipeline). The candidate with
the highest key-fact recall (F1 breaking ties; at least MARGIN above the current default's and
with no more looping answers) is then run beside the current default on the held-out split,
which nothing here was chosen on.

    .venv/bin/python bench/tune_answers.py [--dev-limit 40] [--only NAME…] [--heldout NAME…] [--write]

Results (and each answer's record) are cached per candidate in --work-dir, so a run resumes and
a table can be re-made; the cache is keyed by the shipped settings too, so a changed default
(retrieval, model, prompt) answers anew.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import append

from core.prompt import PROMPT_VERSION

FAQ = Path.home() / ".local/share/localcat/eval/python-faq"
LOCALCAT = Path(sys.executable).parent / "localcat"

DEFAULT = f"default ({PROMPT_VERSION}, k 3, repeat 1.1)"
CANDIDATES = {
    DEFAULT: {},
    "rag-v2 (the default before rag-v7)": {"LOCALCAT_PIPELINE__PROMPT_VERSION": "rag-v2"},
    "rag-v3 (own wording)": {"LOCALCAT_PIPELINE__PROMPT_VERSION": "rag-v3"},
    "rag-v4 (quote)": {"LOCALCAT_PIPELINE__PROMPT_VERSION": "rag-v4"},
    "rag-v5 (one source, full answer)": {"LOCALCAT_PIPELINE__PROMPT_VERSION": "rag-v5"},
    "rag-v6 (quote, then explain)": {"LOCALCAT_PIPELINE__PROMPT_VERSION": "rag-v6"},
    "rag-v8 (this exact question; no source answers)": {"LOCALCAT_PIPELINE__PROMPT_VERSION": "rag-v8"},
    "rag-v9 (this exact question)": {"LOCALCAT_PIPELINE__PROMPT_VERSION": "rag-v9"},
    "repeat 1.2": {"LOCALCAT_LLM__REPEAT_PENALTY": "1.2"},
    "rag-v5, repeat 1.2": {"LOCALCAT_PIPELINE__PROMPT_VERSION": "rag-v5",
                           "LOCALCAT_LLM__REPEAT_PENALTY": "1.2"},
    "k 4": {"LOCALCAT_RETRIEVAL__K": "4"},
    "k 5": {"LOCALCAT_RETRIEVAL__K": "5"},
    "repeat 1.0": {"LOCALCAT_LLM__REPEAT_PENALTY": "1.0"},
    "BM25 1.0 for prose questions (before)": {"LOCALCAT_RETRIEVAL__PROSE_BM25_WEIGHT": "1.0"},
}
# A candidate replaces the default only by this much more recall: 40 questions' noise is larger
# than a few thousandths, and every change of default re-words every answer.
MARGIN = 0.02
KEYS = ("key_fact_recall", "token_f1", "source_shown", "citation_correct",
        "grounded_citation_correct", "repetition", "not_found", "refusal", "latency_p50_s")


def shipped() -> str:
    """A short hash of the settings an answer depends on, as shipped (and as this environment
    sets them): what a cached result was measured under."""
    from core.settings import Settings

    s = Settings()
    parts = {k: getattr(s, k).model_dump(mode="json")
             for k in ("chunking", "embedding", "retrieval", "llm", "pipeline")}
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:8]


def run(env_over: dict[str, str], split: str, limit: int | None, work: Path) -> dict:
    """One candidate's figures (kept in ``work``: an interrupted tuning resumes)."""
    key = "-".join(f"{k}={v}" for k, v in sorted(env_over.items())) or f"default-{PROMPT_VERSION}"
    cached = work / f"result-{shipped()}-{split}-{limit}-{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    args = [str(LOCALCAT), "eval", str(FAQ), "--answers", str(FAQ / "answers.jsonl"),
            "--split", split, "--work-dir", str(work), "--no-plot", "--json",
            "--records", str(cached.with_suffix(".records.jsonl"))]
    if limit:
        args += ["--limit", str(limit)]
    done = subprocess.run(args, env={**os.environ, **env_over}, capture_output=True, text=True,
                          timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    report = json.loads(done.stdout)
    [model] = report["models"].values()
    result = {k: model["metrics"].get(k) for k in KEYS} | {"questions": report["dataset"]["questions"]}
    cached.write_text(json.dumps(result))
    return result


def fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev-limit", type=int, default=40)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/localcat-bench-tune-answers"))
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME",
                    help="Candidates to run besides the default (names as in CANDIDATES).")
    ap.add_argument("--heldout", nargs="+", default=[], metavar="NAME",
                    help="Candidates also run on held-out (e.g. the previous default, for a "
                         "before/after); never used to choose.")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    dev = {}
    chosen = {n: e for n, e in CANDIDATES.items()
              if args.only is None or n in args.only or n == DEFAULT}
    for name, env in chosen.items():
        dev[name] = run(env, "dev", args.dev_limit, args.work_dir)
        print(name, json.dumps(dev[name]), file=sys.stderr, flush=True)
    base = dev[DEFAULT]
    allowed = {n: m for n, m in dev.items() if (m["repetition"] or 0) <= (base["repetition"] or 0)
               and (m["key_fact_recall"] or 0) >= base["key_fact_recall"] + MARGIN}
    best = max(allowed, default=DEFAULT,
               key=lambda n: (allowed[n]["key_fact_recall"] or 0, allowed[n]["token_f1"] or 0))
    held = {DEFAULT: run({}, "heldout", None, args.work_dir)}
    for name in dict.fromkeys([best, *args.heldout]):
        held[name] = run(CANDIDATES[name], "heldout", None, args.work_dir)

    header = ("| candidate | questions | key-fact recall | F1 | source shown | correct [n] | "
              "grounded with a correct [n] | looping | not found | refused unanswerable | p50 s |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")

    def table(rows: dict) -> str:
        return header + "\n" + "\n".join(
            f"| {n} | {m['questions']} | " + " | ".join(fmt(m.get(k)) for k in KEYS) + " |"
            for n, m in rows.items())

    body = (f"The default model (Qwen2.5-Coder-0.5B Q4_K_M) through the real pipeline. Candidates "
            f"on the first {args.dev_limit} dev questions of the FAQ answer set; the best by "
            f"key-fact recall (at least {MARGIN} above the default's, no more looping) is **{best}**.\n\n"
            f"Dev split (chosen on):\n\n{table(dev)}\n\nHeld-out split (never tuned on):\n\n"
            f"{table(held)}")
    print(body)
    if args.write:
        append("Answer settings tuned on the dev split", body)


if __name__ == "__main__":
    main()

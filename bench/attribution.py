"""Citation attribution re-scored offline on the records of an answer eval (issue 8 item 3).

`localcat eval --answers … --records FILE.jsonl` keeps, per question, the chunks shown and the
model's own text. This marks the same texts up again with the attributor as it is now and, with
--baseline REV, with assistant/citations.py as it was at git revision REV: same answers, old vs new
marks, no model run.

    .venv/bin/python bench/attribution.py /tmp/dev-records.jsonl --baseline 2751a32 [--misses]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import REPO, append, machine

from localcat.evaluation.answering import summarize
from localcat.evaluation.records import AnswerRecord, read_records, rescore, score_record

KEYS = ("grounded_answers", "grounded_citation_correct", "citation_correct", "cited")


def attributor_at(rev: str, embeddings):
    """assistant/citations.py as it was at ``rev``, loaded as its own module."""
    source = subprocess.run(["git", "show", f"{rev}:assistant/citations.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"citations_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.CitationAttributor(embeddings)


def figures(records: list[AnswerRecord]) -> dict:
    rows = [score_record(r) | {"latency_s": 0.0, "ttft_s": None, "tokens": 0, "decode_s": None}
            for r in records]
    m = summarize(rows)
    sentences = [s for r in records for s in r.sentences]
    m["sentences"] = len(sentences)
    m["flagged"] = sum(not s.supported for s in sentences) / len(sentences) if sentences else None
    return {k: m[k] for k in (*KEYS, "sentences", "flagged")}


def misses(records: list[AnswerRecord]) -> None:
    """Grounded answers with no [n] on the reference source, for reading."""
    for r in records:
        row = score_record(r)
        if row["grounded_cites_source"] is not False:
            continue
        print(f"\n=== {r.id} {r.question}")
        for c in r.shown:
            star = "*" if c.doc in r.reference_docs else " "
            print(f"  [{c.n}]{star} {c.doc}: {' '.join(c.text.split())[:160]}")
        print("  raw:", r.raw_answer.replace("\n", " ⏎ ")[:700])
        for s in r.sentences:
            print(f"   - {s.sources} (model {s.model_sources}) {s.score:.2f} "
                  f"{'' if s.supported else 'FLAG '}{s.text[:110]!r}")


def fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("records", type=Path)
    ap.add_argument("--baseline", metavar="REV", help="Also mark up with citations.py at REV.")
    ap.add_argument("--misses", action="store_true", help="Print the grounded answers that miss.")
    ap.add_argument("--as-recorded", action="store_true",
                    help="Also score the marks as the eval recorded them.")
    ap.add_argument("--write", metavar="TITLE", help="Append the table to BENCHMARKS.md.")
    args = ap.parse_args()

    from core.settings import Settings
    from localcat.container import Container

    records = read_records(args.records)
    c = Container(Settings())
    runs: dict[str, list[AnswerRecord]] = {}
    if args.as_recorded:
        runs["as recorded"] = records
    if args.baseline:
        old = attributor_at(args.baseline, c.attributor.embeddings)
        runs[f"attributor at {args.baseline}"] = [rescore(r, old) for r in records]
    runs["attributor now"] = [rescore(r, c.attributor) for r in records]

    lines = ["| attribution | grounded answers | grounded with a correct [n] | [n] on the reference "
             "source | answers with an [n] | sentences | flagged |", "|---|---|---|---|---|---|---|"]
    for name, rs in runs.items():
        f = figures(rs)
        lines.append(f"| {name} | " + " | ".join(fmt(f[k]) for k in (*KEYS, "sentences", "flagged"))
                     + " |")
    table = "\n".join(lines)
    print(f"{args.records} ({len(records)} records)\n{table}")
    if args.misses:
        misses(runs["attributor now"])
    if args.write:
        append(args.write, f"Machine: {machine()}\n\nRecords: `{args.records}`\n\n{table}")


if __name__ == "__main__":
    sys.exit(main())

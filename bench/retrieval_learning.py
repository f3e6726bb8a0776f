"""Held-out nDCG@10 on the Python FAQ set before and after retrieval learns from feedback.

    .venv/bin/python bench/retrieval_learning.py [--rows 25 50 100] [--distractors 100]

Feedback is simulated the way a user gives it: each question is asked through the served
retriever (its top 3 chunks shown) and corrected with the set's reference answer. The questions
split with finetune.dataset.split_of (test share --test-fraction): held-out questions get feedback
too, for the gate, but never train. Rows are added in steps (25, then 25 more, …), always asked
through r0; each step runs `finetune.retrieval.learn` (forced, so every candidate is measured; the
gate's own verdict against r0, on chunk-level nDCG@10 of the feedback, is reported beside it).
The figure is document-level nDCG@10 with the set's qrels on the held-out questions, for r0
(MiniLM as ingested) and each learned version, ranked by the served retriever (dense + BM25,
fused) with no relevance bar.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from _common import REPO  # noqa: F401 - puts the repository on sys.path

from core.prompt import PROMPT_VERSION
from core.schemas import Answer, Citation
from core.settings import Settings
from finetune.dataset import split_of
from finetune.retrieval import learn, unfiltered, use_version
from localcat.evaluation.datasets import BeirSet, load_answers, load_beir
from localcat.evaluation.metrics import doc_ranking, ndcg_at_k
from localcat.evaluation.runner import prepare


def faq_subset(folder: Path, distractors: int) -> tuple[BeirSet, dict[str, str]]:
    """The set with every document a question needs plus ``distractors`` others (sorted by id;
    -1: all), and the reference answer of each question that has one."""
    full = load_beir(folder)
    needed = {d for rels in full.qrels.values() for d in rels}
    others = sorted(set(full.corpus) - needed)
    keep = needed | set(others if distractors < 0 else others[:distractors])
    data = BeirSet({d: full.corpus[d] for d in keep}, full.queries, full.qrels)
    return data, {a.id: a.answer for a in load_answers(folder / "answers.jsonl") if a.answer}


def held_out_ndcg(c, collection: str, version: int, questions, qrels, chunk_doc) -> float:
    retriever = c.retriever(collection, version=version, settings=unfiltered(c.settings.retrieval))
    scores = []
    for qid, text in questions:
        ranked = doc_ranking([d.id for d in retriever.search(text, k=30)], chunk_doc)
        scores.append(ndcg_at_k(ranked, qrels[qid], 10))
    return sum(scores) / len(scores)


def rate(c, collection: str, rows) -> None:
    """Ask each question through the served retriever; correct it with the reference answer."""
    retriever = c.retriever(collection)
    for text, reference in rows:
        docs = retriever.search(text)
        citations = [Citation(n=n, chunk_id=d.id, source=d.metadata["source"], score=0.5,
                              snippet=" ".join(d.page_content.split())[:160])
                     for n, d in enumerate(docs, 1)]
        answer = Answer(question=text, standalone_question=text, collection=collection,
                        answer="…", citations=citations, grounded=bool(docs), model="bench",
                        prompt_version=PROMPT_VERSION)
        c.feedback.record_answer(answer)
        c.feedback.add_feedback(answer.id, None, correction=reference, trusted=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", type=Path,
                    default=Path.home() / ".local/share/localcat/eval/python-faq")
    ap.add_argument("--rows", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--distractors", type=int, default=100,
                    help="Corpus documents no question needs, kept (sorted by id); -1: all.")
    ap.add_argument("--test-fraction", type=float, default=0.4)
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/localcat-bench-retrieval-learning"))
    args = ap.parse_args()

    data, references = faq_subset(args.set, args.distractors)
    keep = data.corpus

    shutil.rmtree(args.work_dir, ignore_errors=True)
    settings = Settings(data_dir=args.work_dir / "unused",
                        finetune={"test_fraction": args.test_fraction, "val_fraction": 0},
                        retrieval_learning={"epochs": args.epochs} if args.epochs else {})
    started = time.perf_counter()
    prepared = prepare(data, args.work_dir, settings, quiet=True)
    c, collection = prepared.container, prepared.collection
    print(f"ingested {len(keep)} documents, {prepared.chunks} chunks in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)

    asked = [(q, data.queries[q]) for q in sorted(data.queries) if q in references]
    test = [(q, t) for q, t in asked if split_of(t, c.settings.finetune) == "test"]
    train = [(q, t) for q, t in asked if split_of(t, c.settings.finetune) != "test"]
    print(f"{len(asked)} questions with a reference: {len(train)} can train, {len(test)} held out",
          file=sys.stderr)
    base = held_out_ndcg(c, collection, 0, test, data.qrels, prepared.chunk_doc)
    rate(c, collection, [(t, references[q]) for q, t in test])
    lines = ["| rows | train pairs | held-out nDCG@10 r0 → rN | gate (vs r0) | train s | "
             "re-embed s |", "|---|---|---|---|---|---|"]
    done = 0
    for n in args.rows:
        rate(c, collection, [(t, references[q]) for q, t in train[done:n]])
        done = n
        report = learn(c, collection, force=True)
        version = c.store.serving(collection).version
        after = held_out_ndcg(c, collection, version, test, data.qrels, prepared.chunk_doc)
        use_version(c, collection, 0)  # r0 serves again: the next gate compares against it
        g = report.gate
        verdict = ("promoted" if not g.forced else "not promoted") + (
            f", {g.gain:+.3f} [{g.low:.3f}, {g.high:.3f}]" if g.gain is not None else "")
        lines.append(f"| {min(n, len(train))} | {report.pairs.training_rows} | {base:.3f} → "
                     f"{after:.3f} ({after - base:+.3f}) | {verdict} | "
                     f"{report.train.seconds:.0f} | {report.embed_seconds:.0f} |")
        print(lines[-1], file=sys.stderr)
    print(f"\nPython FAQ set, {len(keep)} documents ({prepared.chunks} chunks), {len(test)} "
          f"held-out questions, MiniLM-L6 (r0); {time.perf_counter() - started:.0f} s in all\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

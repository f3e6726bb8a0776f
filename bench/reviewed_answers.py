"""Does a correction help the next person at once? Reviewed answers on the Python FAQ.

40 FAQ questions are corrected with their reference answers through the feedback store, as the
API does. Then:
- matching: each question's hand-written paraphrase (bench/reviewed-paraphrases.jsonl) should
  find its own correction; every other question of the answer set (other FAQ questions and
  off-topic ones) should find none. The similarity bar is chosen on the "tune" half of both
  (the highest paraphrase hit rate with no false hit) and reported on the "test" half.
- answers (``--answers``): the test paraphrases asked through the real pipeline on the ingested
  FAQ collection, without and with the reviewed answers: key-fact recall against the reference.

    .venv/bin/python bench/reviewed_answers.py [--answers] [--write]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import zlib
from pathlib import Path

from _common import REPO, append, materialise

PARAPHRASES = REPO / "bench" / "reviewed-paraphrases.jsonl"
FAQ = Path.home() / ".local/share/localcat/eval/python-faq"


def split_of(text: str) -> str:
    return "tune" if zlib.crc32(text.encode()) % 2 == 0 else "test"


def record_corrections(store, pairs, answers_by_question) -> None:
    from core.schemas import Answer

    for i, p in enumerate(pairs):
        q = p["question"]
        store.record_answer(Answer.model_validate({
            "id": f"ans_bench{i:03d}", "question": q, "standalone_question": q, "history": [],
            "collection": "faq", "answer": "(the model's answer)", "citations": [],
            "grounded": True, "model": "bench", "prompt_version": "rag-v2"}))
        # An admin's corrections: served to everyone at once, as the bench measures.
        store.add_feedback(f"ans_bench{i:03d}", "down", correction=answers_by_question[q],
                           user="bench", trusted=True)


def best_matches(matcher, questions, embeddings) -> list[tuple[str | None, float]]:
    """(the corrected question it matched best, cosine) for each question, with no bar."""
    out = []
    for q in questions:
        m = matcher.match("faq", q, embeddings)
        out.append((m.reviewed.question, m.similarity) if m else (None, 0.0))
    return out


FALSE_HIT_COST = 5  # a wrong correction shown first misleads; a missed one only waits for the fine-tune


def choose_bar(pos: list[tuple[bool, float]], neg: list[float]) -> float:
    """The bar with the most right hits less FALSE_HIT_COST × false hits (and wrong hits); of
    equals, the highest."""
    def score(bar: float) -> int:
        hits, wrong, false = rates(pos, neg, bar)
        return hits - FALSE_HIT_COST * (wrong + false)

    candidates = sorted({round(s, 3) for _, s in pos} | {round(s + 0.001, 3) for s in neg})
    return max(candidates, key=lambda b: (score(b), b))


def rates(pos, neg, bar):
    hits = sum(1 for right, s in pos if right and s >= bar)
    wrong = sum(1 for right, s in pos if not right and s >= bar)
    false = sum(1 for s in neg if s >= bar)
    return hits, wrong, false


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answers", action="store_true", help="Also ask the model (minutes).")
    ap.add_argument("--model", default=None, help="Catalog model for --answers (default: the default).")
    ap.add_argument("--write", action="store_true", help="Append the results to BENCHMARKS.md.")
    args = ap.parse_args()

    from assistant.feedback import FeedbackStore
    from assistant.reviewed import ReviewedMatcher
    from core.settings import Settings
    from localcat.container import Container

    pairs = [json.loads(line) for line in PARAPHRASES.open()]
    answers = [json.loads(line) for line in (FAQ / "answers.jsonl").open()]
    reference = {a["question"]: a["answer"] for a in answers}
    corrected = {p["question"] for p in pairs}
    unrelated = [a["question"] for a in answers if a["question"] not in corrected]

    work = Path(tempfile.mkdtemp(prefix="bench-reviewed-"))
    # Models stay where `localcat models pull` put them (they follow data_dir otherwise).
    settings = Settings(data_dir=work / "data", llm={"models_dir": Settings().llm.models_dir})
    c = Container(settings)
    store = FeedbackStore(settings.feedback_db)
    record_corrections(store, pairs, reference)
    embeddings = c.embeddings
    # No bar while measuring: every question's best cosine is kept, then bars are compared.
    matcher = ReviewedMatcher(store, min_similarity=-1.0)

    t = time.perf_counter()
    para = best_matches(matcher, [p["paraphrase"] for p in pairs], embeddings)
    other = best_matches(matcher, unrelated, embeddings)
    per_query_ms = (time.perf_counter() - t) / (len(pairs) + len(unrelated)) * 1000
    same_words = sum(1 for p in pairs if matcher.match("faq", p["question"], embeddings).similarity == 1.0)

    def pos(split):
        return [(got == p["question"], s) for p, (got, s) in zip(pairs, para, strict=True)
                if p["split"] == split]

    def neg(split):
        return [s for q, (_, s) in zip(unrelated, other, strict=True) if split_of(q) == split]

    bar = choose_bar(pos("tune"), neg("tune"))
    results = {"embedder": embeddings.name, "bar": bar, "per_query_ms": round(per_query_ms, 2),
               "exact_questions_found": f"{same_words}/{len(pairs)}"}
    for split in ("tune", "test"):
        hits, wrong, false = rates(pos(split), neg(split), bar)
        results[split] = {"paraphrases": len(pos(split)), "hits": hits, "wrong_hits": wrong,
                          "unrelated": len(neg(split)), "false_hits": false}
    for b in (0.6, 0.65, 0.7, 0.75, 0.8, 0.85):
        hits, wrong, false = rates(pos("test"), neg("test"), b)
        results.setdefault("test_by_bar", {})[b] = {"hits": hits, "wrong": wrong, "false": false}
    print(json.dumps(results, indent=1))

    if args.answers:
        # The unrelated test questions that get someone else's correction at this bar: does it
        # hurt their answers?
        falsely = [q for q, (_, s) in zip(unrelated, other, strict=True)
                   if split_of(q) == "test" and s >= bar and q in reference]
        results["falsely_matched"] = falsely
        results["answers"] = answer_quality(c, settings, pairs, reference, bar, args.model)
        if falsely:
            results["answers_false"] = answer_quality(
                c, settings, [{"question": q, "paraphrase": q, "split": "test"} for q in falsely],
                reference, bar, args.model, ingest=False)
        print(json.dumps(results["answers"], indent=1))
    if args.write:
        write(results)


def answer_quality(c, settings, pairs, reference, bar, model, ingest=True):
    """The test paraphrases through the real pipeline, without and with reviewed answers."""
    from core.answer_metrics import key_fact_recall, token_f1
    from localcat.container import Container

    if ingest:
        docs = materialise(FAQ, settings.data_dir.parent / "faq-docs", 10**6)
        c.indexer.ingest([docs], "faq")
    out = {}
    for arm, on in (("without", False), ("with", True)):
        s = settings.model_copy(deep=True)
        s.retrieval.reviewed = on
        s.retrieval.reviewed_min_similarity = bar
        s.chroma.collection = "faq"
        if model:
            s.llm.model = model
        arm_c = Container(s)
        rows = []
        for p in (p for p in pairs if p["split"] == "test"):
            t = time.perf_counter()
            a = arm_c.pipeline("faq").ask(p["paraphrase"])
            ref = reference[p["question"]]
            rows.append({"recall": key_fact_recall(a.raw_answer or a.answer, ref),
                         "f1": token_f1(a.raw_answer or a.answer, ref),
                         "reviewed_shown": any(ci.reviewed for ci in a.citations),
                         "reviewed_cited": any(ci.reviewed and ci.cited for ci in a.citations),
                         "s": time.perf_counter() - t})
        arm_c.close()
        n = len(rows)
        out[arm] = {k: round(sum(r[k] for r in rows) / n, 3)
                    for k in ("recall", "f1", "reviewed_shown", "reviewed_cited", "s")}
        out[arm]["n"] = n
    return out


def answer_table(a: dict) -> list[str]:
    lines = ["| reviewed answers | recall | F1 | correction shown | correction cited | s/answer |",
             "|---|---|---|---|---|---|"]
    for arm in ("without", "with"):
        x = a[arm]
        lines.append(f"| {arm} | {x['recall']} | {x['f1']} | {x['reviewed_shown']:.0%} | "
                     f"{x['reviewed_cited']:.0%} | {x['s']:.1f} |")
    return lines


def write(r: dict) -> None:
    lines = [
        f"Embedder {r['embedder']}; 40 FAQ questions corrected with their reference answers; "
        f"hand-written paraphrases (bench/reviewed-paraphrases.jsonl) and the answer set's "
        f"{r['tune']['unrelated'] + r['test']['unrelated']} other questions (FAQ and off-topic) "
        f"split in halves. The bar (cosine) is chosen on the tune half: the most paraphrase hits "
        f"less {FALSE_HIT_COST}× the false ones. Matching costs {r['per_query_ms']} ms a question (one query embedding).",
        "",
        "| half | bar | paraphrases matched to their correction | matched to another | unrelated questions given a correction |",
        "|---|---|---|---|---|",
    ]
    for split in ("tune", "test"):
        x = r[split]
        lines.append(f"| {split} | {r['bar']} | {x['hits']}/{x['paraphrases']} | "
                     f"{x['wrong_hits']}/{x['paraphrases']} | {x['false_hits']}/{x['unrelated']} |")
    lines += ["", "Other bars on the test half (paraphrase hits / wrong / false hits): " + "; ".join(
        f"{b}: {v['hits']}/{v['wrong']}/{v['false']}" for b, v in r["test_by_bar"].items()) + "."]
    if "answers" in r:
        lines += ["", "The test paraphrases asked through the pipeline (FAQ collection ingested, "
                  "default model), key-fact recall and F1 against the reference:", "",
                  *answer_table(r["answers"])]
    if "answers_false" in r:
        lines += ["", f"The {r['answers_false']['with']['n']} unrelated test questions that got "
                  "another question's correction at this bar (" + "; ".join(r["falsely_matched"])
                  + "), same measures against their own reference:", "",
                  *answer_table(r["answers_false"])]
    append("Reviewed answers: a correction helps the next person at once", "\n".join(lines))


if __name__ == "__main__":
    main()

"""Metrics: ranking quality (BEIR/pytrec_eval definitions) and answer quality (word overlap).

Answer metrics work on *content words*: lowercase word tokens (``\\w+``, so ``os.path`` is two)
minus a small English stop list, with ``[n]`` citation marks removed first.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

KS = (1, 3, 5, 10)

# --- ranking ------------------------------------------------------------------------------------


def _dcg(gains: Iterable[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int = 10) -> float:
    ideal = _dcg(sorted(rels.values(), reverse=True)[:k])
    return _dcg(rels.get(d, 0) for d in ranked[:k]) / ideal if ideal else 0.0


def recall_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int = 10) -> float:
    relevant = {d for d, g in rels.items() if g > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int = 10) -> float:
    return next((1.0 / r for r, d in enumerate(ranked[:k], 1) if rels.get(d, 0) > 0), 0.0)


def hit_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    return float(any(rels.get(d, 0) > 0 for d in ranked[:k]))


def score_run(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Mean metrics over the queries in qrels; a query missing from the run scores zero."""
    rows = []
    for qid, rels in qrels.items():
        ranked = run.get(qid, [])
        row = {"ndcg@10": ndcg_at_k(ranked, rels), "recall@10": recall_at_k(ranked, rels),
               "mrr@10": mrr_at_k(ranked, rels)}
        row.update({f"hit@{k}": hit_at_k(ranked, rels, k) for k in KS})
        rows.append(row)
    return {m: sum(r[m] for r in rows) / len(rows) for m in rows[0]} if rows else {}


def doc_ranking(chunk_ids: Iterable[str], chunk_doc: Mapping[str, str]) -> list[str]:
    """Documents in the order of their best chunk."""
    return list(dict.fromkeys(chunk_doc[c] for c in chunk_ids if c in chunk_doc))


# --- answers ------------------------------------------------------------------------------------

_STOP = """
a about above after again all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has
have having he her here hers him his how i if in into is it its itself just me more most my no
nor not now of off on once only or other our ours out over own same she should so some such than
that the their theirs them then there these they this those through to too under until up very
was we were what when where which while who whom why will with would you your yours
s t d ll m re ve don doesn didn isn aren wasn weren won wouldn shouldn couldn can cannot
"""
STOP_WORDS = frozenset(_STOP.split())
KEY_FACT_WORDS = 60
# An answer loops when one word 4-gram occurs 3 or more times: small models that lose the thread
# repeat a phrase until max_tokens, and normal prose almost never says the same 4 words thrice.
REPEAT_N, REPEAT_TIMES = 4, 3
_MARK = re.compile(r"\[\d+\]")
_WORD = re.compile(r"\w+")
# "Not found" as the pipeline says it (core.prompt.NOT_FOUND) or as a model words it; looked for
# near the start only, so an answer that merely mentions something missing later is no refusal.
_REFUSAL = re.compile(
    r"\b(?:i |we )?(?:could ?n[o’']t|can ?n[o’']t|can[’']t|cannot|unable to|did ?n[o’']t|was ?n[o’']t able to) "
    r"(?:find|locate|see|determine)\b"
    r"|\b(?:documents?|sources?|context|material|reference|text|information)(?: provided| given)? "
    r"(?:do|does|did) ?n[o’']t (?:contain|mention|say|include|provide|answer|specify)\b"
    r"|\bno (?:information|mention|answer|details?)\b"
    r"|\bnot (?:mentioned|found|provided|specified|stated) in\b"
    r"|\bi (?:do ?n[o’']t|don[’']t) know\b",
    re.IGNORECASE,
)
REFUSAL_WINDOW = 200


def words(text: str) -> list[str]:
    return _WORD.findall(_MARK.sub(" ", text).lower())


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOP_WORDS]


def key_fact_recall(answer: str, reference: str, n: int = KEY_FACT_WORDS) -> float:
    """Share of the reference's first ``n`` distinct content words that the answer contains."""
    facts = list(dict.fromkeys(content_words(reference)))[:n]
    if not facts:
        return 0.0
    said = set(content_words(answer))
    return sum(w in said for w in facts) / len(facts)


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style F1 of the content-word multisets of answer and reference."""
    a, r = Counter(content_words(answer)), Counter(content_words(reference))
    overlap = sum((a & r).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(a.values()), overlap / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def support(answer: str, evidence: Iterable[str]) -> float | None:
    """Share of the answer's distinct content words found in the evidence (None: no content words)."""
    said = set(content_words(answer))
    if not said:
        return None
    seen: set[str] = set()
    for text in evidence:
        seen.update(content_words(text))
    return len(said & seen) / len(said)


def is_repetitive(text: str, n: int = REPEAT_N, times: int = REPEAT_TIMES) -> bool:
    w = words(text)
    grams = Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
    return bool(grams) and max(grams.values()) >= times


def is_refusal(text: str, not_found: str | None = None) -> bool:
    """The answer says the documents do not answer: the pipeline's own ``not_found`` text, or a
    refusal phrase in its first REFUSAL_WINDOW characters."""
    text = text.strip()
    return (not_found is not None and text == not_found) or bool(
        _REFUSAL.search(text[:REFUSAL_WINDOW]))


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation (numpy's default); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mean(values: Iterable[float | bool | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    xs = [float(v) for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None

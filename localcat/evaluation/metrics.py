"""Metrics: ranking quality (BEIR/pytrec_eval definitions) and answer quality (word overlap).

The answer measures live in ``core.answer_metrics``, so that `localcat eval` and the fine-tune
gate judge answers by one definition; they are re-exported here for the eval command.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from core.answer_metrics import (
    KEY_FACT_WORDS,
    REFUSAL_WINDOW,
    REPEAT_N,
    REPEAT_TIMES,
    STOP_WORDS,
    citation_marks,
    content_words,
    is_refusal,
    is_repetitive,
    key_fact_recall,
    support,
    token_f1,
    words,
)

__all__ = [
    "KEY_FACT_WORDS", "KS", "REFUSAL_WINDOW", "REPEAT_N", "REPEAT_TIMES", "STOP_WORDS",
    "citation_marks", "content_words", "doc_ranking", "hit_at_k", "is_refusal", "is_repetitive",
    "key_fact_recall", "mean", "mrr_at_k", "ndcg_at_k", "percentile", "recall_at_k", "score_run",
    "support", "token_f1", "words",
]

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


# --- summaries ----------------------------------------------------------------------------------


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

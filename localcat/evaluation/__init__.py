"""Evaluation (an edge): retrieval and answer quality of the real parts, measured on fixed question sets.

datasets (BEIR folders, answer sets) → runner (scratch ingest, retrieval candidates and rankings)
and answering (answers through the real pipeline, per model) → metrics → report (table, plot) →
command (`localcat eval`). Rankings come only from ``assistant.retriever.fuse``.
"""

from localcat.evaluation.command import eval_command
from localcat.evaluation.datasets import AnswerItem, BeirSet, load_answers, load_beir
from localcat.evaluation.metrics import (
    KS,
    doc_ranking,
    hit_at_k,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    score_run,
)
from localcat.evaluation.runner import (
    COVERAGE_GRID,
    MODES,
    SIM_GRID,
    Candidates,
    Prepared,
    collect,
    evaluate,
    mode_settings,
    prepare,
    prepare_files,
    rank,
    threshold_rates,
    unfiltered,
)

__all__ = [
    "COVERAGE_GRID", "KS", "MODES", "SIM_GRID", "AnswerItem", "BeirSet", "Candidates", "Prepared",
    "collect", "doc_ranking", "eval_command", "evaluate", "hit_at_k", "load_answers", "load_beir",
    "mode_settings", "mrr_at_k", "ndcg_at_k", "prepare", "prepare_files", "rank", "recall_at_k",
    "score_run", "threshold_rates", "unfiltered",
]

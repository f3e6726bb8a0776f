"""The suite's summary: each domain weighs the same, the worst domain is named, and a baseline
comparison's intervals are paired per query and stratified by domain."""

from __future__ import annotations

import pytest

from localcat.evaluation.suite import FIGURES, compare, render_suite, summarise


def row(name: str, ndcg: list[float], shown: list[float], **figures: float) -> dict:
    base = {f: 0.5 for f in FIGURES}
    base.update({"ndcg@10": sum(ndcg) / len(ndcg), "shown": sum(shown) / len(shown)}, **figures)
    return {"name": name, "kind": "faq", "queries": len(ndcg), **base,
            "per_query": {f"{name}-{i}": {"ndcg@10": n, "shown": s}
                          for i, (n, s) in enumerate(zip(ndcg, shown, strict=True))}}


def report(rows: list[dict]) -> dict:
    return {"suite": "s", "split": "dev", "settings": {"embedding": "onnx-int8"},
            "domains": rows, **summarise(rows)}


def test_the_mean_weighs_domains_alike_and_the_worst_is_named() -> None:
    big = row("big", [1.0] * 90, [1.0] * 90, nothing_found=0.0)
    small = row("small", [0.0] * 10, [0.0] * 10, nothing_found=0.3)
    s = summarise([big, small])
    assert s["mean"]["ndcg@10"] == pytest.approx(0.5)  # not 0.9, the per-query mean
    assert s["worst"]["ndcg@10"] == {"value": 0.0, "domain": "small"}
    assert s["worst"]["nothing_found"] == {"value": 0.3, "domain": "small"}  # higher is worse
    table = render_suite(report([big, small]))
    assert "mean" in table and "worst" in table and "small" in table


def test_a_gain_in_one_domain_and_a_loss_in_another_are_both_seen() -> None:
    old = report([row("a", [0.5] * 40, [0.0] * 40), row("b", [0.5] * 40, [1.0] * 40)])
    new = report([row("a", [0.9] * 40, [1.0] * 40), row("b", [0.1] * 40, [1.0] * 40)])
    out = compare(new, old)
    a, b = out["domains"]["a"]["ndcg@10"], out["domains"]["b"]["ndcg@10"]
    assert a["mean"] == pytest.approx(0.4) and a["low"] > 0
    assert b["mean"] == pytest.approx(-0.4) and b["high"] < 0
    assert out["mean"]["ndcg@10"]["mean"] == pytest.approx(0.0)
    assert out["mean"]["shown"]["mean"] == pytest.approx(0.5)
    assert "vs baseline" in render_suite({**new, "compare": out})


def test_only_queries_both_runs_scored_are_paired() -> None:
    old = report([row("a", [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])])
    new = report([row("a", [1.0, 1.0], [1.0, 1.0])])
    assert compare(new, old)["domains"]["a"]["ndcg@10"]["n"] == 2

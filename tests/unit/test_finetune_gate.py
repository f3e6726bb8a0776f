"""The promotion gate without a model: answers scored by hand, the decision, the report, `register`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.gguf import file_sha256
from core.settings import FinetuneSettings, Settings
from finetune.artifacts import EvalReport, RunLayout
from finetune.base import BaseRef
from finetune.evaluate import AnswerScore, decide, markdown, report, score_answer
from finetune.train import Example
from localcat.cli import main
from tests.unit.test_finetune_registry import base_file, finished_run

REFERENCE = "The vacation is 27 days per year [1]."
HALF = "The vacation is long [2]."  # 1 of the 5 key facts (vacation 27 days per year), cites wrong
LOOP = "days days days days days days days days days days days days [1]"


def example(i: int, target: str = REFERENCE) -> Example:
    return Example(id=f"q{i}", question=f"How long is the vacation, {i}?", prompt="…",
                   target=target, input_ids=[1, 2, 3], labels=[-100, -100, 3])


def ft(**kw) -> FinetuneSettings:
    return FinetuneSettings(**kw)


def test_an_answer_is_scored_with_the_eval_commands_measures() -> None:
    same = score_answer(REFERENCE, REFERENCE)
    assert same == AnswerScore(key_fact_recall=1.0, token_f1=1.0, exact=True,
                               citation_agreement=1.0, cited=True, looping=False)
    half = score_answer(HALF, REFERENCE)
    assert half.key_fact_recall == pytest.approx(1 / 5)
    assert half.token_f1 == pytest.approx(2 * (1 / 2) * (1 / 5) / (1 / 2 + 1 / 5))  # vacation long
    assert half.citation_agreement == 0.0 and half.cited and not half.exact
    assert score_answer("The vacation is 27 days per year.", REFERENCE).citation_agreement is None
    loop = score_answer(LOOP, REFERENCE)
    assert loop.looping and loop.value("quality") == pytest.approx(
        (loop.key_fact_recall + loop.token_f1) / 2 - 1)
    assert half.value("key_fact_recall") == half.key_fact_recall
    assert half.value("token_f1") == half.token_f1


def test_a_clear_gain_on_enough_questions_is_promoted() -> None:
    base = [score_answer(HALF, REFERENCE)] * 24
    adapter = [score_answer(REFERENCE, REFERENCE)] * 20 + [score_answer(HALF, REFERENCE)] * 4
    promoted, reason, gate = decide(base, adapter, ft())
    assert promoted, reason
    assert reason.startswith("beats the base: +")
    assert "95 % interval [" in reason and "on 24 test questions" in reason
    assert reason.endswith(": promoted")
    assert gate.questions == 24 and gate.min_questions == 20 and gate.metric == "quality"
    assert gate.low is not None and gate.high is not None and gate.gain is not None
    assert 0 < gate.low <= gate.gain <= gate.high
    assert gate.resamples == 2000 and gate.confidence == 0.95


def test_too_few_questions_are_not_judged_and_the_reason_says_force() -> None:
    good = [score_answer(REFERENCE, REFERENCE)] * 4
    promoted, reason, gate = decide([score_answer(HALF, REFERENCE)] * 4, good, ft())
    assert not promoted
    assert reason == ("cannot be judged: only 4 test questions (20 needed): not promoted; "
                      "--force to register anyway")
    assert gate.gain is None and gate.low is None and gate.questions == 4
    # The minimum is a setting.
    assert decide([score_answer(HALF, REFERENCE)] * 4, good, ft(gate_min_questions=4))[0]


def test_noise_is_not_a_gain() -> None:
    # Half the questions better, half worse by as much: no gain beyond noise.
    base = [score_answer(HALF, REFERENCE), score_answer(REFERENCE, REFERENCE)] * 12
    adapter = [score_answer(REFERENCE, REFERENCE), score_answer(HALF, REFERENCE)] * 12
    promoted, reason, gate = decide(base, adapter, ft())
    assert not promoted and reason.startswith("does not beat the base beyond noise: +0.000")
    assert gate.low is not None and gate.high is not None and gate.low < 0 < gate.high
    # One better answer among 24 is within noise too.
    adapter = [score_answer(HALF, REFERENCE)] * 23 + [score_answer(REFERENCE, REFERENCE)]
    assert not decide([score_answer(HALF, REFERENCE)] * 24, adapter, ft())[0]


def test_an_adapter_that_loops_more_is_not_promoted() -> None:
    # Judged on key-fact recall alone the looping adapter gains, but loops where the base did not.
    base = [score_answer(HALF, REFERENCE)] * 24
    adapter = [score_answer(REFERENCE, REFERENCE)] * 22 + [score_answer(LOOP, REFERENCE)] * 2
    promoted, reason, gate = decide(base, adapter, ft(gate_metric="key_fact_recall"))
    assert not promoted and gate.low is not None and gate.low > 0
    assert reason.startswith("loops more than the base (2 answers against 0)")
    assert (gate.loops_base, gate.loops_adapter) == (0, 2)


def make_report(tmp_path: Path, n: int, adapter_text: str = REFERENCE) -> EvalReport:
    base = base_file(tmp_path / "base.gguf")
    ref = BaseRef("gguf", base, file_sha256(base))
    examples = [example(i) for i in range(n)]
    return report("r1", ref.describe(), examples, too_long=1,
                  answers={"base": [HALF] * n, "adapter": [adapter_text] * n},
                  losses={"base": 2.0, "adapter": 0.5}, ft=ft(), seconds=3.21)


def test_the_report_records_both_models_the_interval_n_and_the_reason(tmp_path: Path) -> None:
    r = make_report(tmp_path, 24)
    assert r.promoted and r.examples == 24 and r.too_long == 1
    b, a = r.metrics.base, r.metrics.adapter
    assert (a.key_fact_recall, a.answer_f1, a.exact_match, a.citation_agreement, a.cited,
            a.looping, a.quality) == (1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0)
    assert b.key_fact_recall == 0.2 and b.citation_agreement == 0.0 and b.looping == 0.0
    assert b.loss == 2.0 and a.loss == 0.5 and a.perplexity == pytest.approx(1.6487, abs=1e-4)
    assert r.gate is not None and r.gate.questions == 24
    assert r.gate.gain == pytest.approx(a.quality - b.quality, abs=1e-3)
    assert r.gate.low == r.gate.high == r.gate.gain  # every question gained the same
    assert "key-fact recall 0.20 → 1.00" in r.reason and "loss 2.000 → 0.500" in r.reason
    assert [s.id for s in r.scores] == [f"q{i}" for i in range(24)]
    assert r.scores[0].adapter == 1.0 and len(r.samples) == 10
    assert "paired bootstrap interval (2000 resamples)" in r.rule
    assert r.summary().startswith("r1: PROMOTED — the adapter beats the base: +")

    # Written and read back through the model; the markdown shows both rows and the interval.
    run = RunLayout(tmp_path / "r1")
    r.write(run.eval_json)
    assert run.read_eval() == r
    md = markdown(r)
    assert "| adapter | 0.5000 | 1.649 | 1.000 | 1.000 |" in md
    assert "Gain in quality: +" in md and "on 24 questions" in md


def test_reports_written_before_the_answer_gate_still_read(tmp_path: Path) -> None:
    base = base_file(tmp_path / "base.gguf")
    run_dir = finished_run(tmp_path, base, promoted=False)
    old = RunLayout(run_dir).read_eval()
    assert old.gate is None and old.scores == [] and old.metrics.base.key_fact_recall is None
    assert "| base | 0.5000 | 1.649 | – |" in markdown(old)


def test_register_refuses_a_gain_within_noise_unless_forced(tmp_path: Path) -> None:
    data = Settings().data_dir
    base = base_file(tmp_path / "base.gguf")
    run = RunLayout(finished_run(data, base))
    make_report(tmp_path, 4).write(run.eval_json)  # too few questions: not promoted
    runner = CliRunner()
    args = ["finetune", "register", "--run", "r1", "--base", str(base), "--no-ollama"]
    refused = runner.invoke(main, args)
    assert refused.exit_code == 1
    assert "only 4 test questions (20 needed): not promoted" in refused.output
    forced = runner.invoke(main, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    versions = json.loads(runner.invoke(main, ["models", "list", "--json"]).output)
    assert [(v["name"], v["status"]) for v in versions] == [("v1", "forced")]
    assert versions[0]["metrics"]["adapter"]["key_fact_recall"] == 1.0

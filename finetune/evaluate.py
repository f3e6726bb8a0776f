"""Base vs adapter on the held-out test split: the gate a model passes before it is promoted.

Both answer every test prompt greedily, on the same examples the trainer never saw; each answer is
scored against the reference with the measures `localcat eval` uses (core.answer_metrics):
key-fact recall, token F1, whether its [n] marks cite what the reference cites, whether it loops.
The loss (and perplexity) of the reference answer per completion token is reported beside them.

The adapter is promoted only when its gain is beyond noise (core.stats): on at least
``gate_min_questions`` test questions, the paired bootstrap interval of the mean per-question gain
in ``gate_metric`` lies above zero, and it loops on no more answers than the base. Otherwise the
report says why in words, and `register` needs ``--force``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.answer_metrics import (
    citation_agreement,
    citation_marks,
    exact_match,
    is_repetitive,
    key_fact_recall,
    token_f1,
)
from core.errors import ConfigError
from core.settings import FinetuneSettings
from core.stats import beats
from finetune.artifacts import (
    EvalReport,
    Gate,
    Metrics,
    QuestionScore,
    RunLayout,
    Sample,
    Scores,
)
from finetune.base import BaseRef, Vocab, hf_weights, require
from finetune.dataset import read_jsonl
from finetune.modelfile import stop_markers
from finetune.train import Example, tokenize_rows

METRIC_NAMES = {"quality": "quality (mean of key-fact recall and F1, loops score -1)",
                "key_fact_recall": "key-fact recall", "token_f1": "token F1"}
FORCE = "--force to register anyway"


@dataclass(frozen=True)
class AnswerScore:
    """One answer against its reference."""

    key_fact_recall: float
    token_f1: float
    exact: bool
    citation_agreement: float | None
    cited: bool
    looping: bool

    def value(self, metric: str) -> float:
        """The gate's score: one measure, or 'quality', their mean less 1 for a looping answer."""
        if metric == "quality":
            return (self.key_fact_recall + self.token_f1) / 2 - float(self.looping)
        return getattr(self, metric)


def score_answer(answer: str, reference: str) -> AnswerScore:
    return AnswerScore(
        key_fact_recall=key_fact_recall(answer, reference),
        token_f1=token_f1(answer, reference),
        exact=exact_match(answer, reference),
        citation_agreement=citation_agreement(answer, reference),
        cited=bool(citation_marks(answer)),
        looping=is_repetitive(answer),
    )


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def summarize(scores: Sequence[AnswerScore], loss: float, metric: str) -> Scores:
    """A model's means over the test split."""
    agreement = [s.citation_agreement for s in scores if s.citation_agreement is not None]
    return Scores(
        loss=round(loss, 5), perplexity=round(math.exp(min(loss, 50)), 4),
        answer_f1=_mean([s.token_f1 for s in scores]) or 0.0,
        exact_match=_mean([float(s.exact) for s in scores]) or 0.0,
        key_fact_recall=_mean([s.key_fact_recall for s in scores]),
        citation_agreement=_mean(agreement),
        cited=_mean([float(s.cited) for s in scores]),
        looping=_mean([float(s.looping) for s in scores]),
        quality=_mean([s.value(metric) for s in scores]),
    )


def rule(ft: FinetuneSettings) -> str:
    return (f"promoted when there are at least {ft.gate_min_questions} test questions, the "
            f"{ft.gate_confidence:.0%} paired bootstrap interval ({ft.gate_resamples} resamples) of "
            f"the adapter's mean gain in {METRIC_NAMES[ft.gate_metric]} lies above zero, and the "
            "adapter loops on no more answers than the base").replace("%", " %", 1)


def decide(base: Sequence[AnswerScore], adapter: Sequence[AnswerScore], ft: FinetuneSettings,
           *, base_scores: Scores | None = None, adapter_scores: Scores | None = None,
           ) -> tuple[bool, str, Gate]:
    """(promoted, the reason in words, the figures) for paired per-question scores."""
    metric = ft.gate_metric
    new, old = [s.value(metric) for s in adapter], [s.value(metric) for s in base]
    verdict = beats(new, old, min_n=ft.gate_min_questions, what=METRIC_NAMES[metric].split(" (")[0],
                    unit="test questions", resamples=ft.gate_resamples,
                    confidence=ft.gate_confidence, seed=ft.seed)
    loops_base, loops_adapter = sum(s.looping for s in base), sum(s.looping for s in adapter)
    detail = _detail(base_scores, adapter_scores)
    if verdict.interval is None:
        promoted, reason = False, f"cannot be judged: {verdict.reason}: not promoted; {FORCE}"
    elif not verdict.better:
        promoted, reason = False, (f"does not beat the base beyond noise: {verdict.reason}{detail}: "
                                   f"not promoted; {FORCE}")
    elif loops_adapter > loops_base:
        promoted, reason = False, (f"loops more than the base ({loops_adapter} answers against "
                                   f"{loops_base}) though {verdict.reason}: not promoted; {FORCE}")
    else:
        promoted, reason = True, f"beats the base: {verdict.reason}{detail}: promoted"
    iv = verdict.interval
    gate = Gate(
        metric=metric, questions=verdict.n, min_questions=verdict.min_n,
        gain=None if iv is None else round(iv.mean, 4),
        low=None if iv is None else round(iv.low, 4),
        high=None if iv is None else round(iv.high, 4),
        confidence=ft.gate_confidence, resamples=ft.gate_resamples, seed=ft.seed,
        loops_base=loops_base, loops_adapter=loops_adapter,
    )
    return promoted, reason, gate


def _detail(b: Scores | None, a: Scores | None) -> str:
    if b is None or a is None:
        return ""
    parts = []
    if b.key_fact_recall is not None and a.key_fact_recall is not None:
        parts.append(f"key-fact recall {b.key_fact_recall:.2f} → {a.key_fact_recall:.2f}")
    parts.append(f"F1 {b.answer_f1:.2f} → {a.answer_f1:.2f}")
    parts.append(f"loss {b.loss:.3f} → {a.loss:.3f}")
    return " (" + ", ".join(parts) + ")"


def report(
    run: str, base: Any, examples: Sequence[Example], too_long: int, answers: dict[str, list[str]],
    losses: dict[str, float], ft: FinetuneSettings, seconds: float,
) -> EvalReport:
    """The report from both models' answers to the test examples and their reference losses."""
    scored = {name: [score_answer(text, ex.target) for text, ex in zip(texts, examples, strict=True)]
              for name, texts in answers.items()}
    b = summarize(scored["base"], losses["base"], ft.gate_metric)
    a = summarize(scored["adapter"], losses["adapter"], ft.gate_metric)
    promoted, reason, gate = decide(scored["base"], scored["adapter"], ft,
                                    base_scores=b, adapter_scores=a)
    return EvalReport(
        run=run,
        base=base,
        examples=len(examples),
        too_long=too_long,
        metrics=Metrics(base=b, adapter=a),
        promoted=promoted,
        reason=reason,
        rule=rule(ft),
        seconds=round(seconds, 2),
        samples=[
            Sample(question=ex.question, reference=ex.target, base=answers["base"][i],
                   adapter=answers["adapter"][i])
            for i, ex in enumerate(examples[:10])
        ],
        gate=gate,
        scores=[QuestionScore(id=ex.id, base=round(sb.value(ft.gate_metric), 4),
                              adapter=round(sa.value(ft.gate_metric), 4))
                for ex, sb, sa in zip(examples, scored["base"], scored["adapter"], strict=True)],
    )


def evaluate(
    run_dir: Path, base: BaseRef, ft: FinetuneSettings, *, cache_dir: Path, progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> EvalReport:
    """Write eval/eval.json and eval/eval.md for the run's adapter; return the report."""
    say = log or (lambda msg: print(msg, file=sys.stderr))
    run = RunLayout(run_dir)
    run.read_manifest().check_base(base)
    rows = read_jsonl(run.split("test"))[: ft.eval_limit]
    if not rows:
        raise ConfigError(f"Run {run.name} has no test examples",
                          "rebuild the data set with more feedback")
    torch = require("torch", "torch")
    transformers = require("transformers", "transformers")
    peft = require("peft", "peft")
    if ft.threads:
        torch.set_num_threads(ft.threads)
    with Vocab(base) as vocab:
        hf_dir = hf_weights(base, cache_dir, vocab)
        stops = stop_markers(vocab.template)
        examples, too_long = tokenize_rows(rows, vocab, ft.max_seq_length, stops)
        stop_ids = sorted({i for s in stops if len(ids := vocab.encode(s)) == 1 for i in ids}
                          | ({vocab.eos_id} if vocab.eos_id is not None else set()))
        pad_id = vocab.pad_id if vocab.pad_id is not None else stop_ids[0]

        say(f"Evaluating base vs adapter on {len(examples)} test examples…")
        started = time.perf_counter()
        model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
        model = peft.PeftModel.from_pretrained(model, str(run.adapter))
        model.eval()
        from tqdm.auto import tqdm

        bar = tqdm(total=2 * len(examples), desc="eval", unit="ex", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)
        answers: dict[str, list[str]] = {}
        losses: dict[str, float] = {}
        for name in ("base", "adapter"):
            with torch.no_grad(), _adapter(model, enabled=name == "adapter"):
                nll, count, texts = 0.0, 0, []
                for ex in examples:
                    ids = torch.tensor([ex.input_ids])
                    labels = torch.tensor([ex.labels])
                    out = model(input_ids=ids, labels=labels)
                    n = sum(1 for x in ex.labels[1:] if x != -100)
                    nll += float(out.loss) * n
                    count += n
                    texts.append(_generate(model, ex, vocab, stop_ids, pad_id, stops, ft, torch))
                    bar.update(1)
            losses[name] = nll / max(count, 1)
            answers[name] = texts
        bar.close()

    result = report(run.name, base.describe(), examples, too_long, answers, losses, ft,
                    time.perf_counter() - started)
    result.write(run.eval_json)
    run.eval_md.write_text(markdown(result), encoding="utf-8")
    return result


class _adapter:
    """Context manager: the PEFT model with its adapter on, or off (the base)."""

    def __init__(self, model: Any, enabled: bool):
        self.model, self.enabled, self._ctx = model, enabled, None

    def __enter__(self) -> None:
        if not self.enabled:
            self._ctx = self.model.disable_adapter()
            self._ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def _generate(model: Any, ex: Example, vocab: Vocab, stop_ids: Sequence[int], pad_id: int,
              stops: Sequence[str], ft: FinetuneSettings, torch: Any) -> str:
    prompt = torch.tensor([ex.input_ids[: ex.prompt_len]])
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                         max_new_tokens=ft.eval_max_new_tokens, do_sample=False,
                         eos_token_id=list(stop_ids), pad_token_id=pad_id)
    new = [int(t) for t in out[0][prompt.shape[1]:] if int(t) not in stop_ids]
    text = vocab.decode(new)
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text.strip()


def markdown(report: EvalReport) -> str:
    lines = [
        f"# Evaluation of {report.run}",
        "",
        f"Base: `{report.base.name}` · {report.examples} test examples · "
        f"**{'promoted' if report.promoted else 'not promoted'}**: the adapter {report.reason}",
        "",
        f"Rule: {report.rule}.",
        "",
        "| | loss | perplexity | key-fact recall | answer F1 | exact match | citations agree "
        "| cites | loops | quality |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("base", "adapter"):
        r: Scores = getattr(report.metrics, name)
        cells = [r.key_fact_recall, r.answer_f1, r.exact_match, r.citation_agreement, r.cited,
                 r.looping, r.quality]
        lines.append(f"| {name} | {r.loss:.4f} | {r.perplexity:.3f} | "
                     + " | ".join("–" if v is None else f"{v:.3f}" for v in cells) + " |")
    if report.gate is not None and report.gate.gain is not None:
        g = report.gate
        lines += ["", f"Gain in {g.metric}: {g.gain:+.3f}, {g.confidence:.0%} interval "
                  f"[{g.low:.3f}, {g.high:.3f}] on {g.questions} questions ({g.resamples} paired "
                  f"bootstrap resamples); answers that loop: base {g.loops_base}, adapter "
                  f"{g.loops_adapter}."]
    lines += ["", "## Samples", ""]
    for s in report.samples:
        lines += [f"- **Q:** {s.question}", f"  - reference: {s.reference}",
                  f"  - base: {s.base}", f"  - adapter: {s.adapter}"]
    return "\n".join(lines) + "\n"

"""Base vs adapter on the held-out test split: the gate a model passes before it is promoted.

Two measures, both on the same examples the trainer never saw:

* loss (and perplexity) of the reference answer, per completion token, as the model is prompted;
* answer match: the greedy answer to each test prompt against the reference, as token F1 (words
  and citation markers like ``[1]``) and exact match.

The adapter is promoted when its loss is lower and its answer match is no worse than the base's.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.settings import FinetuneSettings
from finetune.artifacts import EvalReport, Metrics, RunLayout, Sample, Scores
from finetune.base import BaseRef, Vocab, hf_weights, require
from finetune.dataset import read_jsonl
from finetune.modelfile import stop_markers
from finetune.train import Example, tokenize_rows

_TOKEN = re.compile(r"\[\d+\]|\w+")


def answer_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = answer_tokens(prediction), answer_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


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
        results: dict[str, Scores] = {}
        answers: dict[str, list[str]] = {}
        for name in ("base", "adapter"):
            with torch.no_grad(), _adapter(model, enabled=name == "adapter"):
                nll, count, f1s, exact, texts = 0.0, 0, [], 0, []
                for ex in examples:
                    ids = torch.tensor([ex.input_ids])
                    labels = torch.tensor([ex.labels])
                    out = model(input_ids=ids, labels=labels)
                    n = sum(1 for x in ex.labels[1:] if x != -100)
                    nll += float(out.loss) * n
                    count += n
                    text = _generate(model, ex, vocab, stop_ids, pad_id, stops, ft, torch)
                    texts.append(text)
                    f1s.append(token_f1(text, ex.target))
                    exact += int(" ".join(answer_tokens(text)) == " ".join(answer_tokens(ex.target)))
                    bar.update(1)
            loss = nll / max(count, 1)
            results[name] = Scores(loss=round(loss, 5), perplexity=round(math.exp(min(loss, 50)), 4),
                                   answer_f1=round(sum(f1s) / len(f1s), 4),
                                   exact_match=round(exact / len(examples), 4))
            answers[name] = texts
        bar.close()

    b, a = results["base"], results["adapter"]
    promoted = a.loss < b.loss and a.answer_f1 >= b.answer_f1
    reason = f"loss {b.loss:.4f} → {a.loss:.4f}, answer F1 {b.answer_f1:.3f} → {a.answer_f1:.3f}"
    report = EvalReport(
        run=run.name,
        base=base.describe(),
        examples=len(examples),
        too_long=too_long,
        metrics=Metrics(base=b, adapter=a),
        promoted=promoted,
        reason=("beats the base: " if promoted else "does not beat the base: ") + reason,
        rule="promoted when adapter loss < base loss and adapter answer F1 >= base answer F1",
        seconds=round(time.perf_counter() - started, 2),
        samples=[
            Sample(question=ex.question, reference=ex.target, base=answers["base"][i],
                   adapter=answers["adapter"][i])
            for i, ex in enumerate(examples[:10])
        ],
    )
    report.write(run.eval_json)
    run.eval_md.write_text(markdown(report), encoding="utf-8")
    return report


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
        f"**{'promoted' if report.promoted else 'not promoted'}** ({report.reason})",
        "",
        "| | loss | perplexity | answer F1 | exact match |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("base", "adapter"):
        r: Scores = getattr(report.metrics, name)
        lines.append(f"| {name} | {r.loss:.4f} | {r.perplexity:.3f} | {r.answer_f1:.3f} "
                     f"| {r.exact_match:.3f} |")
    lines += ["", "## Samples", ""]
    for s in report.samples:
        lines += [f"- **Q:** {s.question}", f"  - reference: {s.reference}",
                  f"  - base: {s.base}", f"  - adapter: {s.adapter}"]
    return "\n".join(lines) + "\n"

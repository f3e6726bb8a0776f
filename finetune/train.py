"""Train a LoRA on the feedback: unsloth (FastLanguageModel + TRL SFTTrainer), or plain PEFT.

What it learns from (``Objective``): the SFT split (corrections and thumbs-up answers as targets),
or, when there are too few corrections but enough thumbs up and down, TRL's KTOTrainer on the KTO
rows (good and bad answers, unpaired). The result says which ran and why.

Examples are tokenised here, not by the trainer: the prompt is the base's chat template rendered
as llama.cpp renders it and tokenised by llama.cpp's own vocabulary, the completion is the reply up
to its end-of-turn marker, and only the completion is learned. The trainer gets ``input_ids`` and
``labels`` and has nothing left to guess.

KTO rows are tokenised here the same way (``KtoExample``) and handed to KTOTrainer as ids.

A run keeps checkpoints and starts again from the last one; the loss curve is written as JSON and
as a matplotlib plot. The plain PEFT trainer exists for machines where unsloth cannot be installed: it is used only
when asked for (``--trainer peft``) and the result says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from core.errors import ConfigError, LocalCatError
from core.settings import FinetuneSettings
from finetune.artifacts import (
    AdapterManifest,
    DatasetRef,
    EvalPoint,
    ExampleCounts,
    LoraInfo,
    LossHistory,
    RunLayout,
    TemplateInfo,
    TrainPoint,
    TrainResult,
)
from finetune.base import BaseRef, Vocab, hf_weights, require
from finetune.dataset import read_jsonl
from finetune.modelfile import stop_markers

UNSLOTH_INSTALL = "./scripts/setup --finetune"


class TrainingFailed(LocalCatError):
    status = 500


@dataclass
class Example:
    id: str
    question: str
    prompt: str
    target: str
    input_ids: list[int]
    labels: list[int]

    @property
    def prompt_len(self) -> int:
        return sum(1 for x in self.labels if x == -100)


def tokenize_rows(
    rows: Sequence[dict[str, Any]], vocab: Vocab, max_len: int, stops: Sequence[str] | None = None
) -> tuple[list[Example], int]:
    """(examples, how many were too long) for SFT rows, loss on the completion only."""
    stops = stop_markers(vocab.template) if stops is None else stops
    out, too_long = [], 0
    for row in rows:
        prompt, completion = vocab.template.split(row["messages"], row["target"], stops)
        # Tokenised apart, as served: llama.cpp tokenises the prompt and then generates the reply.
        p_ids, c_ids = vocab.encode(prompt), vocab.encode(completion)
        if len(p_ids) + len(c_ids) > max_len:
            too_long += 1
            continue
        out.append(Example(row["id"], row["question"], prompt, row["target"], p_ids + c_ids,
                           [-100] * len(p_ids) + c_ids))
    return out, too_long


@dataclass
class KtoExample:
    id: str
    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool


def tokenize_kto_rows(
    rows: Sequence[dict[str, Any]], vocab: Vocab, max_len: int, stops: Sequence[str] | None = None
) -> tuple[list[KtoExample], int]:
    """(examples, how many were too long) for KTO rows, tokenised as ``tokenize_rows`` does."""
    stops = stop_markers(vocab.template) if stops is None else stops
    out, too_long = [], 0
    for row in rows:
        prompt, completion = vocab.template.split(row["messages"], row["completion"], stops)
        p_ids, c_ids = vocab.encode(prompt), vocab.encode(completion)
        if len(p_ids) + len(c_ids) > max_len:
            too_long += 1
            continue
        out.append(KtoExample(row["id"], p_ids, c_ids, bool(row["label"])))
    return out, too_long


@dataclass(frozen=True)
class Objective:
    """What the LoRA learns from, and why, in words."""

    kind: Literal["sft", "kto"]
    reason: str


def kto_unavailable(trainer: str) -> str | None:
    """Why TRL's KTOTrainer cannot run with this trainer here; None when it can."""
    import importlib.util

    # KTOTrainer computes log-probabilities with TRL's triton kernels, which CPU torch lacks;
    # unsloth puts its own kernel in their place when it is imported.
    if trainer != "unsloth" and importlib.util.find_spec("triton") is None:
        return "TRL's KTOTrainer needs triton, which this torch lacks, or unsloth's kernels"
    return None


def choose_objective(ft: FinetuneSettings, sft_train: Sequence[dict[str, Any]],
                     kto_train: Sequence[dict[str, Any]], *,
                     unavailable: str | None = None) -> Objective:
    """SFT or KTO for a run's training rows (see FinetuneSettings.objective); ``unavailable``
    says why KTO cannot run here (``kto_unavailable``)."""
    corrections = sum(r.get("source") == "correction" for r in sft_train)
    good = sum(bool(r["label"]) for r in kto_train)
    bad = len(kto_train) - good
    rated = f"{good} good and {bad} bad rated answers"
    if ft.objective == "sft":
        return Objective("sft", f"asked for; {len(sft_train)} training examples")
    if ft.objective == "kto":
        if not good or not bad:
            raise ConfigError(
                f"KTO needs answers rated good and bad in the training split; it has {rated}",
                "collect thumbs up and down, or train with `--objective sft`",
            )
        if unavailable:
            raise ConfigError(f"Cannot train with KTO: {unavailable}",
                              "train with `--trainer unsloth`, or with `--objective sft`")
        return Objective("kto", f"asked for; {rated}")
    if corrections >= ft.kto_below_corrections:
        return Objective("sft", f"{corrections} corrections in the training split "
                                f"(KTO only below {ft.kto_below_corrections})")
    if len(kto_train) < ft.kto_min_rows or not good or not bad:
        return Objective("sft", f"only {corrections} corrections, but too few thumbs for KTO: "
                                f"{rated} ({ft.kto_min_rows} with both kinds needed)")
    why = (f"only {corrections} corrections in the training split (fewer than "
           f"{ft.kto_below_corrections}), but {rated}")
    if unavailable:
        return Objective("sft", f"{why}; not KTO: {unavailable}")
    return Objective("kto", why)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("unsloth", "unsloth_zoo", "trl", "peft", "transformers", "torch", "llama_cpp_python"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def import_unsloth() -> Any:
    """Import unsloth first: it patches transformers, TRL and PEFT when it is imported."""
    # The CPU-only torch has no torchvision; unsloth's check for it would refuse to import
    # (README, "unsloth on a CPU"). LocalCat never downloads models, so keep the hub offline too.
    os.environ.setdefault("UNSLOTH_SKIP_TORCHVISION_CHECK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "transformers" in sys.modules and "unsloth" not in sys.modules:
        print("localcat: transformers was imported before unsloth; unsloth may patch less",
              file=sys.stderr)
    try:
        import unsloth
    except ImportError as err:
        raise require_error("unsloth") from err
    except (RuntimeError, NotImplementedError) as err:
        raise TrainingFailed(
            f"unsloth cannot start here ({err})",
            "install it as ./scripts/setup does (README, \"unsloth on a CPU\"), or train with "
            "`--trainer peft`",
        ) from err
    return unsloth


def require_error(what: str) -> LocalCatError:
    from core.errors import MissingDependency

    return MissingDependency(what, UNSLOTH_INSTALL + "  (or train with --trainer peft)")


def _fingerprint(base: BaseRef, dataset_sha: str, ft: FinetuneSettings, trainer: str) -> str:
    """``trainer`` is the trainer's kind, with "+kto" for KTO (SFT runs keep their old prints)."""
    keys = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "learning_rate", "epochs",
            "max_steps", "batch_size", "grad_accum", "max_seq_length", "seed")
    if trainer.endswith("+kto"):
        keys += ("kto_beta",)
    blob = json.dumps([base.sha256, dataset_sha, trainer, {k: getattr(ft, k) for k in keys}],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train(
    run_dir: Path, base: BaseRef, ft: FinetuneSettings, *, cache_dir: Path,
    resume: bool = True, progress: bool = True, log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train the run's LoRA; returns (and writes to train/train.json) what happened."""
    say = log or (lambda msg: print(msg, file=sys.stderr))
    run = RunLayout(run_dir)
    dataset = run.read_dataset()
    trainer_kind = ft.trainer
    sft_train, sft_val = read_jsonl(run.split("train")), read_jsonl(run.split("val"))
    kto_rows = read_jsonl(run.kto)
    kto_train = [r for r in kto_rows if r["split"] == "train"]
    objective = choose_objective(ft, sft_train, kto_train,
                                 unavailable=kto_unavailable(trainer_kind))
    kto = objective.kind == "kto"
    fingerprint = _fingerprint(base, dataset.sha256, ft, trainer_kind + ("+kto" if kto else ""))
    run.train.mkdir(parents=True, exist_ok=True)
    checkpoint = _last_checkpoint(run.checkpoints) if resume else None
    if checkpoint and run.fingerprint.is_file() and (
        run.fingerprint.read_text().strip() != fingerprint
    ):
        raise ConfigError(
            f"The checkpoints in {run.checkpoints} were made from other data, base or settings",
            f"start over with `localcat finetune train --run {run.name} --restart`",
        )
    if not resume:
        shutil.rmtree(run.checkpoints, ignore_errors=True)
    run.fingerprint.write_text(fingerprint + "\n")
    done = _finished(run, checkpoint, fingerprint)
    if done is not None:
        say(f"{run.name} is already trained ({checkpoint.name}); nothing to do")
        return done
    if trainer_kind == "unsloth":
        import_unsloth()  # before anything imports transformers
    torch = require("torch", "torch")
    if ft.threads:
        torch.set_num_threads(ft.threads)

    with Vocab(base) as vocab:
        say(f"Preparing {base.name} for training…")
        hf_dir = hf_weights(base, cache_dir, vocab)
        stops = stop_markers(vocab.template)
        if kto:
            train_ex, long_train = tokenize_kto_rows(kto_train, vocab, ft.max_seq_length, stops)
            val_ex, long_val = tokenize_kto_rows([r for r in kto_rows if r["split"] == "val"],
                                                 vocab, ft.max_seq_length, stops)
        else:
            train_ex, long_train = tokenize_rows(sft_train, vocab, ft.max_seq_length, stops)
            val_ex, long_val = tokenize_rows(sft_val, vocab, ft.max_seq_length, stops)
        template = vocab.template
        pad_id = vocab.pad_id if vocab.pad_id is not None else (vocab.eos_id or 0)
    if not train_ex:
        raise ConfigError(
            f"Every training example is longer than {ft.max_seq_length} tokens",
            "raise LOCALCAT_FINETUNE__MAX_SEQ_LENGTH or lower the retrieval k / chunk size",
        )

    steps_per_epoch = math.ceil(len(train_ex) / (_batch_size(ft, kto) * ft.grad_accum))
    total = ft.max_steps or max(1, math.ceil(steps_per_epoch * ft.epochs))
    require("transformers", "transformers").set_seed(ft.seed)  # LoRA init and data order
    model, tokenizer = _load(trainer_kind, hf_dir, ft, torch)
    if kto:
        trainer = _kto_trainer(model, tokenizer, train_ex, val_ex, run.checkpoints, ft, total,
                               pad_id, torch)
    else:
        trainer = _trainer(trainer_kind, model, tokenizer, train_ex, val_ex, run.checkpoints, ft,
                           total, pad_id, torch)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    trainer.add_callback(_progress_callback(total, enabled=progress, loss_json=run.loss_json))
    say(f"Training a LoRA with {trainer_kind}, {objective.kind.upper()} ({objective.reason}), on "
        f"{len(train_ex)} examples "
        f"({total} steps{f', resuming from {checkpoint.name}' if checkpoint else ''})…")
    start_step = _checkpoint_step(checkpoint)
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        out = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        raise
    except (RuntimeError, ValueError) as err:
        raise TrainingFailed(
            f"Training stopped: {err}",
            f"fix the cause and run it again; it resumes from {run.checkpoints}",
        ) from err
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    steps_done = trainer.state.global_step - start_step

    # KTOTrainer adds a frozen "ref" copy of the adapter as its reference model: not ours to keep.
    model.save_pretrained(str(run.adapter), selected_adapters=["default"])
    history = loss_history(trainer.state.log_history)
    history.write(run.loss_json)
    plot_loss(history, run.loss_png,
              title=f"{run.name} · {trainer_kind} · {objective.kind.upper()} · {base.name}")
    good = sum(e.label for e in train_ex) if kto else None
    result = TrainResult(
        run=run.name,
        trainer=trainer_kind,
        fallback=trainer_kind != "unsloth",
        objective=objective.kind,
        objective_reason=objective.reason,
        base=base.describe(),
        examples=ExampleCounts(train=len(train_ex), val=len(val_ex),
                               too_long=long_train + long_val, good=good,
                               bad=None if good is None else len(train_ex) - good),
        steps=trainer.state.global_step,
        steps_this_session=steps_done,
        resumed_from=checkpoint.name if checkpoint else None,
        seconds=round(seconds, 2),
        steps_per_second=round(steps_done / seconds, 3) if seconds > 0 else None,
        cpu_seconds=round(cpu_seconds, 2),
        train_loss=round(float(out.training_loss), 5),
        final_eval_loss=history.eval[-1].eval_loss if history.eval else None,
        adapter=run.adapter,
        loss_png=run.loss_png,
    )
    AdapterManifest(
        base=base.describe(),
        chat_template=TemplateInfo.of(template, stops),
        trainer=trainer_kind,
        objective=objective.kind,
        lora=LoraInfo(r=ft.lora_r, alpha=ft.lora_alpha, dropout=ft.lora_dropout,
                      target_modules=list(ft.target_modules)),
        dataset=DatasetRef(run=run.name, sha256=dataset.sha256, sft=dataset.sft),
        fingerprint=fingerprint,
        versions=_versions(),
        created_at=datetime.now(UTC),
    ).write(run.manifest_json)
    result.write(run.train_json)
    return result


def _finished(run: RunLayout, checkpoint: Path | None, fingerprint: str) -> TrainResult | None:
    """The earlier result when the last checkpoint is the final step and its adapter was saved.

    (Resuming a finished run would otherwise train one step past max_steps.)
    """
    if checkpoint is None or not run.train_json.is_file():
        return None
    state = json.loads((checkpoint / "trainer_state.json").read_text())  # the Trainer's file
    if state["global_step"] < state["max_steps"] or not run.manifest_json.is_file():
        return None
    if run.read_manifest().fingerprint != fingerprint:
        return None
    return run.read_train().model_copy(update={
        "resumed_from": checkpoint.name, "steps_this_session": 0, "seconds": 0.0,
        "steps_per_second": None,
    })


def _last_checkpoint(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
             and (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _checkpoint_step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.split("-")[-1]) if checkpoint else 0


def _load(kind: str, hf_dir: Path, ft: FinetuneSettings, torch: Any) -> tuple[Any, Any]:
    cpu = not torch.cuda.is_available()
    if kind == "unsloth":
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            str(hf_dir), max_seq_length=ft.max_seq_length, load_in_4bit=False,
            dtype=torch.float32 if cpu else None, local_files_only=True,
        )
        model = FastLanguageModel.get_peft_model(
            model, r=ft.lora_r, lora_alpha=ft.lora_alpha, lora_dropout=ft.lora_dropout,
            target_modules=list(ft.target_modules), bias="none",
            use_gradient_checkpointing=False if cpu else "unsloth", random_state=ft.seed,
        )
        return model, tokenizer
    transformers = require("transformers", "transformers")
    peft = require("peft", "peft")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(hf_dir), dtype=torch.float32 if cpu else torch.bfloat16
    )
    config = peft.LoraConfig(r=ft.lora_r, lora_alpha=ft.lora_alpha, lora_dropout=ft.lora_dropout,
                             target_modules=list(ft.target_modules), bias="none",
                             task_type="CAUSAL_LM")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    return peft.get_peft_model(model, config), tokenizer


def _common_args(checkpoints: Path, ft: FinetuneSettings, total: int, torch: Any, *,
                 has_val: bool) -> dict[str, Any]:
    """The training arguments SFT and KTO share (batch sizes aside)."""
    return dict(
        output_dir=str(checkpoints),
        max_steps=total,
        gradient_accumulation_steps=ft.grad_accum,
        learning_rate=ft.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=min(10, total // 10),
        logging_steps=max(1, total // 25),
        save_strategy="steps",
        save_steps=ft.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if has_val else "no",
        eval_steps=max(1, total // 5),
        report_to=[],
        seed=ft.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,
    )


def _trainer(kind: str, model: Any, tokenizer: Any, train_ex: list[Example],
             val_ex: list[Example], checkpoints: Path, ft: FinetuneSettings, total: int,
             pad_id: int, torch: Any) -> Any:
    datasets = require("datasets", "datasets")

    def table(examples: list[Example]) -> Any:
        return datasets.Dataset.from_list(
            [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
        )

    common = dict(
        **_common_args(checkpoints, ft, total, torch, has_val=bool(val_ex)),
        per_device_train_batch_size=ft.batch_size,
        per_device_eval_batch_size=ft.batch_size,
    )
    if kind == "unsloth":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, max_length=ft.max_seq_length, packing=False,
                         dataset_num_proc=None)
        return SFTTrainer(model=model, processing_class=tokenizer, args=args,
                          train_dataset=table(train_ex),
                          eval_dataset=table(val_ex) if val_ex else None)
    # Plain transformers Trainer: TRL's SFTTrainer needs triton kernels that CPU torch lacks.
    from transformers import Trainer, TrainingArguments

    return Trainer(model=model, args=TrainingArguments(**common),
                   train_dataset=table(train_ex), eval_dataset=table(val_ex) if val_ex else None,
                   data_collator=collator(tokenizer, pad_id))


def _batch_size(ft: FinetuneSettings, kto: bool) -> int:
    # KTO estimates its KL term from the other completions of a batch: one alone has none.
    return max(2, ft.batch_size) if kto else ft.batch_size


def kto_weights(good: int, bad: int) -> tuple[float, float]:
    """(desirable, undesirable) weights that balance unequal counts, as the KTO paper advises
    (eq. 8: weight_good * good / (weight_bad * bad) in [1, 4/3])."""
    if good > bad:
        return bad / good, 1.0
    return 1.0, good / bad if bad else 1.0


def _kto_trainer(model: Any, tokenizer: Any, train_ex: list[KtoExample],
                 val_ex: list[KtoExample], checkpoints: Path, ft: FinetuneSettings, total: int,
                 pad_id: int, torch: Any) -> Any:
    """TRL's KTOTrainer on rows tokenised here; the reference is the base (the adapter off)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # TRL's telemetry ping honours it
    datasets = require("datasets", "datasets")
    from trl import KTOConfig, KTOTrainer

    class PretokenizedKTOTrainer(KTOTrainer):
        """KTOTrainer whose data set is already ids.

        TRL's own preparation tokenises text with the Hugging Face tokenizer and chat template;
        LocalCat's ids are llama.cpp's (see the module docstring). Of that preparation only the
        KL completions remain: each batch's completions rotated by one, as TRL builds them.
        """

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if not self.calculate_KL:
                return dataset

            def rotate(batch: dict[str, list]) -> dict[str, list]:
                ids = batch["completion_ids"]
                batch["KL_completion_ids"] = [ids[-1], *ids[:-1]]
                return batch

            return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)

    def table(examples: list[KtoExample]) -> Any:
        return datasets.Dataset.from_list(
            [{"prompt_ids": e.prompt_ids, "completion_ids": e.completion_ids, "label": e.label}
             for e in examples])

    # KTOTrainer reads its rows in order (its KL term pairs each with a neighbour), and the rows
    # come in feedback order: a correction's good and bad rows side by side, batches of one kind.
    train_ex = list(train_ex)
    random.Random(ft.seed).shuffle(train_ex)
    good = sum(e.label for e in train_ex)
    desirable, undesirable = kto_weights(good, len(train_ex) - good)
    batch = _batch_size(ft, kto=True)
    # Evaluating needs a pair at least; fewer validation rows are left out.
    val = table(val_ex) if len(val_ex) >= 2 else None
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    args = KTOConfig(
        **_common_args(checkpoints, ft, total, torch, has_val=val is not None),
        per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
        beta=ft.kto_beta, desirable_weight=desirable, undesirable_weight=undesirable,
        max_length=ft.max_seq_length, dataset_num_proc=None,
    )
    return PretokenizedKTOTrainer(model=model, args=args, processing_class=tokenizer,
                                  train_dataset=table(train_ex), eval_dataset=val)


def collator(tokenizer: Any, pad_id: int) -> Any:
    """Batches of ``input_ids``/``labels``: ids right-padded with ``pad_id``, labels with -100.

    Right padding keeps each example's positions as llama.cpp serves them (from 0), and the
    padding token is the base's as llama.cpp reads it, whatever the Hugging Face tokenizer says.
    """
    from transformers import DataCollatorForSeq2Seq

    tokenizer.padding_side = "right"
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100,
                                  return_tensors="pt")


def _progress_callback(total: int, enabled: bool, loss_json: Path | None = None) -> Any:
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """A progress bar on stderr with the latest loss (the Trainer's own prints to stdout);
        the loss so far goes to ``loss_json`` at every log, so the page can draw it live."""

        bar: Any = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=total, initial=state.global_step, desc="train", unit="step",
                            file=sys.stderr, disable=not enabled, dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if loss_json is not None:
                loss_history(state.log_history).write(loss_json)
            if self.bar is not None and logs:
                shown = {k: f"{float(v):.4g}" for k, v in logs.items() if k in ("loss", "eval_loss")}
                if shown:
                    self.bar.set_postfix(shown)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return Progress()


def loss_history(log_history: list[dict[str, Any]]) -> LossHistory:
    """The Trainer's log (``trainer.state.log_history``) as training and validation loss."""
    history = LossHistory()
    for entry in log_history:
        if "loss" in entry:
            history.train.append(TrainPoint(step=int(entry["step"]),
                                            loss=round(float(entry["loss"]), 5),
                                            learning_rate=float(entry.get("learning_rate", 0.0))))
        if "eval_loss" in entry:
            history.eval.append(EvalPoint(step=int(entry["step"]),
                                          eval_loss=round(float(entry["eval_loss"]), 5)))
    return history


def smooth(values: Sequence[float], weight: float = 0.6) -> list[float]:
    """Exponential moving average, bias-corrected as TensorBoard's smoothing is, so the first
    points are not pulled towards zero."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def loss_figure(history: LossHistory, title: str = "") -> Any:
    """A matplotlib Figure: raw training loss (faint), its smoothed curve, and validation loss."""
    # The Agg canvas directly, not pyplot: no GUI backend and no global state in a library.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    steps, losses = [p.step for p in history.train], [p.loss for p in history.train]
    val_steps, val_losses = [p.step for p in history.eval], [p.eval_loss for p in history.eval]
    if history.train:
        ax.plot(steps, losses, color="C0", alpha=0.3, linewidth=1, label="train loss")
        ax.plot(steps, smooth(losses), color="C0", linewidth=2, label="train loss (smoothed)")
    if history.eval:
        ax.plot(val_steps, val_losses, color="C1", marker="o", linewidth=1.5, label="val loss")
    every = losses + val_losses
    if every and min(every) > 0 and max(every) / min(every) > 20:
        ax.set_yscale("log")  # a LoRA on a small set often drops the loss by orders of magnitude
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per completion token)")
    ax.set_title(title or "loss")
    ax.grid(True, alpha=0.3)
    if every:
        ax.legend()
    return figure


def plot_loss(history: LossHistory, path: Path, title: str = "") -> None:
    """Write ``loss_figure`` as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    loss_figure(history, title).savefig(path, format="png")

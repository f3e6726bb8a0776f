"""Training's own parts without training: batches, the loss history and its plot, a finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.gguf import file_sha256
from core.settings import FinetuneSettings
from finetune.artifacts import (
    AdapterManifest,
    DatasetReport,
    LossHistory,
    RunLayout,
    TrainResult,
)
from finetune.base import BaseRef
from finetune.train import (
    _fingerprint,
    collator,
    loss_figure,
    loss_history,
    plot_loss,
    smooth,
    train,
)
from tests.unit.test_finetune_registry import base_file, export_dir


def tokenizer():
    """A real Hugging Face fast tokenizer over a four-word vocabulary, made in memory."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "a": 1, "b": 2, "<|im_end|>": 3}
    made = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")))
    made.padding_side = "left"  # as some chat tokenizers ship; training must pad right anyway
    return made


def test_batches_pad_ids_right_with_the_pad_token_and_labels_with_minus_100() -> None:
    batch = collator(tokenizer(), pad_id=3)([
        {"input_ids": [1, 2, 1, 2], "labels": [-100, -100, 1, 2]},
        {"input_ids": [2, 1], "labels": [-100, 1]},
    ])
    assert batch["input_ids"].tolist() == [[1, 2, 1, 2], [2, 1, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 1, 2], [-100, 1, -100, -100]]
    assert str(batch["labels"].dtype) == "torch.int64"


LOG = [
    {"loss": 4.0, "learning_rate": 1e-3, "step": 2}, {"loss": 2.0, "learning_rate": 9e-4, "step": 4},
    {"eval_loss": 2.5, "step": 4}, {"loss": 0.5, "learning_rate": 8e-4, "step": 6},
    {"loss": 0.1, "learning_rate": 7e-4, "step": 8}, {"eval_loss": 0.2, "step": 8},
    {"train_runtime": 3.0, "train_loss": 1.6, "step": 8},
]


def test_loss_history_keeps_train_and_val_loss_in_the_shape_runs_wrote(tmp_path: Path) -> None:
    history = loss_history(LOG)
    history.write(tmp_path / "loss.json")
    saved = json.loads((tmp_path / "loss.json").read_text())
    assert saved["train"][0] == {"step": 2, "loss": 4.0, "learning_rate": 1e-3}
    assert saved["eval"] == [{"step": 4, "eval_loss": 2.5}, {"step": 8, "eval_loss": 0.2}]
    assert LossHistory.read(tmp_path / "loss.json", "train again") == history


def test_smoothing_follows_the_trend_without_starting_at_zero() -> None:
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    stepped = smooth([4.0, 4.0, 1.0, 1.0, 1.0, 1.0])
    assert stepped[0] == pytest.approx(4.0)
    assert all(a > b for a, b in zip(stepped[1:], stepped[2:], strict=False))  # lags, then falls
    assert 1.0 < stepped[-1] < 1.5
    assert smooth([]) == []


def test_the_loss_plot_has_axes_raw_and_smoothed_train_loss_and_val_loss(tmp_path: Path) -> None:
    history = loss_history(LOG)
    figure = loss_figure(history, title="r1 · peft · tiny")
    (ax,) = figure.axes
    assert ax.get_xlabel() == "step" and ax.get_ylabel().startswith("loss")
    assert ax.get_title() == "r1 · peft · tiny"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"train loss", "train loss (smoothed)", "val loss"}
    raw, smoothed = lines["train loss"], lines["train loss (smoothed)"]
    assert list(raw.get_ydata()) == [4.0, 2.0, 0.5, 0.1]
    assert list(smoothed.get_ydata()) == pytest.approx(smooth([4.0, 2.0, 0.5, 0.1]))
    assert raw.get_alpha() < 1 and smoothed.get_linewidth() > raw.get_linewidth()
    assert list(lines["val loss"].get_xdata()) == [4, 8]
    assert ax.get_yscale() == "log"  # 40x from first to last
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines)

    plot_loss(history, tmp_path / "train" / "loss.png")
    assert (tmp_path / "train" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_loss(LossHistory(), tmp_path / "empty.png")  # nothing logged yet: still a picture
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_training_a_finished_run_again_returns_its_result(tmp_path: Path) -> None:
    """No torch: the saved result is read back, validated, for the last checkpoint."""
    base = base_file(tmp_path / "base.gguf")
    ref = BaseRef("gguf", base, file_sha256(base))
    run = RunLayout(tmp_path / "finetune" / "r1")
    ft = FinetuneSettings(max_steps=60, trainer="peft")
    dataset = DatasetReport(run="r1", path=run.dataset, sha256="d" * 64)
    dataset.write(run.dataset_json)
    # The adapter's manifest and train.json as a finished run left them.
    manifest_path = export_dir(tmp_path / "made", base) / "adapter" / "localcat-adapter.json"
    manifest = AdapterManifest.model_validate_json(manifest_path.read_text())
    manifest.fingerprint = _fingerprint(ref, dataset.sha256, ft, "peft")
    manifest.write(run.manifest_json)
    run.train_json.write_text(json.dumps({
        "run": "r1", "trainer": "peft", "fallback": True, "base": ref.describe().model_dump(mode="json"),
        "examples": {"train": 30, "val": 2, "too_long": 0}, "steps": 60, "steps_this_session": 60,
        "resumed_from": None, "seconds": 12.5, "steps_per_second": 4.8, "cpu_seconds": 20.1,
        "train_loss": 0.25, "final_eval_loss": 0.1, "adapter": str(run.adapter),
        "loss_png": str(run.loss_png),
    }))
    (run.checkpoints / "checkpoint-60").mkdir(parents=True)
    (run.checkpoints / "checkpoint-60" / "trainer_state.json").write_text(
        json.dumps({"global_step": 60, "max_steps": 60}))

    result = train(run.root, ref, ft, cache_dir=tmp_path / "cache", log=lambda _: None)
    assert isinstance(result, TrainResult)
    assert result.resumed_from == "checkpoint-60" and result.steps_this_session == 0
    assert result.steps == 60 and result.train_loss == 0.25 and result.steps_per_second is None
    assert result.model_dump(mode="json")["base"]["sha256"] == ref.sha256

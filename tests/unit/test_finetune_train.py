"""Training's own parts without training: batches, the loss history and its plot, a finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import ConfigError
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
    choose_objective,
    collator,
    kto_unavailable,
    kto_weights,
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


def sft_rows(corrections: int, thumbs_up: int) -> list[dict]:
    return ([{"source": "correction"}] * corrections + [{"source": "thumbs_up"}] * thumbs_up)


def kto_rows(good: int, bad: int) -> list[dict]:
    return [{"label": True}] * good + [{"label": False}] * bad


def test_auto_trains_kto_on_thumbs_when_corrections_are_too_few() -> None:
    ft = FinetuneSettings()  # KTO below 10 corrections, with 20 rows of both kinds
    kto = choose_objective(ft, sft_rows(3, 20), kto_rows(20, 12))
    assert kto.kind == "kto"
    assert kto.reason == ("only 3 corrections in the training split (fewer than 10), but 20 good "
                          "and 12 bad rated answers")
    sft = choose_objective(ft, sft_rows(10, 0), kto_rows(10, 30))
    assert sft.kind == "sft" and sft.reason.startswith("10 corrections in the training split")
    # Too few thumbs, or only one kind of them: SFT, saying why.
    few = choose_objective(ft, sft_rows(0, 10), kto_rows(10, 5))
    assert few.kind == "sft" and "too few thumbs for KTO: 10 good and 5 bad" in few.reason
    assert choose_objective(ft, sft_rows(0, 40), kto_rows(40, 0)).kind == "sft"


def test_the_objective_can_be_asked_for() -> None:
    assert choose_objective(FinetuneSettings(objective="sft"), sft_rows(0, 25),
                            kto_rows(25, 25)).reason == "asked for; 25 training examples"
    kto = choose_objective(FinetuneSettings(objective="kto"), sft_rows(30, 0), kto_rows(2, 1))
    assert kto.kind == "kto" and kto.reason == "asked for; 2 good and 1 bad rated answers"
    with pytest.raises(ConfigError, match="KTO needs answers rated good and bad"):
        choose_objective(FinetuneSettings(objective="kto"), sft_rows(0, 5), kto_rows(5, 0))


def test_where_kto_cannot_run_auto_trains_sft_and_says_why(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    why = "TRL's KTOTrainer needs triton, which this torch lacks, or unsloth's kernels"
    sft = choose_objective(FinetuneSettings(), sft_rows(3, 20), kto_rows(20, 12), unavailable=why)
    assert sft.kind == "sft" and sft.reason.endswith(f"bad rated answers; not KTO: {why}")
    with pytest.raises(ConfigError, match="Cannot train with KTO: TRL's KTOTrainer needs triton"):
        choose_objective(FinetuneSettings(objective="kto"), sft_rows(0, 5), kto_rows(5, 5),
                         unavailable=why)
    # Without triton (CPU torch) only unsloth, which brings its own kernel, can run KTO.
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "triton" else find_spec(name, *a))
    assert kto_unavailable("peft") == why and kto_unavailable("unsloth") is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert kto_unavailable("peft") is None


def test_kto_weights_balance_unequal_counts_as_the_paper_advises() -> None:
    for good, bad in ((30, 10), (10, 30), (12, 12), (5, 0)):
        w_good, w_bad = kto_weights(good, bad)
        assert max(w_good, w_bad) == 1.0
        if good and bad:
            assert 1 <= w_good * good / (w_bad * bad) <= 4 / 3


def test_kto_runs_have_their_own_fingerprint_and_sft_runs_keep_theirs(tmp_path: Path) -> None:
    base = base_file(tmp_path / "base.gguf")
    ref = BaseRef("gguf", base, file_sha256(base))
    ft = FinetuneSettings()
    sft = _fingerprint(ref, "d" * 64, ft, "unsloth")
    assert sft == _fingerprint(ref, "d" * 64, ft.model_copy(update={"kto_beta": 0.5}), "unsloth")
    kto = _fingerprint(ref, "d" * 64, ft, "unsloth+kto")
    assert kto != sft
    assert kto != _fingerprint(ref, "d" * 64, ft.model_copy(update={"kto_beta": 0.5}),
                               "unsloth+kto")

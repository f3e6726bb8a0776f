"""A fine-tune run on disk: where each step writes (``RunLayout``) and what (one model per file).

Every step writes its result through its model and the next step reads it back through the same
model, so a file is validated once, where it is read; a missing or damaged one is a ConfigError
naming the step that makes it again. The JSON has the shape earlier runs wrote: ``export.json``'s
``"sha256": {"adapter.gguf": …}`` is ``ExportResult.sha256.adapter_gguf`` through an alias.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import ConfigError
from core.gguf import BaseMismatch
from finetune.base import BaseInfo, BaseRef, ChatTemplate

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")

MANIFEST = "localcat-adapter.json"
ADAPTER_GGUF = "adapter.gguf"
MODELFILE = "Modelfile"


@dataclass(frozen=True)
class RunLayout:
    """The files of a run under ``<data_dir>/finetune/<run>/``: dataset/, train/, eval/, export/."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    # dataset/: the splits, KTO rows and the report (written by `finetune dataset`)
    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    def split(self, split: Split) -> Path:
        return self.dataset / f"{split}.jsonl"

    @property
    def kto(self) -> Path:
        return self.dataset / "kto.jsonl"

    @property
    def dataset_json(self) -> Path:
        return self.dataset / "report.json"

    # train/: checkpoints, the adapter with its manifest, the loss curve (`finetune train`)
    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def checkpoints(self) -> Path:
        return self.train / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.train / "adapter"

    @property
    def manifest_json(self) -> Path:
        return self.adapter / MANIFEST

    @property
    def fingerprint(self) -> Path:
        return self.train / "fingerprint.txt"

    @property
    def loss_json(self) -> Path:
        return self.train / "loss.json"

    @property
    def loss_png(self) -> Path:
        return self.train / "loss.png"

    @property
    def train_json(self) -> Path:
        return self.train / "train.json"

    # eval/ (`finetune eval`)
    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def eval_json(self) -> Path:
        return self.eval / "eval.json"

    @property
    def eval_md(self) -> Path:
        return self.eval / "eval.md"

    # export/: the adapter's copy, its GGUF, the Modelfile (`finetune export`)
    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def export_adapter(self) -> Path:
        return self.export / "adapter"

    @property
    def export_gguf(self) -> Path:
        return self.export / ADAPTER_GGUF

    @property
    def modelfile(self) -> Path:
        return self.export / MODELFILE

    @property
    def export_json(self) -> Path:
        return self.export / "export.json"

    # --- reading the steps' results ---------------------------------------------------------------

    def _redo(self, step: str) -> str:
        return f"`localcat finetune {step} --run {self.name}`"

    def read_dataset(self) -> DatasetReport:
        return DatasetReport.read(self.dataset_json, f"build it with {self._redo('dataset')}",
                                  missing=f"Run {self.name} has no data set")

    def read_train(self) -> TrainResult:
        return TrainResult.read(self.train_json, f"train again with {self._redo('train')} --restart")

    def read_manifest(self) -> AdapterManifest:
        return read_manifest(self.adapter)

    def read_eval(self) -> EvalReport:
        return EvalReport.read(self.eval_json, f"evaluate it with {self._redo('eval')}",
                               missing=f"Run {self.name} has not been evaluated")

    def read_export(self) -> ExportResult:
        return ExportResult.read(self.export_json, f"run {self._redo('export')} first",
                                 missing=f"Run {self.name} has not been exported")


def read_manifest(adapter_dir: Path) -> AdapterManifest:
    """The manifest of a trained adapter folder (the run's, its export's or a version's copy)."""
    return AdapterManifest.read(
        adapter_dir / MANIFEST, "train it (again) with `localcat finetune train --restart`",
        missing=f"{adapter_dir} is not a trained LocalCat adapter (no {MANIFEST})",
    )


# --- the models -------------------------------------------------------------------------------------


class _Model(BaseModel):
    # Aliases are the on-disk keys that are not identifiers ("adapter.gguf"); dumps use them.
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)


class Artifact(_Model):
    """A step's JSON file: written and read only through its model."""

    WHAT: ClassVar[str] = "result"

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path, fix: str, *, missing: str | None = None) -> Self:
        """The file at ``path``, validated; ConfigError with ``fix`` when it is missing or damaged."""
        if not path.is_file():
            raise ConfigError(missing or f"There is no {cls.WHAT} at {path}", fix)
        try:
            return cls.model_validate_json(path.read_bytes())
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "the file"
            raise ConfigError(
                f"{path} is not a valid {cls.WHAT} ({where}: {first['msg']}; "
                f"{err.error_count()} error(s))", fix,
            ) from err


class DatasetReport(Artifact):
    """dataset/report.json: what the feedback gave, what was dropped and why."""

    WHAT: ClassVar[str] = "data set report"

    run: str
    path: Path
    feedback_rows: int = 0
    sft: dict[Split, int] = Field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    kto: dict[Split, int] = Field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    sources: dict[str, int] = Field(default_factory=dict)
    context: dict[str, int] = Field(default_factory=dict)
    dropped: dict[str, int] = Field(default_factory=dict)
    test_fallback: bool = False
    sha256: str = ""

    def summary(self) -> str:
        sft = ", ".join(f"{k} {v}" for k, v in self.sft.items())
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        return (f"{self.feedback_rows} rated answers → SFT {sft}; KTO {sum(self.kto.values())} "
                f"rows; context from {self.context}; dropped: {dropped}")


class ExampleCounts(_Model):
    train: int
    val: int
    too_long: int
    good: int | None = None  # KTO: training rows rated good (thumbs up, corrections) and bad
    bad: int | None = None


class TrainResult(Artifact):
    """train/train.json: how the adapter was trained."""

    WHAT: ClassVar[str] = "training result"

    run: str
    trainer: Literal["unsloth", "peft"]
    fallback: bool
    objective: Literal["sft", "kto"] = "sft"  # what it learned from: see `Objective`
    objective_reason: str = ""
    base: BaseInfo
    examples: ExampleCounts
    steps: int
    steps_this_session: int
    resumed_from: str | None
    seconds: float
    steps_per_second: float | None
    cpu_seconds: float  # steadier than wall time on a shared machine
    train_loss: float
    final_eval_loss: float | None
    adapter: Path
    loss_png: Path

    def summary(self) -> str:
        note = " (plain PEFT fallback)" if self.fallback else ""
        how = f" of {self.objective.upper()} ({self.objective_reason})" if self.objective_reason else ""
        return (f"{self.run}: {self.steps} steps{how} with {self.trainer}{note} in {self.seconds}s "
                f"({self.steps_per_second} steps/s), loss {self.train_loss}; adapter "
                f"{self.adapter}; curve {self.loss_png}")


class TrainPoint(_Model):
    step: int
    loss: float
    learning_rate: float = 0.0


class EvalPoint(_Model):
    step: int
    eval_loss: float


class LossHistory(Artifact):
    """train/loss.json: training and validation loss per logged step."""

    WHAT: ClassVar[str] = "loss history"

    train: list[TrainPoint] = Field(default_factory=list)
    eval: list[EvalPoint] = Field(default_factory=list)


class Scores(_Model):
    """One model's means over the test split (answer measures: core.answer_metrics).

    Reports written before the answer gate have only the first four; ``answer_f1`` was then the
    F1 of all word tokens and citation marks, now that of content words (``token_f1``).
    """

    loss: float
    perplexity: float
    answer_f1: float
    exact_match: float
    key_fact_recall: float | None = None
    citation_agreement: float | None = None  # over the answers that cite, where the reference does
    cited: float | None = None  # share of answers with a [n] mark
    looping: float | None = None  # share of answers that loop
    quality: float | None = None  # the gate's per-answer score, averaged


class Metrics(_Model):
    base: Scores
    adapter: Scores


class Sample(_Model):
    question: str
    reference: str
    base: str
    adapter: str


class Gate(_Model):
    """The promotion decision's figures: the gain's bootstrap interval and the looping guard."""

    metric: str
    questions: int
    min_questions: int
    gain: float | None  # mean of adapter − base per question; None: too few to judge
    low: float | None
    high: float | None
    confidence: float
    resamples: int
    seed: int
    loops_base: int
    loops_adapter: int


class QuestionScore(_Model):
    """The gate's score of one test question's answers (kept so the decision can be rechecked)."""

    id: str
    base: float
    adapter: float


class EvalReport(Artifact):
    """eval/eval.json: base vs adapter on the test split, and whether the adapter is promoted."""

    WHAT: ClassVar[str] = "evaluation report"

    run: str
    base: BaseInfo
    examples: int
    too_long: int
    metrics: Metrics
    promoted: bool
    reason: str
    rule: str
    seconds: float
    samples: list[Sample]
    gate: Gate | None = None  # None in reports written before the answer gate
    scores: list[QuestionScore] = Field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.run}: {'PROMOTED' if self.promoted else 'not promoted'} — the adapter "
                f"{self.reason}")


class ExportChecksums(_Model):
    adapter_gguf: str = Field(alias="adapter.gguf")
    adapter_safetensors: str = Field(alias="adapter_model.safetensors")


class ExportSizes(_Model):
    adapter_gguf: int = Field(alias="adapter.gguf")


class ExportResult(Artifact):
    """export/export.json: the exported files and their checksums."""

    WHAT: ClassVar[str] = "export result"

    run: str
    base: BaseInfo
    adapter_dir: Path
    adapter_gguf: Path
    modelfile: Path
    sha256: ExportChecksums
    sizes: ExportSizes = Field(alias="bytes")
    chat_template_sha256: str

    def summary(self) -> str:
        return (f"{self.run}: {self.adapter_gguf} ({self.sizes.adapter_gguf:,} bytes), "
                f"Modelfile {self.modelfile}")


class TemplateInfo(_Model):
    """The chat template an adapter was trained with, and where its replies stop."""

    source: str
    sha256: str
    bos_token: str = ""
    eos_token: str = ""
    stops: list[str]

    @classmethod
    def of(cls, template: ChatTemplate, stops: list[str]) -> TemplateInfo:
        return cls(source=template.source, sha256=template.sha256, bos_token=template.bos_token,
                   eos_token=template.eos_token, stops=stops)

    def template(self) -> ChatTemplate:
        return ChatTemplate(self.source, bos_token=self.bos_token, eos_token=self.eos_token)


class LoraInfo(_Model):
    r: int
    alpha: int
    dropout: float
    target_modules: list[str]


class DatasetRef(_Model):
    run: str
    sha256: str
    sft: dict[Split, int]


class AdapterManifest(Artifact):
    """localcat-adapter.json, kept with the adapter's weights wherever they are copied."""

    WHAT: ClassVar[str] = "LocalCat adapter manifest"

    format: Literal[1] = 1
    base: BaseInfo
    chat_template: TemplateInfo
    trainer: Literal["unsloth", "peft"]
    objective: Literal["sft", "kto"] = "sft"
    lora: LoraInfo
    dataset: DatasetRef
    fingerprint: str
    versions: dict[str, str]
    created_at: datetime

    def check_base(self, base: BaseRef) -> None:
        """Refuse an adapter trained on another base model than ``base``."""
        trained = self.base
        if trained.sha256 != base.sha256:
            raise BaseMismatch(
                f"The adapter was trained on {trained.name} (sha256 {trained.sha256[:12]}…), "
                f"not on {base.name} (sha256 {base.sha256[:12]}…)",
                f"use --base {trained.path}, or train a new adapter on {base.name}",
            )

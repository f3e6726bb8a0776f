"""The ``[finetune]`` section of the settings tree (``Settings.finetune``, ``LOCALCAT_FINETUNE__*``).

Kept beside the code that reads it; ``assistant/settings.py`` attaches it to ``Settings`` like every
other section, so there is still one tree, one file and one set of environment variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

# Words that mark a row as abusive. Deliberately short: the point is to keep obvious abuse out of
# training data, not to moderate. Extend it with LOCALCAT_FINETUNE__BLOCKLIST='["...", ...]'.
DEFAULT_BLOCKLIST = [
    "fuck", "fucking", "motherfucker", "shit", "bullshit", "cunt", "bitch", "asshole",
    "dickhead", "bastard", "wanker", "retard", "kill yourself", "kys",
]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class FinetuneSettings(BaseModel):
    base: str | None = Field(
        None,
        description="Model to fine-tune: a GGUF file, a Hugging Face folder, or 'ollama:NAME' "
        "(a model pulled into the local Ollama). Unset: the model the embedded runtime serves "
        "(llm.model_path, else SmolLM2).",
    )
    trainer: Literal["unsloth", "peft"] = Field(
        "unsloth",
        description="'unsloth' (FastLanguageModel + TRL SFTTrainer), or 'peft', a plain "
        "transformers Trainer with a PEFT LoRA for machines where unsloth cannot be installed.",
    )
    min_examples: int = Field(
        20, ge=1, description="Fewest training examples a run accepts (after cleaning)."
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of questions for validation.")
    test_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of questions held out for the promotion test."
    )
    keep_old_prompts: bool = Field(
        False,
        description="Also use answers made with an older PROMPT_VERSION (their prompt can only be "
        "rebuilt with today's wording).",
    )
    blocklist: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BLOCKLIST),
        description="Rows whose question or target contains one of these words are dropped.",
    )
    max_seq_length: int = Field(
        2048, ge=64, description="Longest training example in tokens; longer ones are dropped."
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: list(LORA_TARGETS), description="Linear layers given a LoRA."
    )
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(3.0, gt=0, description="Passes over the training split.")
    max_steps: int = Field(0, ge=0, description="Stop after this many steps (0: epochs decide).")
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every this many steps.")
    seed: int = Field(0)
    threads: int = Field(0, ge=0, description="torch threads while training (0: torch's default).")
    eval_max_new_tokens: int = Field(
        128, ge=1, description="Longest answer generated per test question."
    )
    eval_limit: int = Field(200, ge=1, description="Most test questions evaluated.")
    lora_outtype: Literal["f32", "f16", "bf16", "q8_0"] = Field(
        "f16", description="Tensor type of the GGUF adapter."
    )
    llama_cpp_tools: Path | None = Field(
        None,
        description="Folder with llama.cpp's convert_lora_to_gguf.py and gguf-py. Unset: "
        "<venv>/llama.cpp-tools, where ./scripts/setup unpacks them.",
    )
    ollama_name: str = Field(
        "localcat", description="Ollama name of fine-tuned models: NAME-<base>:v<N>."
    )

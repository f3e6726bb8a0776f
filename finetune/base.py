"""The base model as the served runtime sees it: its file and identity, chat template and tokenizer.

Training, evaluation and the Modelfile all take the chat template and token ids from here, and
here takes them from llama.cpp itself (the GGUF's own template rendered by llama-cpp-python's
formatter, its own tokenizer), so what the model learns is byte for byte what it is later served.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from core.errors import ConfigError, MissingDependency
from core.gguf import file_sha256
from core.settings import LLMSettings

LLAMA_CPP_INSTALL = "./scripts/setup"
FINETUNE_INSTALL = "./scripts/setup --finetune"

Messages = Sequence[dict[str, str]]


def require(module: str, what: str, install: str = FINETUNE_INSTALL) -> Any:
    """Import a heavy optional module, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependency(what, install) from err


def dir_sha256(path: Path) -> str:
    """sha256 over the weight and config files of a Hugging Face folder."""
    digest = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".json", ".model", ".bin"):
            digest.update(f.name.encode() + b"\0" + file_sha256(f).encode())
    return digest.hexdigest()


class BaseInfo(BaseModel):
    """A base model as the artifacts made from it record it."""

    kind: Literal["gguf", "hf"]
    path: Path
    sha256: str
    name: str
    source: str = ""


@dataclass(frozen=True)
class BaseRef:
    """Which base model: a GGUF file (served as is) or a Hugging Face folder."""

    kind: Literal["gguf", "hf"]
    path: Path
    sha256: str
    source: str = ""

    @property
    def name(self) -> str:
        stem = self.path.name[:-5] if self.path.name.lower().endswith(".gguf") else self.path.name
        return stem

    @property
    def slug(self) -> str:
        """A name Ollama accepts, e.g. ``smollm2-135m-instruct.q4_1``."""
        return re.sub(r"[^a-z0-9._-]+", "-", self.name.lower()).strip("-._") or "base"

    def describe(self) -> BaseInfo:
        return BaseInfo(kind=self.kind, path=self.path, sha256=self.sha256, name=self.name,
                        source=self.source)


def resolve_base(spec: str | None, llm: LLMSettings) -> BaseRef:
    """The base named by ``spec`` (GGUF file, HF folder, ``ollama:NAME``), else the served model."""
    if spec is None:
        from core.llm import embedded_model_path

        path = embedded_model_path(llm)
        source = "llm.model_path" if llm.model_path else f"catalog {llm.model}"
        return _ref(Path(path), source)
    if spec.startswith("ollama:"):
        return _ref(_ollama_blob(spec[len("ollama:"):], llm.ollama_host), spec)
    return _ref(Path(spec).expanduser(), spec)


def _ref(path: Path, source: str) -> BaseRef:
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ConfigError(
                    f"{path} is not a GGUF file",
                    "set LOCALCAT_FINETUNE__BASE to a .gguf model, a Hugging Face folder or "
                    "ollama:NAME",
                )
        return BaseRef("gguf", path.resolve(), file_sha256(path), source)
    if path.is_dir() and (path / "config.json").is_file():
        return BaseRef("hf", path.resolve(), dir_sha256(path), source)
    raise ConfigError(
        f"Base model {path} does not exist (or is neither a GGUF file nor a Hugging Face folder)",
        "set LOCALCAT_FINETUNE__BASE / --base to a .gguf file, a folder with config.json, or "
        "ollama:NAME",
    )


def _ollama_blob(name: str, host: str) -> Path:
    """The GGUF file behind a model pulled into a local Ollama (its Modelfile's FROM line)."""
    import httpx
    from ollama import ResponseError

    from core.llm import ollama_client

    try:
        modelfile = ollama_client(host, 30).show(name).modelfile or ""
    except ResponseError as err:
        if err.status_code == 404:
            raise ConfigError(f"Ollama at {host} has no model {name!r}",
                              f"run `ollama pull {name}`") from err
        raise ConfigError(f"Ollama at {host} could not show {name!r}: {err.error}",
                          "see the Ollama server's log (`ollama serve`)") from err
    except (ConnectionError, httpx.HTTPError) as err:
        raise ConfigError(
            f"Cannot reach Ollama at {host} to find the base {name!r} ({err})",
            "start it with `ollama serve`, or set --base to a GGUF file",
        ) from err
    found = re.search(r"^FROM\s+(\S.*)$", modelfile, re.MULTILINE)
    path = Path(found[1].strip()) if found else None
    if path is None or not path.is_file():
        raise ConfigError(
            f"Ollama's model {name!r} is stored at {path}, which this machine cannot read",
            "fine-tune on the machine that runs Ollama, or set --base to the GGUF file",
        )
    return path


# --- chat template -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template with the tokens it is rendered with, rendered as llama-cpp-python does."""

    source: str
    bos_token: str = ""
    eos_token: str = ""
    _formatters: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def render(self, messages: Messages, add_generation_prompt: bool) -> str:
        formatter = self._formatters.get(add_generation_prompt)
        if formatter is None:
            # The very class ChatLlamaCpp's llama.cpp uses for a GGUF's template: same Jinja
            # environment (trim_blocks, lstrip_blocks, generation tags), same variables.
            fmt = require("llama_cpp.llama_chat_format", "llama-cpp-python", LLAMA_CPP_INSTALL)
            formatter = fmt.Jinja2ChatFormatter(
                template=self.source,
                eos_token=self.eos_token,
                bos_token=self.bos_token,
                add_generation_prompt=add_generation_prompt,
            )
            self._formatters[add_generation_prompt] = formatter
        return formatter(messages=list(messages)).prompt

    def split(self, messages: Messages, answer: str, stops: Sequence[str] = ()) -> tuple[str, str]:
        """(prompt, completion) texts: the prompt as served, the completion as it must be generated.

        The completion is the full conversation's text past the prompt, cut after the first stop
        marker: the runtime stops there, so nothing after it is ever generated or worth learning.
        """
        prompt = self.render(messages, add_generation_prompt=True)
        full = self.render([*messages, {"role": "assistant", "content": answer}], False)
        if not full.startswith(prompt):
            raise ConfigError(
                "The chat template renders an assistant reply that does not extend the prompt",
                "fine-tune a base whose chat template appends each message (e.g. ChatML)",
            )
        completion = full[len(prompt):]
        at = completion.find(answer)
        cut = len(completion)
        for stop in stops:
            i = completion.find(stop, at + len(answer) if at >= 0 else 0)
            if i >= 0:
                cut = min(cut, i + len(stop))
        return prompt, completion[:cut]


# --- tokenizer -----------------------------------------------------------------------------------


class Vocab:
    """A base's tokenizer, chat template and special tokens.

    For a GGUF it is llama.cpp's own vocabulary (loaded without weights), so token ids are the
    ones the served model gets; for a Hugging Face folder its tokenizer.
    """

    def __init__(self, base: BaseRef):
        self.base = base
        self._llama: Any = None
        self._hf: Any = None
        if base.kind == "gguf":
            llama_cpp = require("llama_cpp", "llama-cpp-python", LLAMA_CPP_INSTALL)
            self._llama = llama_cpp.Llama(
                model_path=str(base.path), vocab_only=True, verbose=False
            )
            meta = self._llama.metadata
            template = meta.get("tokenizer.chat_template")
            eos_id, bos_id = self._llama.token_eos(), self._llama.token_bos()
            eos = self._llama._model.token_get_text(eos_id) if eos_id != -1 else ""
            bos = self._llama._model.token_get_text(bos_id) if bos_id != -1 else ""
            self.eos_id: int | None = eos_id if eos_id != -1 else None
            self.pad_id: int | None = int(meta["tokenizer.ggml.padding_token_id"]) if (
                "tokenizer.ggml.padding_token_id" in meta) else self.eos_id
        else:
            transformers = require("transformers", "transformers")
            self._hf = transformers.AutoTokenizer.from_pretrained(str(base.path))
            template = self._hf.chat_template if isinstance(self._hf.chat_template, str) else None
            eos, bos = self._hf.eos_token or "", self._hf.bos_token or ""
            self.eos_id = self._hf.eos_token_id
            self.pad_id = self._hf.pad_token_id if self._hf.pad_token_id is not None else self.eos_id
        if not template:
            raise ConfigError(
                f"{base.path.name} has no chat template, so LocalCat cannot know how it is prompted",
                "fine-tune an instruct (chat) model; base models without a template are not "
                "supported",
            )
        self.template = ChatTemplate(template, bos_token=bos, eos_token=eos)

    def encode(self, text: str) -> list[int]:
        """Token ids for ``text``, special tokens parsed, no BOS added: as llama-cpp-python tokenizes
        a prompt rendered from a Jinja template (its formatter reports the special tokens as added)."""
        if self._llama is not None:
            return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        return list(self._hf(text, add_special_tokens=False)["input_ids"])

    def token_text(self, token_id: int) -> str:
        """The text of one token, special tokens included (``<|im_end|>``)."""
        if self._llama is not None:
            return self._llama._model.token_get_text(token_id)
        return self._hf.convert_ids_to_tokens(token_id)

    def decode(self, ids: Sequence[int]) -> str:
        if self._llama is not None:
            return self._llama.detokenize(list(ids)).decode("utf-8", errors="replace")
        return self._hf.decode(list(ids), skip_special_tokens=False)

    def close(self) -> None:
        if self._llama is not None:
            self._llama.close()
            self._llama = None

    def __enter__(self) -> Vocab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- Hugging Face weights ------------------------------------------------------------------------


def hf_weights(base: BaseRef, cache_root: Path, vocab: Vocab | None = None) -> Path:
    """A Hugging Face folder with the base's weights, for training and evaluation.

    A GGUF is loaded with transformers' GGUF loader (dequantised) and saved once per base under
    ``cache_root/<sha256>``. transformers marks such a model as GGUF-quantised, and the Trainer
    refuses to train that, so the model is rebuilt from its config without the mark and the
    weights copied in.
    """
    if base.kind == "hf":
        return base.path
    out = cache_root / base.sha256[:16]
    stamp = out / "localcat-base.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("sha256") == base.sha256:
        return out
    torch = require("torch", "torch")
    transformers = require("transformers", "transformers")
    require("gguf", "The gguf package (transformers' GGUF loader)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(base.path.parent), gguf_file=base.path.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    own = vocab or Vocab(base)
    try:
        # transformers' GGUF tokenizer conversion gets some special tokens wrong (SmolLM2's EOS
        # comes out as <|im_start|>): take them from llama.cpp's reading of the same file.
        config.eos_token_id = own.eos_id
        config.pad_token_id = own.pad_id
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        del loaded
        model.generation_config.eos_token_id = own.eos_id
        model.generation_config.pad_token_id = own.pad_id
        model.save_pretrained(tmp)
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(base.path.parent), gguf_file=base.path.name
        )
        tokenizer.eos_token = own.template.eos_token or tokenizer.eos_token
        tokenizer.pad_token = (
            own.token_text(own.pad_id) if own.pad_id is not None else tokenizer.eos_token
        )
        tokenizer.chat_template = own.template.source
        tokenizer.save_pretrained(tmp)
    finally:
        if vocab is None:
            own.close()
    (tmp / "localcat-base.json").write_text(base.describe().model_dump_json(indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out

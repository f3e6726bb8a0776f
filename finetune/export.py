"""Export a trained adapter: safetensors (PEFT), GGUF (llama.cpp's convert_lora_to_gguf.py), Modelfile.

llama.cpp's converters ship only in the llama-cpp-python sdist; ./scripts/setup unpacks them into
``<venv>/llama.cpp-tools`` (README, "unsloth on a CPU"). They run as a subprocess of this Python, with
their own ``gguf-py`` first on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from core.errors import LocalCatError, MissingDependency
from core.gguf import AdapterCorrupt, check_lora_gguf, file_sha256
from core.settings import FinetuneSettings
from finetune.artifacts import (
    ADAPTER_GGUF,
    MANIFEST,
    ExportChecksums,
    ExportResult,
    ExportSizes,
    RunLayout,
)
from finetune.base import BaseRef, Vocab, hf_weights
from finetune.modelfile import render_modelfile

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", MANIFEST)


def llama_cpp_tools(ft: FinetuneSettings) -> Path:
    tools = ft.llama_cpp_tools or Path(sys.prefix) / "llama.cpp-tools"
    if not (tools / "convert_lora_to_gguf.py").is_file() or not (tools / "gguf-py").is_dir():
        raise MissingDependency(f"llama.cpp's convert_lora_to_gguf.py (looked in {tools})",
                                "./scripts/setup")
    return tools


def _run_tool(tools: Path, script: str, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tools / "gguf-py"), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    return subprocess.run([sys.executable, str(tools / script), *args], env=env,
                          capture_output=True, text=True, check=False)


def check_safetensors(path: Path) -> None:
    """Open every tensor of a safetensors file, or raise AdapterCorrupt."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                f.get_slice(key)
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ValueError
        raise AdapterCorrupt(
            f"The adapter {path} is damaged or not a safetensors file ({err})",
            "train it again (`localcat finetune train --restart`)",
        ) from err


def export(run_dir: Path, base: BaseRef, ft: FinetuneSettings, *, cache_dir: Path) -> ExportResult:
    """Write export/{adapter/, adapter.gguf, Modelfile, export.json}; return export.json's data."""
    run = RunLayout(run_dir)
    manifest = run.read_manifest()
    manifest.check_base(base)
    if base.kind != "gguf":
        raise LocalCatError(
            f"{base.name} is a Hugging Face folder; llama.cpp and Ollama serve GGUF files",
            "convert it once with llama.cpp's convert_hf_to_gguf.py and fine-tune the GGUF",
        )
    check_safetensors(run.adapter / "adapter_model.safetensors")
    tools = llama_cpp_tools(ft)
    shutil.rmtree(run.export, ignore_errors=True)
    run.export_adapter.mkdir(parents=True)
    for name in ADAPTER_FILES:
        shutil.copy2(run.adapter / name, run.export_adapter / name)

    with Vocab(base) as vocab:
        hf_dir = hf_weights(base, cache_dir, vocab)
        template = vocab.template
    if template.sha256 != manifest.chat_template.sha256:
        raise LocalCatError(
            "The base's chat template changed since the adapter was trained",
            "train the adapter again on this base",
        )
    gguf = run.export_gguf
    done = _run_tool(tools, "convert_lora_to_gguf.py",
                     [str(run.export_adapter), "--base", str(hf_dir), "--outfile", str(gguf),
                      "--outtype", ft.lora_outtype])
    if done.returncode != 0 or not gguf.is_file():
        raise LocalCatError(
            f"convert_lora_to_gguf.py failed (exit {done.returncode}): {done.stderr.strip()[-1500:]}",
            "check that the adapter matches the base; see the message above",
        )
    check_lora_gguf(gguf, base.path)
    modelfile = render_modelfile(
        base.path, f"./{ADAPTER_GGUF}", template,
        comment=f"LocalCat fine-tune {run.name}: {base.name} + LoRA ({manifest.trainer})\n"
                f"base sha256 {base.sha256}",
    )
    run.modelfile.write_text(modelfile)
    result = ExportResult(
        run=run.name,
        base=base.describe(),
        adapter_dir=run.export_adapter,
        adapter_gguf=gguf,
        modelfile=run.modelfile,
        sha256=ExportChecksums(
            adapter_gguf=file_sha256(gguf),
            adapter_safetensors=file_sha256(run.export_adapter / "adapter_model.safetensors"),
        ),
        sizes=ExportSizes(adapter_gguf=gguf.stat().st_size),
        chat_template_sha256=template.sha256,
    )
    result.write(run.export_json)
    return result

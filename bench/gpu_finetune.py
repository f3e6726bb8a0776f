"""Fine-tune speed on a GPU: unsloth vs plain PEFT, through LocalCat's own trainers (issue 9).

    .venv/bin/python bench/gpu_finetune.py --prepare            # here: shapes, tokenizer, rows
    python3 bench/gpu_finetune.py --device-run --out DIR        # on the GPU machine
    .venv/bin/python bench/gpu_finetune.py --write DIR/results.jsonl --device "…"

The Qwen2.5-Coder 0.5B and 1.5B bases exist here only as Q4_K_M GGUFs, too big to carry to the
GPU machine, so the models trained there have their shapes (config read from the GGUF) and random
weights: a training step's time depends on shapes, sequence lengths and batch size, not on the
values. ``--prepare`` writes into the ignored folder .gpu-bench/ each size's config.json, the
tokenizer (as ``finetune.base.hf_weights`` fixes it: llama.cpp's EOS, padding and chat template),
and the Python FAQ's reference answers tokenised as SFT rows by ``finetune.train.tokenize_rows``:
each question asked with LocalCat's answer prompt over k retrieved-sized chunks (the gold
document's first chunk and k-1 others, chunked as ingest chunks), the reference answer the target.

``--device-run`` runs each size × trainer in its own process (cheap arms first), each capped in
time: it builds the random bf16 model once per size, loads it with ``finetune.train._load`` and
trains with ``finetune.train._trainer`` (unsloth: FastLanguageModel + TRL SFTTrainer; peft: plain
transformers Trainer) at the settings' defaults, ``--warmup`` steps then ``--steps`` timed ones.
Each arm's JSON line is printed and appended to OUT/results.jsonl as soon as it ends, so one
failure loses nothing else. The loss of random weights means nothing and is kept only as a sign
that training ran.

The device image lacks these; they travel as wheels in the ignored .whl/ (cp312, manylinux,
``--no-deps``): unsloth and unsloth_zoo 2026.10.9, trl 1.15.0, datasets 4.8.5, dill, multiprocess,
json5, cut_cross_entropy, peft 0.21.2, pydantic (+ pydantic_core, annotated-types,
typing-inspection, typing_extensions), pydantic-settings, python-dotenv, langchain-core, fsspec,
and bitsandbytes (unsloth on CUDA will not load a model without it, even for a 16-bit LoRA)
repacked with only its CUDA 13.0 and CPU libraries to fit the 64 MiB that travels. The call:
``pip install --no-index --no-deps --target /tmp/site .whl/*.whl; PYTHONPATH=/tmp/site python3
bench/gpu_finetune.py --device-run --prep .gpu-bench --out $OUT --steps 40 --warmup 5``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, append

PREP = REPO / ".gpu-bench"
CATALOG = Path.home() / ".local/share/localcat/models/catalog"
FAQ = Path.home() / ".local/share/localcat/eval/python-faq"
SIZES = {"0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
         "1.5b": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"}
TRAINERS = ("peft", "unsloth")
# A model small enough for a CPU: the real tokenizer and vocabulary, two tiny layers.
TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)


# --- here: shapes, tokenizer and rows -------------------------------------------------------------


def prepare(out: Path, k: int, seed: int) -> None:
    """Each size's config.json, the shared tokenizer and the tokenised FAQ rows, into ``out``."""
    import hashlib

    import transformers
    from langchain_core.documents import Document

    from core.llm import to_llama_messages
    from core.prompt import PROMPT_VERSION, answer_prompt, format_context
    from core.settings import ChunkingSettings, FinetuneSettings
    from finetune.base import BaseRef, Vocab
    from finetune.modelfile import stop_markers
    from finetune.train import tokenize_rows
    from ingest.chunking import chunk_sections
    from localcat.evaluation.datasets import load_answers, load_beir

    out.mkdir(parents=True, exist_ok=True)
    vocab_sha = {}
    for size, name in SIZES.items():
        gguf = CATALOG / name
        with Vocab(BaseRef("gguf", gguf, sha256="")) as vocab:
            vocab_sha[size] = hashlib.sha256("\0".join(
                vocab.token_text(i) for i in range(vocab._llama.n_vocab())).encode()).hexdigest()
            config = transformers.AutoConfig.from_pretrained(str(CATALOG), gguf_file=name)
            if hasattr(config, "quantization_config"):
                delattr(config, "quantization_config")
            # As hf_weights does: llama.cpp's reading of the special tokens, not the converter's.
            config.eos_token_id, config.pad_token_id = vocab.eos_id, vocab.pad_id
            config.tie_word_embeddings = not _has_tensor(gguf, "output.weight")
            (out / size).mkdir(exist_ok=True)
            config.save_pretrained(out / size)
            if size == "0.5b":
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(CATALOG), gguf_file=name)
                tokenizer.eos_token = vocab.template.eos_token or tokenizer.eos_token
                tokenizer.pad_token = (vocab.token_text(vocab.pad_id) if vocab.pad_id is not None
                                       else tokenizer.eos_token)
                tokenizer.chat_template = vocab.template.source
                tokenizer.save_pretrained(out / "tokenizer")
                rows = faq_rows(k, seed, load_beir, load_answers, chunk_sections, Document,
                                ChunkingSettings(), answer_prompt(PROMPT_VERSION), format_context,
                                to_llama_messages)
                examples, too_long = tokenize_rows(rows, vocab, FinetuneSettings().max_seq_length,
                                                   stop_markers(vocab.template))
                pad_id = vocab.pad_id if vocab.pad_id is not None else (vocab.eos_id or 0)
        print(f"{size}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
              f"tied embeddings {config.tie_word_embeddings}", file=sys.stderr)
    if len(set(vocab_sha.values())) != 1:
        raise SystemExit("the two GGUFs' vocabularies differ: one tokenizer cannot serve both")
    with (out / "rows.jsonl").open("w") as f:
        for e in examples:
            f.write(json.dumps({"id": e.id, "input_ids": e.input_ids,
                                "prompt_len": e.prompt_len}) + "\n")
    lengths = sorted(len(e.input_ids) for e in examples)
    meta = {"rows": len(examples), "too_long": too_long, "pad_id": pad_id, "k": k,
            "tokens_median": lengths[len(lengths) // 2], "tokens_max": lengths[-1],
            "tokens_mean": round(sum(lengths) / len(lengths), 1)}
    (out / "rows.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta))


def _has_tensor(gguf: Path, name: str) -> bool:
    from gguf import GGUFReader

    return any(t.name == name for t in GGUFReader(str(gguf)).tensors)


def faq_rows(k, seed, load_beir, load_answers, chunk_sections, Document, chunking, prompt,
             format_context, to_llama_messages) -> list[dict]:
    """SFT rows as finetune.dataset writes them (messages + target) for the FAQ's answers."""
    beir = load_beir(FAQ)
    chunks = {}
    for doc_id, (title, text) in sorted(beir.corpus.items()):
        section = Document(page_content=text, metadata={"source": f"python-faq/{doc_id}",
                                                        "heading": title})
        chunks[doc_id] = chunk_sections([section], chunk_size=chunking.chunk_size,
                                        chunk_overlap=chunking.chunk_overlap)
    ids, rng, rows = sorted(chunks), random.Random(seed), []
    for a in load_answers(FAQ / "answers.jsonl"):
        gold = [s for s in a.sources if chunks.get(s)]
        if not a.answer or not gold:
            continue
        docs = [chunks[s][0] for s in gold[:k]]
        while len(docs) < k:
            other = rng.choice(ids)
            if other not in gold and chunks[other]:
                docs.append(rng.choice(chunks[other]))
        rng.shuffle(docs)  # the gold chunk is not always ranked first
        messages = to_llama_messages(prompt.format_messages(
            context=format_context(docs), history=[], question=a.question))
        rows.append({"id": a.id, "question": a.question, "messages": messages,
                     "target": a.answer})
    return rows


# --- on the GPU machine: one process per arm ---------------------------------------------------


def run_arm(size: str, trainer: str, prep: Path, work: Path, steps: int, warmup: int,
            tiny: bool, max_len: int) -> dict:
    """Build (once per size), load, and train one arm; returns its figures."""
    if trainer == "unsloth":
        from finetune.train import import_unsloth

        import_unsloth()  # before transformers, as finetune.train.train does
    import torch
    import transformers
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from core.settings import FinetuneSettings
    from finetune.train import Example, _load, _trainer, _versions

    cuda = torch.cuda.is_available()
    hf_dir = work / f"hf-{size}{'-tiny' if tiny else ''}"
    built = None
    if not (hf_dir / "config.json").is_file():
        started = time.perf_counter()
        config = transformers.AutoConfig.from_pretrained(prep / size)
        for key, value in (TINY.items() if tiny else ()):
            setattr(config, key, value)
        if tiny and getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:config.num_hidden_layers]
        transformers.set_seed(0)
        with torch.device("cuda" if cuda else "cpu"):
            model = transformers.AutoModelForCausalLM.from_config(
                config, dtype=torch.bfloat16 if cuda else torch.float32)
        model.save_pretrained(hf_dir.with_suffix(".tmp"))
        transformers.AutoTokenizer.from_pretrained(prep / "tokenizer").save_pretrained(
            hf_dir.with_suffix(".tmp"))
        hf_dir.with_suffix(".tmp").rename(hf_dir)
        del model
        if cuda:
            torch.cuda.empty_cache()
        built = round(time.perf_counter() - started, 1)

    meta = json.loads((prep / "rows.json").read_text())
    train_ex = []
    for line in (prep / "rows.jsonl").read_text().splitlines():
        r = json.loads(line)
        ids, p = r["input_ids"], r["prompt_len"]
        if len(ids) <= max_len:
            train_ex.append(Example(r["id"], "", "", "", ids, [-100] * p + ids[p:]))
    ft = FinetuneSettings(trainer=trainer, max_steps=warmup + steps, save_steps=10**6)
    transformers.set_seed(ft.seed)  # as train() does: LoRA init and data order
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model, tokenizer = _load(trainer, hf_dir, ft, torch)
    load_s = time.perf_counter() - started
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hf_trainer = _trainer(trainer, model, tokenizer, train_ex, [], work / f"ckpt-{size}-{trainer}",
                          ft, ft.max_steps, meta["pad_id"], torch)
    for cb in (PrinterCallback, ProgressCallback):
        hf_trainer.remove_callback(cb)

    # Tokens through the model: attention-mask ones (not padding), and positions (with padding).
    counts = {"real": torch.zeros((), dtype=torch.long, device="cuda" if cuda else "cpu"),
              "positions": 0, "calls": 0}

    def count(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if ids is not None:
            counts["positions"] += ids.numel()
            counts["real"] += (mask.sum() if mask is not None else ids.numel())
            counts["calls"] += 1

    model.register_forward_pre_hook(count, with_kwargs=True)
    marks: list[tuple[int, float, int, int]] = []

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            marks.append((state.global_step, time.perf_counter(), int(counts["real"]),
                          counts["positions"]))

    hf_trainer.add_callback(Clock())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    out = hf_trainer.train()
    train_s = time.perf_counter() - started
    (step0, t0, real0, pos0), (step1, t1, real1, pos1) = marks[warmup - 1], marks[-1]
    timed = step1 - step0
    step_times = sorted(b[1] - a[1] for a, b in itertools.pairwise(marks[warmup - 1:]))
    args = hf_trainer.args
    result = {
        "size": size, "trainer": trainer, "tiny": tiny,
        "steps_timed": timed, "warmup_steps": warmup,
        "steps_per_s": round(timed / (t1 - t0), 3),
        "median_step_s": round(step_times[len(step_times) // 2], 4),
        "tokens_per_s": round((real1 - real0) / (t1 - t0)),
        "positions_per_s": round((pos1 - pos0) / (t1 - t0)),
        "tokens_per_step": round((real1 - real0) / timed, 1),
        "forward_calls": counts["calls"],
        "first_warmup_s": round(marks[warmup - 1][1] - started, 2),
        "train_s": round(train_s, 2),
        "load_s": round(load_s, 2),
        "build_s": built,
        "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
        "train_loss": round(float(out.training_loss), 4),
        "trainable_params": trainable,
        "rows": len(train_ex), "batch_size": ft.batch_size, "lora_r": ft.lora_r,
        "lora_alpha": ft.lora_alpha, "max_seq_length": ft.max_seq_length,
        "bf16_args": bool(getattr(args, "bf16", False)),
        "padding_free": getattr(args, "padding_free", None),
        "gradient_checkpointing": _checkpointing(trainer, cuda),
        "attn": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "model_dtype": str(next(model.parameters()).dtype),
        "versions": _versions(),
        "gpu": torch.cuda.get_device_name() if cuda else None,
    }
    if trainer == "unsloth":
        import importlib.util

        from unsloth_zoo import loss_utils

        result["cut_cross_entropy"] = bool(getattr(loss_utils, "HAS_CUT_CROSS_ENTROPY", False))
        result["xformers"] = importlib.util.find_spec("xformers") is not None
        result["bitsandbytes"] = importlib.util.find_spec("bitsandbytes") is not None
    return result


def _checkpointing(trainer: str, cuda: bool) -> str:
    """What ``_load`` asks for (``model.is_gradient_checkpointing`` does not see unsloth's own)."""
    return "unsloth's, offloaded" if trainer == "unsloth" and cuda else "off"


def device_run(prep: Path, out: Path, sizes: list[str], trainers: list[str], steps: int,
               warmup: int, budget: float, tiny: bool, max_len: int) -> None:
    """Every arm in its own process, cheap first; results.jsonl grows as each one ends."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("GPU_BENCH_WORK", "/tmp/localcat-gpu-bench"))
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget
    caps = {"0.5b": 0.4, "1.5b": 0.6}  # shares of what is left, per size
    arms = [(s, t) for s in sizes for t in trainers]
    for i, (size, trainer) in enumerate(arms):
        left = deadline - time.monotonic()
        rest = arms[i:]
        cap = left * caps.get(size, 0.5) if len(rest) > 1 else left
        cap = max(cap, min(left, 60))
        record = {"size": size, "trainer": trainer}
        if left < 30:
            record["error"] = f"skipped: {left:.0f} s of the budget left"
            _emit(out, record)
            continue
        log = out / f"arm-{size}-{trainer}.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--arm", size, trainer,
               "--prep", str(prep.resolve()), "--steps", str(steps), "--warmup", str(warmup),
               "--max-len", str(max_len), *(["--tiny"] if tiny else [])]
        started = time.monotonic()
        with log.open("w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=work,
                                    start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                proc.wait(timeout=cap)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        text = log.read_text(errors="replace")
        found = [line[len("RESULT "):] for line in text.splitlines() if line.startswith("RESULT ")]
        if found:
            record = json.loads(found[-1])
        else:
            why = (f"killed after {cap:.0f} s (its time cap)" if proc.returncode == -signal.SIGKILL
                   else f"exit {proc.returncode}")
            record["error"] = why + ": " + " | ".join(text.strip().splitlines()[-6:])[-1500:]
        record["arm_wall_s"] = round(time.monotonic() - started, 1)
        _emit(out, record)


def _emit(out: Path, record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    with (out / "results.jsonl").open("a") as f:
        f.write(line + "\n")


# --- here again: the BENCHMARKS.md section ---------------------------------------------------


def write(results: Path, device: str, prep: Path, notes: str, dry: bool) -> None:
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    ok = [r for r in records if "error" not in r]
    rows_meta = json.loads((prep / "rows.json").read_text())
    first = ok[0] if ok else {}
    versions = {}
    for r in ok:
        versions.update(r.get("versions", {}))
    lines = [
        f"Measured on the device machine: {device} (torch: {first.get('gpu', '?')}); the machine "
        "line above is where the section was written. "
        + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".",
        "",
        f"LocalCat's own `finetune.train._load` + `_trainer` at the settings' defaults (LoRA r "
        f"{first.get('lora_r', 16)}, alpha {first.get('lora_alpha', 32)}, all seven projections, "
        f"batch {first.get('batch_size', 4)}, lr 2e-4, max_seq_length "
        f"{first.get('max_seq_length', 2048)}) on {first.get('rows', rows_meta['rows'])} "
        f"Python-FAQ SFT rows tokenised by `tokenize_rows` (answer prompt over "
        f"k={rows_meta['k']} chunks + reference answer; {rows_meta['tokens_median']} tokens "
        f"median, {rows_meta['tokens_max']} max). {first.get('warmup_steps', '?')} warm-up "
        f"steps, then {first.get('steps_timed', '?')} timed; tokens = non-padding tokens "
        "through the model.",
        "",
        "| base shape | trainer | steps/s | tokens/s | vs peft | median step | peak GPU mem | "
        "load | warm-up steps | padding-free | grad. checkpointing | loss (random weights) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    by = {(r["size"], r["trainer"]): r for r in ok}
    for r in records:
        size, trainer = r["size"], r["trainer"]
        name = f"Qwen2.5-Coder-{size.upper()} shape"
        if "error" in r:
            lines.append(f"| {name} | {trainer} |" + " — |" * 9 + " failed: "
                         f"{r['error'][:160].replace('|', '/')} |")
            continue
        base = by.get((size, "peft"))
        ratio = (f"{r['steps_per_s'] / base['steps_per_s']:.2f}×" if base and trainer != "peft"
                 else "1 (baseline)" if trainer == "peft" else "—")
        lines.append(
            f"| {name} | {trainer} | {r['steps_per_s']:.2f} | {r['tokens_per_s']:,} | {ratio} | "
            f"{r['median_step_s'] * 1000:.0f} ms | {_gib(r['peak_alloc_gib'])} | "
            f"{r['load_s']:.0f} s | {r['first_warmup_s']:.0f} s | "
            f"{'yes' if r.get('padding_free') else 'no'} | "
            f"{_checkpointing(trainer, bool(r.get('gpu')))} | {r['train_loss']:.4f} |")
    lines.append("")
    lines.append("Raw: " + "; ".join(
        f"{r['size']}/{r['trainer']}: " + ", ".join(
            f"{k}={r[k]}" for k in ("tokens_per_step", "positions_per_s", "padding_free",
                                    "bf16_args", "attn", "model_dtype", "trainable_params",
                                    "cut_cross_entropy", "xformers", "bitsandbytes", "arm_wall_s")
            if k in r) for r in ok))
    append("Fine-tune speed on a GPU: unsloth vs plain PEFT (bench/gpu_finetune.py, issue 9)",
           "\n".join(lines) + "\n\n" + notes.strip() + "\n", write=not dry)


def _gib(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prepare", action="store_true", help="write .gpu-bench/ here")
    mode.add_argument("--device-run", action="store_true", help="run every arm (GPU machine)")
    mode.add_argument("--arm", nargs=2, metavar=("SIZE", "TRAINER"), help=argparse.SUPPRESS)
    mode.add_argument("--write", type=Path, metavar="RESULTS_JSONL",
                      help="append a BENCHMARKS.md section from a results.jsonl")
    ap.add_argument("--prep", type=Path, default=PREP)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-bench-out")))
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=TRAINERS)
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--budget", type=float, default=400, help="seconds for all arms together")
    ap.add_argument("--max-len", type=int, default=10**9, help="drop longer rows (CPU tests)")
    ap.add_argument("--tiny", action="store_true", help="2 tiny layers instead of the real shape")
    ap.add_argument("--k", type=int, default=3, help="chunks in each prompt (retrieval k)")
    ap.add_argument("--device", default="?", help="the GPU machine, as the device tool names it")
    ap.add_argument("--notes", type=Path, help="a file whose text ends the section")
    ap.add_argument("--no-write", action="store_true", help="print, do not append")
    a = ap.parse_args()
    if a.prepare:
        prepare(a.prep, a.k, seed=0)
    elif a.arm:
        size, trainer = a.arm
        work = Path.cwd()
        result = run_arm(size, trainer, a.prep, work, a.steps, a.warmup, a.tiny, a.max_len)
        print("RESULT " + json.dumps(result), flush=True)
    elif a.device_run:
        device_run(a.prep, a.out, a.sizes, a.trainers, a.steps, a.warmup, a.budget, a.tiny,
                   a.max_len)
    else:
        write(a.write, a.device, a.prep, a.notes.read_text() if a.notes else "", a.no_write)


if __name__ == "__main__":
    main()

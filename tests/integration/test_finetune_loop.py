"""The whole fine-tune loop on the tiny model: feedback → data set → unsloth LoRA → eval → GGUF
adapter + Modelfile → registered version that the assistant serves, answering as trained.

unsloth runs for real (its CPU backend): when it cannot be imported the loop fails, loudly.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from assistant.feedback import FeedbackStore
from assistant.pipeline import RagPipeline
from core.chunkstore import ChunkStore
from core.gguf import BaseMismatch, check_lora_gguf
from core.llm import ChatLlamaCpp, build_chat_model, smollm2_path
from core.schemas import Chunk
from core.settings import Settings
from finetune.base import Vocab, resolve_base
from finetune.dataset import read_jsonl
from finetune.modelfile import template_parts
from localcat.container import Container
from tests.fixtures.tiny_model import TINY_ANSWER

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# What users corrected the tiny model's answers to. Built from tokens the tiny model already
# emits: its output layer was trained on one sentence and cannot put weight on unseen words.
TARGET = "The answer is [1]."
WORDS = ["cat", "dog", "river", "city", "model", "port", "disk", "index", "server", "token", "page", "file"]


class StoreRetriever(BaseRetriever):
    """Two chunks per question, read from the real chunk store (no embeddings needed)."""

    store: Any
    ids: list[str]
    collection: str = "default"

    def _get_relevant_documents(self, query, *, run_manager=None):
        n = sum(map(ord, query))
        picked = [self.ids[(n + k) % len(self.ids)] for k in range(2)]
        chunks = self.store.chunks(self.collection, picked)
        return [
            Document(page_content=chunks[i].text,
                     metadata={"chunk_id": i, "source": chunks[i].source, "score": 0.5,
                               "similarity": 0.6, "page": None, "heading": None, "anchor": None})
            for i in picked
        ]


def questions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"Where is the {rng.choice(WORDS)} {rng.choice(WORDS)} number {i}?" for i in range(n)]


def fill(data: Path, gguf: Path, n: int = 40) -> None:
    """Answers from the real pipeline and tiny model, recorded and corrected in the real store."""
    store = ChunkStore(data / "index.sqlite")
    store.ensure_collection("default", "test", 3)
    chunks = [Chunk(id=f"c{i}", text=f"The {w} is on port {1000 + i}.", source=f"/docs/{w}.md",
                    file_hash=f"h{i}", position=0) for i, w in enumerate(WORDS[:6])]
    for c in chunks:
        store.mark_pending("default", c.source, c.file_hash, "{}")
        store.commit_file("default", c.source, c.file_hash, "{}", [c])
    llm = ChatLlamaCpp(model_path=gguf, temperature=0, max_tokens=24, n_ctx=1024)
    pipe = RagPipeline(llm, StoreRetriever(store=store, ids=[c.id for c in chunks]),
                       model_tag=f"embedded {llm.model_tag}", condense=False)
    with FeedbackStore(data / "feedback.sqlite") as feedback:
        for q in questions(n):
            answer = pipe.ask(q)
            assert answer.answer == TINY_ANSWER  # the base model's one answer
            feedback.record_answer(answer)
            feedback.add_feedback(answer.id, "down", correction=TARGET, user="tester")
    # One chunk changed since it was cited: those prompts fall back to the answer's snapshot.
    store.remove_file("default", chunks[0].source)


def cli(*args: str, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "localcat", "finetune", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)


def environment(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALCAT_")}
    env.update(LOCALCAT_DATA_DIR=str(data), LOCALCAT_CONFIG=str(data / "none.toml"),
               OLLAMA_HOST="http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    return env


@dataclass
class Loop:
    data: Path
    env: dict[str, str]
    result: dict[str, Any]
    seconds: float

    @property
    def run_dir(self) -> Path:
        return self.data / "finetune" / self.result["run"]


@pytest.fixture(scope="module")
def loop(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Loop:
    data = tmp_path_factory.mktemp("finetune") / "data"
    fill(data, tiny_gguf, n=80)
    # A larger test share than the default, so the gate has its 20 questions to judge on.
    env = {**environment(data), "LOCALCAT_FINETUNE__TEST_FRACTION": "0.3"}
    started = time.perf_counter()
    done = cli("run", "--run", "r1", "--base", str(tiny_gguf), "--min-examples", "10",
               "--steps", "60", "--lr", "1e-2", "--no-ollama", "--json", "--quiet", env=env)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-6000:]
    (data / "loop-seconds.txt").write_text(f"{seconds:.1f}\n")
    return Loop(data, env, json.loads(done.stdout), seconds)


def test_the_registered_model_answers_as_trained(
    loop: Loop, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = loop.result
    assert r["dataset"]["sft"]["test"] > 0 and r["dataset"]["context"].get("mixed", 0) > 0
    assert r["eval"]["promoted"], r["eval"]["reason"]
    assert r["eval"]["metrics"]["adapter"]["answer_f1"] == 1.0
    # Judged on the answers, beyond noise: every test answer gained, and there are enough of them.
    gate, n = r["eval"]["gate"], r["eval"]["examples"]
    assert n >= 20 and gate["questions"] == n and gate["low"] > 0
    assert r["eval"]["reason"].startswith(f"beats the base: +{gate['gain']:.3f} quality, 95 % "
                                          f"interval [{gate['low']:.3f}, ")
    assert f"on {n} test questions" in r["eval"]["reason"]
    assert r["eval"]["reason"].endswith(": promoted")
    base, adapter = r["eval"]["metrics"]["base"], r["eval"]["metrics"]["adapter"]
    assert adapter["key_fact_recall"] == 1.0 and adapter["looping"] == 0.0
    assert adapter["quality"] > base["quality"] and adapter["citation_agreement"] == 1.0
    assert r["version"]["name"] == "v1" and r["version"]["active"]

    # What the assistant serves now: the base plus the registered adapter.
    monkeypatch.setenv("LOCALCAT_DATA_DIR", str(loop.data))
    monkeypatch.setenv("LOCALCAT_LLM__RUNTIME", "embedded")
    llm = Container(Settings()).served_llm
    assert llm.model_path == tiny_gguf and llm.lora_path == loop.data / "models" / "v1" / "v1.gguf"
    served, tag = build_chat_model(llm.model_copy(update={"temperature": 0.0}))
    assert tag.endswith("+lora:v1")
    base = ChatLlamaCpp(model_path=tiny_gguf, temperature=0.0)

    store = ChunkStore(loop.data / "index.sqlite")
    retriever = StoreRetriever(store=store, ids=sorted(store.chunk_ids("default")))
    held_out = [row["question"] for row in read_jsonl(loop.run_dir / "dataset" / "test.jsonl")]
    for q in [*held_out, "Where is the new server nobody asked about?"]:
        assert RagPipeline(served, retriever, model_tag=tag, condense=False).ask(q).answer == TARGET
        assert RagPipeline(base, retriever, model_tag="base", condense=False).ask(q).answer == TINY_ANSWER


def test_modelfile_uses_the_training_template(loop: Loop, tiny_gguf: Path) -> None:
    version = loop.data / "models" / "v1"
    text = (version / "Modelfile").read_text()
    lines = text.splitlines()
    assert f"FROM {tiny_gguf}" in lines
    assert "ADAPTER ./v1.gguf" in lines and (version / "v1.gguf").is_file()

    manifest = json.loads((version / "adapter" / "localcat-adapter.json").read_text())
    with Vocab(resolve_base(str(tiny_gguf), Settings().llm)) as vocab:
        served_template = vocab.template  # what llama.cpp prompts the model with
    assert manifest["chat_template"]["source"] == served_template.source
    parts = template_parts(served_template)
    assert f'TEMPLATE """{parts.go_template()}"""' in text
    assert [ln for ln in lines if ln.startswith("PARAMETER stop")] == [
        f"PARAMETER stop {json.dumps(s)}" for s in manifest["chat_template"]["stops"]]
    example = read_jsonl(loop.run_dir / "dataset" / "test.jsonl")[0]["messages"]
    assert parts.render(example) == served_template.render(example, add_generation_prompt=True)


def test_unsloth_trained_it_with_checkpoints_and_a_loss_curve(loop: Loop) -> None:
    train = loop.result["train"]
    assert train["trainer"] == "unsloth" and not train["fallback"]
    manifest = json.loads((loop.run_dir / "train" / "adapter" / "localcat-adapter.json").read_text())
    assert "unsloth" in manifest["versions"] and "unsloth_zoo" in manifest["versions"]
    history = json.loads((loop.run_dir / "train" / "loss.json").read_text())
    assert history["train"][-1]["loss"] < history["train"][0]["loss"] / 10
    assert history["eval"], "validation loss is logged"
    assert (loop.run_dir / "train" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (loop.run_dir / "train" / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-50", "checkpoint-60"]
    report = (loop.run_dir / "eval" / "eval.md").read_text()
    assert "promoted" in report and "| adapter |" in report


def test_training_again_resumes_from_the_last_checkpoint(loop: Loop, tiny_gguf: Path) -> None:
    data = _copy(loop, "resume")
    env = environment(data)
    args = ("train", "--run", "r1", "--base", str(tiny_gguf), "--steps", "60", "--lr", "1e-2",
            "--json", "--quiet")
    done = cli(*args, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout)["steps_this_session"] == 0  # finished: nothing to do

    # As if it had stopped after step 50: it goes on from there.
    train = data / "finetune" / "r1" / "train"
    shutil.rmtree(train / "checkpoints" / "checkpoint-60")
    shutil.rmtree(train / "adapter")
    done = cli(*args, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert result["resumed_from"] == "checkpoint-50" and result["steps"] == 60
    assert result["steps_this_session"] == 10
    assert (train / "adapter" / "adapter_model.safetensors").is_file()

    # Other settings do not silently continue an unrelated run.
    done = cli("train", "--run", "r1", "--base", str(tiny_gguf), "--steps", "80", env=env)
    assert done.returncode == 1 and "--restart" in done.stderr


def test_an_empty_store_is_refused_clearly(tmp_path: Path, tiny_gguf: Path) -> None:
    done = cli("run", "--base", str(tiny_gguf), env=environment(tmp_path / "empty"), timeout=120)
    assert done.returncode == 1
    assert "Too little feedback to fine-tune: 0 training and 0 test examples" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_corrupted_adapter_is_refused_clearly(loop: Loop, tiny_gguf: Path) -> None:
    data = _copy(loop, "corrupt")
    env = environment(data)
    run = data / "finetune" / "r1"
    gguf = run / "export" / "adapter.gguf"
    gguf.write_bytes(gguf.read_bytes()[:-100])
    done = cli("register", "--run", "r1", "--base", str(tiny_gguf), "--no-ollama", env=env)
    assert done.returncode == 1 and "is damaged" in done.stderr, done.stderr[-2000:]

    weights = run / "train" / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    done = cli("export", "--run", "r1", "--base", str(tiny_gguf), env=env)
    assert done.returncode == 1 and "damaged or not a safetensors file" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_base_mismatch_is_refused_clearly(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = smollm2_path()
    done = cli("register", "--run", "r1", "--base", str(other), "--no-ollama", env=loop.env)
    assert done.returncode == 1
    assert "The adapter was trained on localcat-tiny" in done.stderr
    # The file itself says so too (llama.cpp would load the base alone and say nothing).
    with pytest.raises(BaseMismatch, match="does not fit SmolLM2"):
        check_lora_gguf(loop.data / "models" / "v1" / "v1.gguf", other)
    # Serving the active version on top of another base is refused.
    monkeypatch.setenv("LOCALCAT_DATA_DIR", str(loop.data))
    monkeypatch.setenv("LOCALCAT_LLM__MODEL_PATH", str(other))
    with pytest.raises(BaseMismatch, match="models use base"):
        Container(Settings()).served_llm  # noqa: B018 - building it is the act under test


def _ollama_libs() -> Path | None:
    """Where bigdl-core-cpp's Ollama lives: $BIGDL_OLLAMA_LIBS, or bigdl.cpp in this interpreter."""
    import importlib.util

    if os.environ.get("BIGDL_OLLAMA_LIBS"):
        return Path(os.environ["BIGDL_OLLAMA_LIBS"])
    spec = importlib.util.find_spec("bigdl.cpp") if importlib.util.find_spec("bigdl") else None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "libs" / "ollama"


@pytest.fixture
def real_ollama(tmp_path: Path):
    """A real Ollama server (bigdl-core-cpp's build, ~2.6 GB; its create/show API works on a CPU)."""
    libs = _ollama_libs()
    if libs is None or not (libs / "ollama-lib").is_file():
        pytest.fail("--real-ollama needs bigdl-core-cpp's Ollama (`pip install bigdl-core-cpp`); "
                    "install it or set BIGDL_OLLAMA_LIBS to its libs/ollama folder")
    import httpx

    from tests.fixtures.fake_ollama import free_port

    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(tmp_path / "m"),
           "HOME": str(tmp_path), "LD_LIBRARY_PATH": f"{libs}:{libs.parents[5]}"}
    server = subprocess.Popen([str(libs / "ollama-lib"), "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                httpx.get(f"{url}/api/version", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("Ollama did not start within 30 s")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.real_ollama
def test_registration_in_a_real_ollama(loop: Loop, tiny_gguf: Path, real_ollama: str) -> None:
    import httpx

    data = _copy(loop, "ollama")
    env = {**environment(data), "OLLAMA_HOST": real_ollama}
    done = cli("register", "--run", "r1", "--base", str(tiny_gguf), "--ollama", "--json", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    version = json.loads(done.stdout)
    assert version["ollama_name"] == "localcat-localcat-tiny:v1"
    shown = httpx.post(f"{real_ollama}/api/show", json={"model": version["ollama_name"]},
                       timeout=30).json()
    # Ollama parsed the TEMPLATE and keeps it verbatim, with the exact base and adapter blobs.
    manifest = json.loads((data / "models" / "v1" / "adapter" / "localcat-adapter.json").read_text())
    with Vocab(resolve_base(str(tiny_gguf), Settings().llm)) as vocab:
        assert shown["template"] == template_parts(vocab.template).go_template()
    assert f"sha256-{version['base_sha256']}" in shown["modelfile"]
    assert "ADAPTER " in shown["modelfile"] and version["adapter_sha256"] in shown["modelfile"]
    stops = re.findall(r'stop\s+"([^"]*)"', shown["parameters"])
    assert stops == manifest["chat_template"]["stops"]
    # The assistant, on the Ollama runtime, now asks for this model.
    served = Container(Settings(data_dir=data)).served_llm
    assert served.ollama_model == version["ollama_name"]


def _copy(loop: Loop, name: str) -> Path:
    target = loop.data.parent / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(loop.data, target)
    return target

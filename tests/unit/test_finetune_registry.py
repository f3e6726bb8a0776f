"""The model registry: versions, the active one, switching, rollback, and refusing bad adapters."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from core.db import head, version_table
from core.errors import ConfigError
from core.gguf import AdapterCorrupt, BaseMismatch, check_lora_gguf, file_sha256
from core.settings import Settings
from finetune.artifacts import AdapterManifest, DatasetRef, LoraInfo, TemplateInfo
from finetune.base import BaseInfo, ChatTemplate
from finetune.registry import ModelRegistry, ollama_register
from localcat.container import Container
from tests.unit.test_finetune_modelfile import CHATML


def write_gguf(path: Path, tensors: dict[str, np.ndarray], adapter: bool = False) -> Path:
    """A real (tiny) GGUF file: a 'base' with weights, or a LoRA adapter for it."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    if adapter:
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", 16.0)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def base_file(path: Path, hidden: int = 8) -> Path:
    # numpy (out, in), as torch stores a Linear weight; GGUF lists it as [in, out].
    return write_gguf(path, {"blk.0.attn_q.weight": np.ones((hidden, hidden), np.float32)})


def lora_file(path: Path, hidden: int = 8, r: int = 2) -> Path:
    return write_gguf(path, {
        "blk.0.attn_q.weight.lora_a": np.zeros((r, hidden), np.float32),
        "blk.0.attn_q.weight.lora_b": np.zeros((hidden, r), np.float32),
    }, adapter=True)


def base_info(base: Path) -> BaseInfo:
    return BaseInfo(kind="gguf", path=base, sha256=file_sha256(base), name="base")


def export_dir(root: Path, base: Path) -> Path:
    out = root / "export"
    (out / "adapter").mkdir(parents=True)
    lora_file(out / "adapter.gguf")
    (out / "Modelfile").write_text(f"FROM {base}\nADAPTER ./adapter.gguf\n")
    template = ChatTemplate(CHATML, bos_token="<s>", eos_token="<|im_end|>")
    AdapterManifest(
        base=base_info(base),
        chat_template=TemplateInfo.of(template, stops=["<|im_end|>"]),
        trainer="unsloth",
        lora=LoraInfo(r=2, alpha=4, dropout=0.0, target_modules=["q_proj"]),
        dataset=DatasetRef(run=root.name, sha256="0" * 64, sft={"train": 30}),
        fingerprint="f" * 16, versions={}, created_at="2026-11-25T00:00:00+00:00",
    ).write(out / "adapter" / "localcat-adapter.json")
    return out


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return base_file(tmp_path / "base.gguf")


@pytest.fixture
def registry(tmp_path: Path):
    reg = ModelRegistry(Settings().models_dir)
    yield reg
    reg.close()


def add(registry: ModelRegistry, tmp_path: Path, base: Path, run: str = "run-1"):
    out = export_dir(tmp_path / run, base)
    return registry.add(
        run=run, base=base_info(base), trainer="unsloth", export_dir=out,
        dataset={"sft": {"train": 30}}, metrics={"adapter": {"loss": 0.1}}, status="promoted",
        adapter_sha256=file_sha256(out / "adapter.gguf"),
    )


def test_migrations_run_once(registry: ModelRegistry) -> None:
    assert registry.versions() == []
    registry.close()
    db = sqlite3.connect(registry.path)
    assert db.execute(f"SELECT version_num FROM {version_table('models')}").fetchall() == [
        (head("models"),)]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"versions", "activations"} <= tables
    db.close()
    assert ModelRegistry(registry.dir).versions() == []


def test_versions_switch_and_roll_back(registry: ModelRegistry, tmp_path: Path, base: Path) -> None:
    v1 = add(registry, tmp_path, base, "run-1")
    assert v1.name == "v1" and not v1.active and v1.parent is None
    # The copy is named after the version, and its Modelfile follows.
    assert Path(v1.adapter_gguf).name == "v1.gguf"
    assert "ADAPTER ./v1.gguf" in Path(v1.modelfile).read_text()

    registry.use("v1")
    v2 = add(registry, tmp_path, base, "run-2")
    assert v2.parent == v1.id
    registry.use("v2")
    assert registry.active().name == "v2"
    assert [v.active for v in registry.versions()] == [False, True]

    assert registry.rollback().name == "v1"
    assert registry.use("base") is None and registry.active() is None
    assert registry.rollback().name == "v1"
    with pytest.raises(Exception, match="No model version 'v9'.*registered: v1, v2"):
        registry.use("v9")


def test_rollback_with_no_history_says_so(registry: ModelRegistry) -> None:
    with pytest.raises(Exception, match="Nothing to roll back"):
        registry.rollback()


def test_served_settings_follow_the_active_version(
    registry: ModelRegistry, tmp_path: Path, base: Path
) -> None:
    settings = Settings()
    assert Container(settings).served_llm == settings.llm  # no registry yet: unchanged
    v1 = add(registry, tmp_path, base)
    assert Container(settings).served_llm == settings.llm  # registered, not active
    registry.use("v1")
    llm = Container(Settings()).served_llm
    assert llm.model_path == base and llm.lora_path == Path(v1.adapter_gguf)

    explicit = Settings(llm={"lora_path": tmp_path / "mine.gguf"})
    assert Container(explicit).served_llm.lora_path == tmp_path / "mine.gguf"
    same_base = Settings(llm={"model_path": base})
    assert Container(same_base).served_llm.lora_path == Path(v1.adapter_gguf)
    other = Settings(llm={"model_path": tmp_path / "other.gguf"})
    with pytest.raises(BaseMismatch, match="models use base"):
        Container(other).served_llm  # noqa: B018 - building it is the act under test


def test_damaged_adapter_is_refused(registry: ModelRegistry, tmp_path: Path, base: Path) -> None:
    v1 = add(registry, tmp_path, base)
    gguf = Path(v1.adapter_gguf)
    data = gguf.read_bytes()
    gguf.write_bytes(data[: len(data) - 40])  # truncated
    with pytest.raises(AdapterCorrupt, match="damaged"):
        registry.use("v1")
    gguf.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size, one byte flipped
    with pytest.raises(AdapterCorrupt, match="checksum differs"):
        registry.use("v1")
    gguf.write_bytes(b"not a gguf at all")
    with pytest.raises(AdapterCorrupt):
        registry.use("v1")
    assert registry.active() is None


def test_changed_base_is_refused(registry: ModelRegistry, tmp_path: Path, base: Path) -> None:
    add(registry, tmp_path, base)
    base_file(base, hidden=8).write_bytes(base.read_bytes() + b"\0")
    with pytest.raises(BaseMismatch, match="changed since v1 was trained"):
        registry.use("v1")


def test_adapter_for_another_base_does_not_fit(tmp_path: Path) -> None:
    small, big = base_file(tmp_path / "small.gguf", 8), base_file(tmp_path / "big.gguf", 16)
    lora = lora_file(tmp_path / "lora.gguf", hidden=8)
    check_lora_gguf(lora, small)
    with pytest.raises(BaseMismatch, match="does not fit big.gguf.*trained on another base"):
        check_lora_gguf(lora, big)
    with pytest.raises(AdapterCorrupt, match="not a GGUF LoRA adapter"):
        check_lora_gguf(small)


def test_the_container_serves_the_active_version(
    registry: ModelRegistry, tmp_path: Path, base: Path
) -> None:
    from localcat.container import Container

    v1 = add(registry, tmp_path, base)
    assert Container().served_llm.lora_path is None
    registry.use("v1")
    served = Container().served_llm
    assert served.model_path == base and served.lora_path == Path(v1.adapter_gguf)


class BlobServer:
    """A protocol-level fake of Ollama's blob and create endpoints (real Ollama: the loop test)."""

    def __init__(self) -> None:
        import hashlib
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.blobs: dict[str, bytes] = {}
        self.created: list[dict] = []
        self.uploads = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: dict | None = None) -> None:
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def do_HEAD(self) -> None:
                digest = self.path.rsplit("/", 1)[-1]
                self._reply(200 if digest in fake.blobs else 404)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.startswith("/api/blobs/"):
                    digest = self.path.rsplit("/", 1)[-1]
                    if digest != "sha256:" + hashlib.sha256(body).hexdigest():
                        return self._reply(400, {"error": "digest mismatch"})
                    fake.blobs[digest] = body
                    fake.uploads += 1
                    return self._reply(201)
                if self.path == "/api/create":
                    request = json.loads(body)
                    missing = [d for d in (*request["files"].values(), *request["adapters"].values())
                               if d not in fake.blobs]
                    if missing:
                        return self._reply(400, {"error": f"missing blobs {missing}"})
                    fake.created.append(request)
                    return self._reply(200, {"status": "success"})
                self._reply(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_ollama_registration_uploads_blobs_and_creates_the_model(
    registry: ModelRegistry, tmp_path: Path, base: Path
) -> None:
    v1 = add(registry, tmp_path, base)
    fake = BlobServer()
    try:
        ollama_register(v1, fake.url, "localcat-base:v1")
        ollama_register(v1, fake.url, "localcat-base:v1")  # blobs it has are not sent again
    finally:
        fake.close()
    request = fake.created[-1]
    assert request["model"] == "localcat-base:v1"
    assert request["files"] == {"base.gguf": "sha256:" + file_sha256(base)}
    assert request["adapters"] == {"adapter.gguf": "sha256:" + v1.adapter_sha256}
    assert request["template"].startswith("{{ range .Messages }}")
    assert request["parameters"] == {"stop": ["<|im_end|>", "<|im_start|>user"]}
    assert fake.uploads == 2 and len(fake.created) == 2


def finished_run(root: Path, base: Path, promoted: bool = True) -> Path:
    """A run folder as the steps before `register` leave it, its JSON in the shape runs wrote."""
    from finetune.artifacts import DatasetReport, RunLayout

    run = RunLayout(root / "finetune" / "r1")
    export_dir(run.root, base)
    DatasetReport(run="r1", path=run.dataset, sha256="d" * 64,
                  sft={"train": 30, "val": 2, "test": 3}).write(run.dataset_json)
    described = {"kind": "gguf", "path": str(base), "sha256": file_sha256(base), "name": "base",
                 "source": str(base)}
    scores = {"loss": 0.5, "perplexity": 1.6487, "answer_f1": 0.5, "exact_match": 0.0}
    better = {"loss": 0.1, "perplexity": 1.1052, "answer_f1": 1.0, "exact_match": 1.0}
    run.eval.mkdir()
    run.eval_json.write_text(json.dumps({
        "run": "r1", "base": described, "examples": 3, "too_long": 0,
        "metrics": {"base": scores, "adapter": better if promoted else scores},
        "promoted": promoted,
        "reason": "beats the base: …" if promoted else "does not beat the base: loss 0.5 → 0.5",
        "rule": "…", "seconds": 1.0,
        "samples": [{"question": "Q?", "reference": "A", "base": "B", "adapter": "A"}],
    }))
    run.export_json.write_text(json.dumps({
        "run": "r1", "base": described, "adapter_dir": str(run.export_adapter),
        "adapter_gguf": str(run.export_gguf), "modelfile": str(run.modelfile),
        "sha256": {"adapter.gguf": file_sha256(run.export_gguf),
                   "adapter_model.safetensors": "s" * 64},
        "bytes": {"adapter.gguf": run.export_gguf.stat().st_size},
        "chat_template_sha256": "t" * 64,
    }))
    return run.root


def test_register_run_reads_each_step_result_once_and_records_it(
    registry: ModelRegistry, tmp_path: Path, base: Path
) -> None:
    from finetune.base import BaseRef
    from finetune.registry import register_run

    run_dir = finished_run(tmp_path, base)
    ref = BaseRef("gguf", base, file_sha256(base), str(base))
    version = register_run(run_dir, ref, registry, ollama_host="http://127.0.0.1:9",
                           ollama_prefix="localcat", ollama=False)
    assert version["name"] == "v1" and version["active"] and version["status"] == "promoted"
    assert version["metrics"]["adapter"]["answer_f1"] == 1.0
    assert version["dataset"] == {"run": "r1", "sha256": "d" * 64,
                                  "sft": {"train": 30, "val": 2, "test": 3},
                                  "kto": {"train": 0, "val": 0, "test": 0}}
    again = register_run(run_dir, ref, registry, ollama_host="http://127.0.0.1:9",
                         ollama_prefix="localcat", ollama=False)
    assert again["name"] == "v1" and len(registry.versions()) == 1


def test_register_run_creates_the_version_on_every_ollama_host(
    registry: ModelRegistry, tmp_path: Path, base: Path
) -> None:
    from finetune.base import BaseRef
    from finetune.registry import register_run

    run_dir = finished_run(tmp_path, base)
    ref = BaseRef("gguf", base, file_sha256(base), str(base))
    hosts = [BlobServer(), BlobServer()]
    try:
        version = register_run(run_dir, ref, registry, ollama_host=[h.url for h in hosts],
                               ollama_prefix="localcat", ollama=True)
    finally:
        for h in hosts:
            h.close()
    assert [h.created[-1]["model"] for h in hosts] == ["localcat-base:v1"] * 2
    assert version["ollama_name"] == "localcat-base:v1"
    assert version["ollama_host"] == ", ".join(h.url for h in hosts)


def test_register_run_refuses_what_the_step_results_forbid(
    registry: ModelRegistry, tmp_path: Path, base: Path
) -> None:
    from finetune.base import BaseRef
    from finetune.registry import NotPromoted, register_run

    run_dir = finished_run(tmp_path, base, promoted=False)
    ref = BaseRef("gguf", base, file_sha256(base), str(base))

    def register(**kw: object) -> dict:
        return register_run(run_dir, ref, registry, ollama_host="http://127.0.0.1:9",
                            ollama_prefix="localcat", ollama=False, **kw)

    with pytest.raises(NotPromoted, match="r1 does not beat the base: loss 0.5 → 0.5"):
        register()
    assert register(force=True)["status"] == "forced"
    other = base_file(tmp_path / "other.gguf", hidden=16)
    with pytest.raises(BaseMismatch, match="The adapter was trained on base"):
        register_run(run_dir, BaseRef("gguf", other, file_sha256(other)), registry,
                     ollama_host="http://127.0.0.1:9", ollama_prefix="localcat", ollama=False)

    export_json = run_dir / "export" / "export.json"
    exported = json.loads(export_json.read_text())
    exported["sha256"]["adapter.gguf"] = "0" * 64
    export_json.write_text(json.dumps(exported))
    with pytest.raises(AdapterCorrupt, match="changed since it was exported"):
        register(force=True)
    del exported["bytes"]
    export_json.write_text(json.dumps(exported))
    with pytest.raises(ConfigError, match=r"not a valid export result \(bytes: Field required.*"
                                          r"finetune export --run r1"):
        register(force=True)

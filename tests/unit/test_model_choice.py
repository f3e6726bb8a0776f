"""Choosing an embedded model by name: what list_models shows, how a name maps to the settings
that serve it, which models the container keeps loaded, and what the page's picker lists."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from core import catalog
from core.catalog import CATALOG, Decoding
from core.errors import ModelNotFound
from core.llm import embedded_settings, list_models
from core.settings import LLMSettings, Settings
from localcat.container import Container
from ui.models import picker, pull_argv, pull_env


def sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space (only sizes are checked until loading)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.fixture
def entries(monkeypatch: pytest.MonkeyPatch) -> dict[str, catalog.CatalogEntry]:
    """A catalog of four: model-a, model-b and model-d pulled into the folder, model-c not."""
    base = CATALOG["qwen2.5-coder-0.5b"]
    made = {
        name: replace(base, name=name, file=f"{file}.gguf", size=size,
                      decoding=Decoding(stop=("<|im_end|>",), repeat_penalty=penalty,
                                        max_tokens=64))
        for name, file, size, penalty in [("model-a", "ModelA.Q4", 1000, 1.1),
                                          ("model-b", "ModelB.Q4", 2000, 1.3),
                                          ("model-c", "ModelC.Q4", 1_117_320_768, 1.1),
                                          ("model-d", "ModelD.Q4", 3000, 1.2)]}
    monkeypatch.setattr(catalog, "CATALOG", made)
    return made


@pytest.fixture
def models_dir(tmp_path: Path, entries) -> Path:
    folder = tmp_path / "models"
    for name in ("model-a", "model-b", "model-d"):
        sparse(folder / entries[name].file, entries[name].size)
    return folder


def llm(models_dir: Path, **kw) -> LLMSettings:
    kw.setdefault("model", "model-a")
    return LLMSettings(runtime="embedded", models_dir=models_dir, **kw)


def test_the_served_model_comes_first_then_the_other_installed_ones(models_dir: Path,
                                                                     tmp_path: Path):
    assert list_models(llm(models_dir)) == ["ModelA.Q4", "model-b", "model-d"]
    # A file of one's own is served: every installed catalog model is another one.
    own = sparse(tmp_path / "mine.gguf", 10)
    assert list_models(llm(models_dir, model_path=own)) == ["mine", "model-a", "model-b",
                                                            "model-d"]
    # The served file named by its path is still the catalog's model-a: not listed twice.
    assert list_models(llm(models_dir, model_path=models_dir / "ModelA.Q4.gguf")) == [
        "ModelA.Q4", "model-b", "model-d"]
    # With a LoRA, model-a alone is another model.
    lora = sparse(tmp_path / "support.gguf", 10)
    assert list_models(llm(models_dir, lora_path=lora)) == [
        "ModelA.Q4+lora:support", "model-a", "model-b", "model-d"]


def test_a_name_maps_to_the_settings_of_its_catalog_entry(models_dir: Path, tmp_path: Path):
    from core.llm import build_chat_model

    served = llm(models_dir, temperature=0.3)
    assert embedded_settings(served, "ModelA.Q4") is None  # its tag, as the list shows it
    assert embedded_settings(served, "model-a") is None
    chosen = embedded_settings(served, "model-b")
    assert (chosen.model, chosen.model_path, chosen.lora_path) == ("model-b", None, None)
    assert chosen.temperature == 0.3  # the rest of the settings stay
    model, description = build_chat_model(chosen)
    assert model.model_path == models_dir / "ModelB.Q4.gguf"
    assert description == "embedded ModelB.Q4"
    assert (model.repeat_penalty, model.max_tokens) == (1.3, 64)  # the catalog's decoding
    assert embedded_settings(served, "ModelB.Q4").model == "model-b"  # the tag answers carry
    # Another model beside a served LoRA: the base alone is one.
    lora = sparse(tmp_path / "support.gguf", 10)
    assert embedded_settings(llm(models_dir, lora_path=lora), "model-a").lora_path is None


def test_unknown_and_missing_models_say_what_to_pull(models_dir: Path):
    with pytest.raises(ModelNotFound) as err:
        embedded_settings(llm(models_dir), "model-c")
    assert "`localcat models pull model-c`" in str(err.value) and err.value.status == 404
    with pytest.raises(ModelNotFound) as err:
        embedded_settings(llm(models_dir), "gpt-4")
    assert "no model 'gpt-4'" in str(err.value) and "`localcat models pull NAME`" in str(err.value)


def test_the_container_loads_one_other_embedded_model_at_a_time(models_dir: Path):
    c = Container(Settings(llm={"runtime": "embedded", "model": "model-a",
                                "models_dir": models_dir}))
    served = c.chat_model()
    assert c.chat_model("ModelA.Q4") is served and c.chat_model("model-a") is served
    other, description = c.chat_model("model-b")
    assert description == "embedded ModelB.Q4" and c.chat_model("model-b")[0] is other
    assert c.loaded_model_tags() == ["embedded ModelA.Q4", "embedded ModelB.Q4"]
    c.chat_model("model-d")  # model-b is let go: memory holds the served model and one other
    assert c.loaded_model_tags() == ["embedded ModelA.Q4", "embedded ModelD.Q4"]
    assert c.llm_settings("model-d").model == "model-d"
    with pytest.raises(ModelNotFound, match="localcat models pull model-c"):
        c.chat_model("model-c")
    # With Ollama a name is Ollama's model, as before.
    ollama = Container(Settings(llm={"runtime": "ollama"}))
    assert ollama.llm_settings("mistral").ollama_model == "mistral"


def test_the_picker_lists_installed_models_then_the_catalog_others(models_dir: Path):
    c = Container(Settings(llm={"runtime": "embedded", "model": "model-a",
                                "models_dir": models_dir}))
    chosen = picker(c)
    assert chosen.choices == [("ModelA.Q4", "ModelA.Q4"), ("model-b", "model-b"),
                              ("model-d", "model-d"),
                              ("model-c (not installed, 1.1 GB)", "model-c")]
    assert chosen.configured == "ModelA.Q4" and chosen.error is None
    assert "one at a time" in chosen.info

    # The served model not pulled: said, and the installed others are still offered.
    c = Container(Settings(llm={"runtime": "embedded", "model": "model-c",
                                "models_dir": models_dir}))
    chosen = picker(c)
    assert "localcat models pull model-c" in str(chosen.error) and chosen.configured is None
    assert chosen.values == ["model-a", "model-b", "model-d", "model-c"]


def test_the_pull_command_and_its_environment(tmp_path: Path):
    assert pull_argv("model-c") == [sys.executable, "-m", "localcat", "models", "pull", "model-c"]
    assert pull_argv("llama3.2", ollama=True)[-1] == "ollama:llama3.2"
    settings = Settings(data_dir=tmp_path / "d", llm={"models_dir": tmp_path / "m"},
                        models={"pip_args": ["--no-index"]})
    env = pull_env(settings)
    assert env["LOCALCAT_DATA_DIR"] == str(tmp_path / "d")
    assert env["LOCALCAT_LLM__MODELS_DIR"] == str(tmp_path / "m")
    assert json.loads(env["LOCALCAT_MODELS__PIP_ARGS"]) == ["--no-index"]

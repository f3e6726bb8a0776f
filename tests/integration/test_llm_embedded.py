"""The embedded runtime for real: llama.cpp running the tiny test model and SmolLM2."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from core.errors import BadRequest, RuntimeUnavailable
from core.llm import ChatLlamaCpp, build_chat_model, smollm2_path
from core.settings import LLMSettings
from tests.fixtures.tiny_model import TINY_ANSWER

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(tiny_gguf: Path) -> ChatLlamaCpp:
    return ChatLlamaCpp(model_path=tiny_gguf, n_ctx=1024, n_threads=1, temperature=0, max_tokens=32)


def test_invoke_gives_the_trained_answer(tiny: ChatLlamaCpp):
    answer = tiny.invoke([HumanMessage("What is the capital of France?")])
    assert answer.content == TINY_ANSWER
    assert answer.response_metadata["finish_reason"] == "stop"
    assert answer.response_metadata["model_name"] == "localcat-tiny"
    usage = answer.usage_metadata
    assert usage["input_tokens"] > 5 and usage["output_tokens"] > 3


def test_stream_yields_token_by_token(tiny: ChatLlamaCpp):
    messages = [
        SystemMessage("Answer from the sources.\n\n[1] Paris is the capital of France."),
        HumanMessage("Capital?"),
        AIMessage(TINY_ANSWER),
        HumanMessage("And of Italy?"),
    ]
    chunks = list(tiny.stream(messages))
    texts = [c.content for c in chunks if c.content]
    assert "".join(texts) == TINY_ANSWER
    assert len(texts) > 3
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    # Streamed usage matches what llama.cpp reports for the same request unstreamed.
    assert total.usage_metadata == tiny.invoke(messages).usage_metadata
    assert total.response_metadata["finish_reason"] == "stop"


def test_stop_sequences(tiny: ChatLlamaCpp):
    assert tiny.invoke("hi", stop=[" sources"]).content == "The answer is in the"
    streamed = "".join(str(c.content) for c in tiny.stream("hi", stop=["answer"]))
    assert streamed == "The "


def test_max_tokens_cuts_the_answer(tiny: ChatLlamaCpp):
    answer = tiny.invoke("hi", max_tokens=2)
    assert answer.usage_metadata["output_tokens"] == 2
    assert answer.response_metadata["finish_reason"] == "length"
    assert TINY_ANSWER.startswith(answer.content) and answer.content != TINY_ANSWER


def test_concurrent_requests_share_one_context(tiny: ChatLlamaCpp):
    answers: list[str] = []

    def ask(question: str) -> None:
        answers.append("".join(str(c.content) for c in tiny.stream(question)))

    threads = [threading.Thread(target=ask, args=(f"question {n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert answers == [TINY_ANSWER] * 4


def test_prompt_longer_than_context_says_the_fix(tiny_gguf: Path):
    small = ChatLlamaCpp(model_path=tiny_gguf, n_ctx=256, n_threads=1)
    with pytest.raises(BadRequest) as err:
        small.invoke("word " * 400)
    assert "LOCALCAT_LLM__N_CTX" in str(err.value)


def test_build_chat_model_embedded(tiny_gguf: Path):
    llm = LLMSettings(runtime="embedded", model_path=tiny_gguf, n_ctx=512, temperature=0, threads=1)
    model, description = build_chat_model(llm)
    assert description == "embedded localcat-tiny"
    assert model.invoke("Where are the files?").content == TINY_ANSWER


def test_missing_model_file(tmp_path: Path):
    model = ChatLlamaCpp(model_path=tmp_path / "nope.gguf")
    with pytest.raises(RuntimeUnavailable) as err:
        model.invoke("hi")
    assert "nope.gguf does not exist" in str(err.value)
    assert "LOCALCAT_LLM__MODEL_PATH" in str(err.value)


def test_broken_model_file(tmp_path: Path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(RuntimeUnavailable) as err:
        ChatLlamaCpp(model_path=broken).invoke("hi")
    assert "could not load broken" in str(err.value)


def test_missing_lora_file(tiny_gguf: Path, tmp_path: Path):
    model = ChatLlamaCpp(model_path=tiny_gguf, lora_path=tmp_path / "adapter.gguf")
    assert model.model_tag == "localcat-tiny+lora:adapter"
    with pytest.raises(RuntimeUnavailable, match="LoRA adapter"):
        model.invoke("hi")


def test_smollm2_answers():
    model = ChatLlamaCpp(
        model_path=smollm2_path(), n_ctx=512, n_threads=1, temperature=0, max_tokens=16
    )
    assert model.model_tag == "SmolLM2-135M-Instruct.Q4_1"
    answer = model.invoke("What is the capital of France?")
    assert answer.content.strip()
    assert 0 < answer.usage_metadata["output_tokens"] <= 16


def test_async_stream(tiny: ChatLlamaCpp):
    async def collect() -> str:
        # astream runs each next() in a worker thread: the lock must survive changing threads.
        return "".join([str(c.content) async for c in tiny.astream("hi")])

    assert asyncio.run(collect()) == TINY_ANSWER
    assert asyncio.run(tiny.ainvoke("hi")).content == TINY_ANSWER

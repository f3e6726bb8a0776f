"""OpenAI-compatible routes: /v1/models and /v1/chat/completions (citations as extensions)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from core.acts import Question
from core.errors import BadRequest, LocalCatError
from core.schemas import Message, new_answer_id
from localcat.api.deps import CallerDep, UseCasesDep
from localcat.api.errors import error_body
from localcat.openai_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    LocalCatExtension,
    ModelCard,
    ModelList,
    Usage,
)

log = logging.getLogger("localcat.server")
router = APIRouter()
DEFAULT_MODEL = "localcat"


class ContentPart(BaseModel):
    type: str
    text: str | None = None  # only text parts count; others (images) are ignored


class ChatMessageIn(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model: str = Field(DEFAULT_MODEL, max_length=200)
    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    collection: str | None = Field(None, description="LocalCat extension: collection to search.",
                                   max_length=200)
    user: str | None = Field(None, description="Ignored: the key names the user.")


def to_question(req: ChatCompletionRequest) -> Question:
    """The last user message is the question; earlier user/assistant turns are the history."""
    last = req.messages[-1]
    if last.role != "user" or not last.text().strip():
        raise BadRequest("The last message must be a non-empty user message",
                         "end `messages` with {'role': 'user', 'content': '...'}")
    history = [Message(role=m.role, content=m.text()) for m in req.messages[:-1]
               if m.role in ("user", "assistant")]
    model = None if req.model in ("", DEFAULT_MODEL) else req.model
    return Question(last.text(), history, req.collection, model)


@router.get("/v1/models", response_model=ModelList)
def list_models(request: Request):
    from core.llm import list_models as runtime_models

    c = request.app.state.container
    names = [DEFAULT_MODEL, *runtime_models(c.served_llm, c.ollama_hosts)]
    return ModelList(data=[ModelCard(id=n) for n in dict.fromkeys(names)])


@router.post("/v1/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "A ChatCompletion, or with `stream` "
                                             "ChatCompletionChunk events"}})
def chat_completions(req: ChatCompletionRequest, who: CallerDep, uc: UseCasesDep):
    from assistant.pipeline import Done

    created = int(time.time())
    answer_id = new_answer_id()
    events = uc.ask(who, to_question(req), answer_id=answer_id)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            _in_thread(_sse(events, answer_id, req.model, created, include_usage)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    done = [e for e in events if isinstance(e, Done)][-1]
    answer = done.answer
    return ChatCompletion(
        id=answer.id, created=created, model=req.model,
        choices=[Choice(finish_reason=done.finish_reason,
                        message=AssistantMessage(content=answer.answer, citations=answer.citations))],
        usage=_usage(done.usage), localcat=LocalCatExtension.of(answer, final=True),
    )


def _usage(usage) -> Usage:
    """The pipeline's token counts (zeros when the runtime reported none)."""
    if usage is None:
        return Usage()
    return Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                 total_tokens=usage.total_tokens)


def _sse(events, cid: str, model: str, created: int, include_usage: bool = False) -> Iterator[str]:
    """OpenAI chat.completion.chunk events; errors after the first byte become an error event.

    With ``include_usage`` (OpenAI's ``stream_options``) a last chunk with no choices carries the
    token counts, as OpenAI sends it."""
    from assistant.pipeline import Done, Sources, Token

    def chunk(delta: Delta, finish: str | None = None, **extra) -> str:
        return ChatCompletionChunk(id=cid, created=created, model=model,
                                   choices=[ChunkChoice(delta=delta, finish_reason=finish)],
                                   **extra).sse()

    try:
        for event in events:
            if isinstance(event, Sources):
                yield chunk(Delta(role="assistant", content=""), citations=event.citations)
            elif isinstance(event, Token):
                yield chunk(Delta(content=event.text))
            elif isinstance(event, Done):
                yield chunk(Delta(), event.finish_reason, citations=event.answer.citations,
                            localcat=LocalCatExtension.of(event.answer, final=True))
                if include_usage:
                    yield ChatCompletionChunk(id=cid, created=created, model=model, choices=[],
                                              usage=_usage(event.usage)).sse()
    except LocalCatError as exc:
        yield error_body(exc.status, str(exc), type(exc).__name__).sse()
    except Exception:
        log.exception("stream failed")
        yield error_body(500, "Internal error; see the server log", "InternalError").sse()
    finally:
        events.close()
    yield "data: [DONE]\n\n"


async def _in_thread(gen: Iterator[str]) -> AsyncIterator[str]:
    """Drive a blocking generator from its own thread instead of the shared thread pool.

    Starlette would call ``next()`` on a pool thread per item; the embedded model holds its lock
    between tokens, so with more streams than pool threads every thread could end up waiting for a
    lock whose holder needs a pool thread to continue. A thread per stream cannot deadlock.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    done = object()

    def put(item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the server is shutting down
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def produce() -> None:
        try:
            for item in gen:
                if stop.is_set():  # the client went away: stop generating, free the model
                    break
                put(item)
        finally:
            gen.close()
            put(done)

    threading.Thread(target=produce, name="localcat-stream", daemon=True).start()
    try:
        while (item := await queue.get()) is not done:
            yield item
    finally:
        stop.set()

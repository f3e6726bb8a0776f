"""The OpenAI chat-completions wire format, as pydantic models, with LocalCat's documented extensions.

Any OpenAI client parses these unchanged; the extensions ride in fields such clients keep as extras:
``choices[0].message.citations`` (non-streaming), ``citations`` on the first and last stream chunk,
and a top-level ``localcat`` object (answer id for feedback; on the final chunk also the marked-up
answer and which sources each sentence cites). Fields left unset are left out of the JSON, as
OpenAI leaves them out, except ``finish_reason``, which is ``null`` until the last chunk.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from core.schemas import Answer, Citation, SentenceAttribution


def _unset(value: object) -> bool:
    return value is None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class LocalCatExtension(BaseModel):
    """What LocalCat adds to a completion: the answer id (for /api/feedback) and its grounding."""

    answer_id: str
    grounded: bool
    standalone_question: str
    collection: str
    prompt_version: str
    model: str = Field(
        "", description="The model that answered, as the feedback store records it (e.g. "
        "'embedded qwen2.5-coder-0.5b-instruct-q4_k_m'): the request's `model` may be "
        "'localcat' or a catalog name.",
    )
    answer: str | None = Field(
        None, exclude_if=_unset,
        description="On the last stream chunk: the answer with its checked [n] marks (the deltas "
        "carried the text as generated).",
    )
    sentences: list[SentenceAttribution] | None = Field(
        None, exclude_if=_unset,
        description="The answer's sentences, each with the sources that support it.",
    )

    @classmethod
    def of(cls, answer: Answer, *, final: bool) -> LocalCatExtension:
        ext = cls(answer_id=answer.id, grounded=answer.grounded,
                  standalone_question=answer.standalone_question, collection=answer.collection,
                  prompt_version=answer.prompt_version, model=answer.model)
        if final:
            ext.answer, ext.sentences = answer.answer, answer.sentences
        return ext


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    citations: list[Citation] = Field(
        default_factory=list,
        description="LocalCat extension: the sources shown, each with the sentences citing it.",
    )


class Choice(BaseModel):
    index: int = 0
    finish_reason: Literal["stop", "length"] = "stop"
    message: AssistantMessage


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage = Field(default_factory=Usage)
    localcat: LocalCatExtension


class Delta(BaseModel):
    role: Literal["assistant"] | None = Field(None, exclude_if=_unset)
    content: str | None = Field(None, exclude_if=_unset)


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta = Field(default_factory=Delta)
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    citations: list[Citation] | None = Field(None, exclude_if=_unset)
    localcat: LocalCatExtension | None = Field(None, exclude_if=_unset)
    usage: Usage | None = Field(None, exclude_if=_unset)

    def sse(self) -> str:
        return f"data: {self.model_dump_json()}\n\n"


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorResponse(BaseModel):
    error: ErrorDetail

    def sse(self) -> str:
        return f"data: {self.model_dump_json()}\n\n"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "localcat"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

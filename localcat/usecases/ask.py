"""Asking: a question (with its history) to a collection, answered with citations."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from core.acts import Question
from core.errors import BadRequest
from core.schemas import Answer, Citation
from localcat.usecases.parts import Caller, Parts, check_length, shown_source


def ask(parts: Parts, caller: Caller, q: Question, *, answer_id: str | None = None) -> Iterator:
    """The pipeline's events (Sources, Token…, Done) for ``caller``'s question, after the checks:
    collection scope, sizes, the per-minute limit. The answer is recorded as the caller's, and
    citations name sources as users see them (no server paths)."""
    s = parts.settings.server
    collection = q.collection or parts.settings.chroma.collection
    caller.require_collection(collection)
    text = check_length("question", q.text.strip(), s.max_question_chars,
                        "server.max_question_chars")
    if not text:
        raise BadRequest("The question is empty", "type a question")
    if len(q.history) + 1 > s.max_messages:
        raise BadRequest(f"The chat has {len(q.history) + 1:,} messages, more than the "
                         f"{s.max_messages:,} allowed", "start a new chat, or ask an admin to "
                         "raise server.max_messages")
    for m in q.history:
        check_length(f"{m.role} message in the history", m.content, s.max_message_chars,
                     "server.max_message_chars")
    parts.take(caller, "chat")
    pipeline = parts.container.pipeline(collection, q.model, record=True, user=caller.name)
    events = pipeline.stream(text, q.history, answer_id=answer_id)
    return _shown(events, parts.settings.uploads_dir / collection)


def _shown(events: Iterator, uploads) -> Iterator:
    from assistant.pipeline import Done, Sources

    def show(citations: list[Citation]) -> list[Citation]:
        return [c if c.reviewed else c.model_copy(update={"source": shown_source(c.source, uploads)})
                for c in citations]

    try:
        for event in events:
            if isinstance(event, Sources):
                yield replace(event, citations=show(event.citations))
            elif isinstance(event, Done):
                answer: Answer = event.answer
                yield replace(event, answer=answer.model_copy(
                    update={"citations": show(answer.citations)}))
            else:
                yield event
    finally:
        events.close()

"""The RAG pipeline: condense the follow-up → retrieve → prompt → stream the answer → citations.

The steps are LCEL runnables; ``stream`` drives them so callers get the sources before the first
token and the finished ``Answer`` (what feedback snapshots) at the end. Tokens stream as the model
writes them; the finished answer carries the checked [n] marks (``assistant/citations.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.output_parsers import StrOutputParser

from assistant.citations import CitationAttributor, cited_numbers
from assistant.retriever import HybridRetriever
from core.answer_metrics import LoopWatch, gram_counts
from core.errors import LocalCatError
from core.prompt import (
    CONDENSE_PROMPT,
    NOT_FOUND,
    PROMPT_VERSION,
    answer_prompt,
    drop_echoed_headers,
    format_context,
    history_messages,
)
from core.schemas import Answer, Citation, Message, SentenceAttribution, new_answer_id

SNIPPET_CHARS = 300


@dataclass
class Sources:
    """Sent first: what was retrieved for the (condensed) question."""

    standalone_question: str
    citations: list[Citation]


@dataclass
class Token:
    text: str


@dataclass
class Usage:
    """Tokens of the answer's generation, as the runtime counted them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Done:
    """Sent last: the answer with its checked citations (``answer.answer`` is the marked-up text)."""

    answer: Answer
    usage: Usage | None = None
    finish_reason: str = "stop"  # "length" when the model ran into max_tokens


Event = Sources | Token | Done


def citations_for(docs: list[Document]) -> list[Citation]:
    return [
        Citation(
            n=n, chunk_id=d.metadata["chunk_id"], source=d.metadata["source"],
            page=d.metadata.get("page"), heading=d.metadata.get("heading"),
            anchor=d.metadata.get("anchor"), snippet=_snippet(d.page_content),
            score=round(d.metadata["score"], 6),
            similarity=None if d.metadata.get("similarity") is None else round(d.metadata["similarity"], 4),
            reviewed=bool(d.metadata.get("reviewed")),
        )
        for n, d in enumerate(docs, start=1)
    ]


def _mark_cited(citations: list[Citation], text: str, sentences: list[SentenceAttribution]) -> None:
    cited = cited_numbers(text)
    for c in citations:
        c.cited = c.n in cited
        c.sentences = [i for i, s in enumerate(sentences) if c.n in s.sources]


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rsplit(" ", 1)[0] + "…"


class RagPipeline:
    def __init__(self, llm: BaseChatModel, retriever: HybridRetriever, *, model_tag: str,
                 condense: bool = True, history_turns: int = 6,
                 translate_error: Callable[[BaseException], LocalCatError | None] | None = None,
                 on_answer: Callable[[Answer], None] | None = None,
                 attributor: CitationAttributor | None = None,
                 reviewed: Callable[[str], Document | None] | None = None,
                 prompt_version: str = PROMPT_VERSION, stop_loops: bool = True,
                 user: str | None = None):
        self.llm = llm
        self.user = user  # who asks: kept with each answer (only they may rate it)
        self.stop_loops = stop_loops
        self.prompt_version = prompt_version
        self.reviewed = reviewed
        self.attributor = attributor
        self.on_answer = on_answer
        self.translate_error = translate_error
        self.retriever = retriever
        self.model_tag = model_tag
        self.condense = condense
        self.history_turns = history_turns
        self.condense_chain = CONDENSE_PROMPT | llm | StrOutputParser()
        self.answer_chain = answer_prompt(prompt_version) | llm

    @contextmanager
    def _runtime_errors(self) -> Iterator[None]:
        """The model client's own errors (e.g. httpx mid-stream) as LocalCat errors with a fix."""
        try:
            yield
        except LocalCatError:
            raise
        except Exception as exc:
            err = self.translate_error(exc) if self.translate_error else None
            if err is None:
                raise
            raise err from exc

    def standalone(self, question: str, history: list[BaseMessage]) -> str:
        if not (self.condense and history):
            return question
        with self._runtime_errors():
            rewritten = self.condense_chain.invoke({"question": question, "history": history}).strip()
        # Tiny models sometimes answer instead of rewriting; a blank or rambling rewrite is worse
        # than the raw follow-up.
        return rewritten if 0 < len(rewritten) <= 4 * len(question) + 200 else question

    def stream(self, question: str, history: list[Message] | None = None, *,
               answer_id: str | None = None) -> Iterator[Event]:
        started = time.perf_counter()
        history = history or []
        msgs = history_messages(history, self.history_turns)
        standalone = self.standalone(question, msgs)
        docs = self.retriever.invoke(standalone)
        # A user's correction to this very question goes first (and answers even when the
        # documents hold nothing relevant).
        hit = self.reviewed(standalone) if self.reviewed is not None else None
        if hit is not None:
            docs = [hit, *docs]
        citations = citations_for(docs)
        yield Sources(standalone, citations)

        usage, finish = None, "stop"
        if docs:
            parts: list[str] = []
            watch = LoopWatch(gram_counts(d.page_content for d in docs)) if self.stop_loops else None
            stream = self.answer_chain.stream(
                {"context": format_context(docs), "history": msgs, "question": question}
            )
            with self._runtime_errors(), closing(stream):
                for chunk in stream:
                    if chunk.content:
                        parts.append(chunk.content)
                        yield Token(chunk.content)
                        cut = watch.feed("".join(parts)) if watch is not None else None
                        if cut is not None:
                            # The rest would be more of the same until max_tokens; the final
                            # text (Done) ends where the repeating began.
                            parts = ["".join(parts)[:cut]]
                            break
                    if chunk.usage_metadata:  # the runtimes report both on the last chunk
                        usage = Usage(chunk.usage_metadata["input_tokens"],
                                      chunk.usage_metadata["output_tokens"])
                    meta = chunk.response_metadata
                    if "length" in (meta.get("finish_reason"), meta.get("done_reason")):
                        finish = "length"
            raw = "".join(parts).strip()
        else:
            raw = NOT_FOUND
            yield Token(raw)
        text, sentences = self._attribute(raw, docs)
        _mark_cited(citations, text, sentences)
        answer = Answer(
            id=answer_id or new_answer_id(), question=question, standalone_question=standalone, history=history,
            collection=self.retriever.collection, answer=text, raw_answer=raw, sentences=sentences,
            citations=citations, grounded=bool(docs), model=self.model_tag, prompt_version=self.prompt_version,
            latency_s=round(time.perf_counter() - started, 3), user=self.user,
        )
        if self.on_answer is not None:  # recorded before anyone can rate it
            self.on_answer(answer)
        yield Done(answer, usage, finish)

    def _attribute(self, raw: str, docs: list[Document]) -> tuple[str, list[SentenceAttribution]]:
        if not docs or raw == NOT_FOUND:
            return raw, []
        text = drop_echoed_headers(raw, len(docs))
        if self.attributor is None:
            return text, []
        result = self.attributor.attribute(text, [d.page_content for d in docs])
        return result.text, result.sentences

    def ask(self, question: str, history: list[Message] | None = None, *,
            answer_id: str | None = None) -> Answer:
        for event in self.stream(question, history, answer_id=answer_id):
            if isinstance(event, Done):
                return event.answer
        raise AssertionError("pipeline ended without an answer")

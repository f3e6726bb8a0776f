"""Data sets from the real feedback store, with answers made by the real pipeline (fake model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.retrievers import BaseRetriever

from assistant.feedback import FeedbackStore
from assistant.pipeline import RagPipeline
from core.chunkstore import ChunkStore
from core.errors import ConfigError
from core.llm import to_llama_messages
from core.schemas import Answer, Chunk, Message
from core.settings import FinetuneSettings
from finetune.artifacts import DatasetReport, RunLayout
from finetune.dataset import (
    NotEnoughData,
    PromptBuilder,
    build_dataset,
    read_jsonl,
    split_of,
)


class RecordingChat(BaseChatModel):
    """Answers ``reply`` and records the messages of every call (what the model saw)."""

    reply: str = "It is in the handbook [1]."
    seen: list[list[BaseMessage]] = []

    @property
    def _llm_type(self) -> str:
        return "recording"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        self.seen.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self.reply))])


class FixedRetriever(BaseRetriever):
    docs: list[Document]
    collection: str = "kb"

    def _get_relevant_documents(self, query, *, run_manager=None):
        return self.docs


CHUNKS = [
    Chunk(id="c1", text="Vacation is 27 days per year.\n", source="/docs/leave.md",
          file_hash="h", position=0, heading="Leave"),
    Chunk(id="c2", text="Sick leave: call your lead before 9:30.", source="/docs/leave.md",
          file_hash="h", position=1, page=2),
]


def _doc(c: Chunk) -> Document:
    meta = {"chunk_id": c.id, "source": c.source, "score": 0.5, "similarity": 0.7,
            "page": c.page, "heading": c.heading, "anchor": None}
    return Document(page_content=c.text, metadata=meta)


@pytest.fixture
def chunks(tmp_path: Path) -> ChunkStore:
    store = ChunkStore(tmp_path / "index.sqlite")
    store.ensure_collection("kb", "test", 3)
    store.mark_pending("kb", "/docs/leave.md", "h", "{}")
    store.commit_file("kb", "/docs/leave.md", "h", "{}", CHUNKS)
    return store


@pytest.fixture
def feedback(tmp_path: Path):
    with FeedbackStore(tmp_path / "feedback.sqlite") as store:
        yield store


def pipeline(docs: list[Document] | None = None, reply: str = "It is in the handbook [1].") -> RagPipeline:
    llm = RecordingChat(reply=reply, seen=[])
    retriever = FixedRetriever(docs=[_doc(c) for c in CHUNKS] if docs is None else docs)
    return RagPipeline(llm, retriever, model_tag="fake", condense=False, history_turns=2)


def settings(**kw: Any) -> FinetuneSettings:
    return FinetuneSettings(**{"min_examples": 1, **kw})


def test_prompt_is_rebuilt_exactly_as_the_model_saw_it(chunks: ChunkStore) -> None:
    pipe = pipeline()
    history = [Message(role="user", content="Hi"), Message(role="assistant", content="Hello!"),
               Message(role="user", content="About leave…"), Message(role="assistant", content="Yes?")]
    answer = pipe.ask("How many vacation days?", history)
    seen = to_llama_messages(pipe.llm.seen[-1])

    messages, how = PromptBuilder(chunks, history_turns=2).messages(answer)
    assert messages == seen
    assert how == "chunks"


def test_context_falls_back_to_the_snapshot_when_chunks_are_gone(chunks: ChunkStore) -> None:
    answer = pipeline().ask("How many vacation days?")
    chunks.remove_file("kb", "/docs/leave.md")

    messages, how = PromptBuilder(chunks, history_turns=2).messages(answer)
    assert how == "snapshot"
    # The snapshot keeps whitespace-folded snippets: close to, but not always, the original text.
    assert "[1] (leave.md, section Leave)\nVacation is 27 days per year." in messages[-1]["content"]
    _, how = PromptBuilder(None, history_turns=2).messages(answer)
    assert how == "snapshot"


def _record(feedback: FeedbackStore, question: str, rating: str | None = None,
            correction: str | None = None, docs: list[Document] | None = None,
            reply: str = "It is in the handbook [1].", **answer_fields: Any) -> Answer:
    answer = pipeline(docs, reply).ask(question)
    if answer_fields:
        answer = answer.model_copy(update=answer_fields)
    feedback.record_answer(answer)
    feedback.add_feedback(answer.id, rating, correction=correction)
    return answer


def _fill(feedback: FeedbackStore, n: int = 40) -> None:
    for i in range(n):
        _record(feedback, f"Question number {i} about leave?", "down" if i % 2 else None,
                correction=f"Corrected answer {i} [1].")


def test_builds_sft_and_kto_rows_and_drops_what_it_must(
    feedback: FeedbackStore, chunks: ChunkStore, tmp_path: Path
) -> None:
    _fill(feedback, 30)
    _record(feedback, "Thumbs up question?", "up", reply="Good answer [1].")
    _record(feedback, "Thumbs down question?", "down", reply="Bad answer.")
    _record(feedback, "Nothing retrieved?", "up", docs=[])  # the canned NOT_FOUND: no prompt
    _record(feedback, "Rude one?", None, correction="This is bullshit.")
    _record(feedback, "Old prompt?", "up", prompt_version="rag-v0")
    _record(feedback, "Thumbs up question?", "up", reply="Good answer [1].")  # duplicate
    # A later verdict replaces an earlier one on the same answer: only the latest counts.
    changed = _record(feedback, "Changed my mind?", "up", reply="Fine [1].")
    feedback.add_feedback(changed.id, "down")

    run = RunLayout(tmp_path / "run")
    report = build_dataset(feedback, chunks, run, settings(), history_turns=2)
    out = run.dataset

    assert report.feedback_rows == 37
    assert report.dropped == {"ungrounded": 1, "blocked": 1, "old_prompt_version": 1,
                              "duplicate_sft": 1, "duplicate_kto": 1}
    assert sum(report.sft.values()) == 31  # 30 corrections + 1 thumbs-up
    assert report.sources == {"correction": 30, "thumbs_up": 1}
    assert report.context == {"chunks": 31}
    sft = [r for s in ("train", "val", "test") for r in read_jsonl(out / f"{s}.jsonl")]
    assert len(sft) == 31 and all(r["messages"][0]["role"] == "system" for r in sft)
    assert {r["target"] for r in sft if r["source"] == "thumbs_up"} == {"Good answer [1]."}

    kto = read_jsonl(out / "kto.jsonl")
    by_question = {(r["question"], r["completion"]): r["label"] for r in kto}
    assert by_question[("Thumbs down question?", "Bad answer.")] is False
    assert by_question[("Changed my mind?", "Fine [1].")] is False
    assert by_question[("Question number 0 about leave?", "Corrected answer 0 [1].")] is True
    assert by_question[("Question number 1 about leave?", "It is in the handbook [1].")] is False
    assert sum(report.kto.values()) == len(kto) == 30 * 2 + 1 + 1 + 1

    saved = json.loads((out / "report.json").read_text())
    assert saved["sft"] == report.sft and saved["sha256"] == report.sha256
    assert run.read_dataset() == report  # written and read back through one model
    assert run.read_dataset().summary().startswith("37 rated answers → SFT train")


def test_split_is_by_question_and_never_leaks_test_into_train(
    feedback: FeedbackStore, chunks: ChunkStore, tmp_path: Path
) -> None:
    _fill(feedback, 40)
    _record(feedback, "question number 3 about LEAVE", "up")  # same question, other wording
    a, b = RunLayout(tmp_path / "a"), RunLayout(tmp_path / "b")
    report = build_dataset(feedback, chunks, a, settings(), history_turns=2)
    again = build_dataset(feedback, chunks, b, settings(), history_turns=2)
    assert report.sha256 == again.sha256  # deterministic

    splits = {s: read_jsonl(a.split(s)) for s in ("train", "val", "test")}
    questions = {s: {r["question"].casefold().strip("?") for r in rows} for s, rows in splits.items()}
    assert questions["test"] and not questions["test"] & questions["train"]
    assert not questions["val"] & questions["train"]
    same = [s for s, rows in splits.items() if any("number 3 about" in r["question"] for r in rows)]
    assert len(same) == 1


def test_split_shares_follow_the_settings() -> None:
    s = FinetuneSettings(test_fraction=0.1, val_fraction=0.1)
    splits = [split_of(f"How do I do thing {i}?", s) for i in range(2000)]
    assert 0.07 < splits.count("test") / 2000 < 0.13
    assert 0.07 < splits.count("val") / 2000 < 0.13
    assert split_of("How do I do thing 7?", s) == split_of("  how do i do THING 7 ", s)


def test_few_questions_still_get_a_test_split(
    feedback: FeedbackStore, chunks: ChunkStore, tmp_path: Path
) -> None:
    for q in ("Alpha?", "Beta?", "Gamma?"):
        _record(feedback, q, "up")
    report = build_dataset(feedback, chunks, RunLayout(tmp_path / "d"),
                           settings(test_fraction=0.01, val_fraction=0.01), history_turns=2)
    assert report.sft["test"] == 1 and report.test_fallback


def test_empty_store_is_refused(feedback: FeedbackStore, tmp_path: Path) -> None:
    with pytest.raises(NotEnoughData, match="0 training and 0 test examples from 0 rated answers"):
        build_dataset(feedback, None, RunLayout(tmp_path / "e"), settings(min_examples=20),
                      history_turns=2)
    assert not (tmp_path / "e").exists()


def test_too_little_data_names_the_setting(
    feedback: FeedbackStore, chunks: ChunkStore, tmp_path: Path
) -> None:
    _fill(feedback, 5)
    with pytest.raises(NotEnoughData, match="LOCALCAT_FINETUNE__MIN_EXAMPLES"):
        build_dataset(feedback, chunks, RunLayout(tmp_path / "f"), settings(min_examples=20),
                      history_turns=2)


def test_a_damaged_report_is_refused_with_the_step_that_rebuilds_it(tmp_path: Path) -> None:
    run = RunLayout(tmp_path / "r1")
    with pytest.raises(ConfigError, match="Run r1 has no data set.*finetune dataset --run r1"):
        run.read_dataset()
    DatasetReport(run="r1", path=run.dataset, sha256="abc").write(run.dataset_json)
    saved = json.loads(run.dataset_json.read_text())
    saved["sft"] = {"train": "many"}
    run.dataset_json.write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"not a valid data set report \(sft\.train: .*finetune "
                                          r"dataset --run r1"):
        run.read_dataset()

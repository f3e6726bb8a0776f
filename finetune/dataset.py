"""Data sets from the feedback store: supervised pairs, unpaired good/bad rows, a fixed split.

Each answer's verdict (its latest feedback) gives:

* an SFT row when it has a correction (target: the correction) or a thumbs-up (target: the
  answer), with the messages rebuilt exactly as the assistant sent them: the same system prompt,
  the retrieved context formatted by ``format_context``, the kept history and the question;
* KTO rows: thumbs-up → the answer is good, thumbs-down → bad; a correction is good, and the answer
  it replaced bad unless it was also rated up.

The context comes from the chunk store when the cited chunks still exist (chunk ids name their
source and text, so the text is what the model saw; older ids are checked against the recorded
snippet) and otherwise from the snippets in the answer's snapshot, which may be shortened; each
row says which in ``context``.

The split hashes the normalised question, so a question (and its rephrasings that normalise the
same) always lands in the same split, run after run; the test split never trains.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from langchain_core.documents import Document

from core.errors import LocalCatError
from core.schemas import Answer
from core.settings import FinetuneSettings
from finetune.artifacts import SPLITS, DatasetReport, RunLayout, Split


class NotEnoughData(LocalCatError):
    status = 422


def new_run_name() -> str:
    return "run-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def normalise_question(question: str) -> str:
    """The form whose hash puts a question in train or test (split_of). Not core.schemas'
    normalize_question (words only), on purpose: a new form would move recorded questions between
    the splits, and a model could then be tested on what it was trained on."""
    return " ".join(question.casefold().split()).strip(" ?!.")


def split_of(question: str, settings: FinetuneSettings) -> Split:
    """train/val/test for a question, from a hash of its normalised text."""
    h = _bucket(question)
    if h < settings.test_fraction:
        return "test"
    if h < settings.test_fraction + settings.val_fraction:
        return "val"
    return "train"


def _bucket(question: str) -> float:
    digest = hashlib.sha256(normalise_question(question).encode()).hexdigest()
    return int(digest[:15], 16) / 16**15


def _blocked(text: str, blocklist: Iterable[str]) -> str | None:
    low = text.casefold()
    for word in blocklist:
        if re.search(rf"(?<!\w){re.escape(word.casefold())}(?!\w)", low):
            return word
    return None


class PromptBuilder:
    """Rebuilds the messages the pipeline sent for a recorded answer."""

    def __init__(self, store: Any | None, history_turns: int, prompt_version: str | None = None):
        from core.prompt import PROMPT_VERSION

        self.store = store
        self.history_turns = history_turns
        self.prompt_version = prompt_version or PROMPT_VERSION
        self._collections: dict[str, bool] = {}

    def messages(self, answer: Answer) -> tuple[list[dict[str, str]], str]:
        """(llama.cpp messages, how the context was rebuilt: 'chunks', 'snapshot' or 'mixed')."""
        from core.llm import to_llama_messages
        from core.prompt import answer_prompt, format_context, history_messages

        chunks = self._chunks(answer)
        docs, found = [], 0
        for c in answer.citations:
            chunk = chunks.get(c.chunk_id)
            if chunk is not None:
                found += 1
                meta = {"source": chunk.source, "page": chunk.page, "heading": chunk.heading}
                docs.append(Document(page_content=chunk.text, metadata=meta))
            else:
                meta = {"source": c.source, "page": c.page, "heading": c.heading}
                docs.append(Document(page_content=c.snippet, metadata=meta))
        how = "chunks" if found == len(docs) else "snapshot" if found == 0 else "mixed"
        # The same calls the pipeline makes (RagPipeline.stream): history cut the same way, the
        # same prompt template, the same conversion to llama.cpp's messages.
        prompt = answer_prompt(self.prompt_version).format_messages(
            context=format_context(docs),
            history=history_messages(answer.history, self.history_turns),
            question=answer.question,
        )
        return to_llama_messages(prompt), how

    def _chunks(self, answer: Answer) -> dict[str, Any]:
        if self.store is None or not answer.citations:
            return {}
        if answer.collection not in self._collections:
            self._collections[answer.collection] = self.store.has_collection(answer.collection)
        if not self._collections[answer.collection]:
            return {}
        # Ids from before content ids (index migration 2) resolve through their aliases; a chunk
        # counts only when its text starts with the snippet the answer recorded, so a chunk that
        # changed since (possible only for those old ids) falls back to the snapshot.
        current = self.store.resolve(answer.collection, [c.chunk_id for c in answer.citations])
        found = self.store.chunks(answer.collection, current.values())
        out = {}
        for c in answer.citations:
            chunk = found.get(current[c.chunk_id])
            if chunk is not None and _same_text(chunk.text, c.snippet):
                out[c.chunk_id] = chunk
        return out


def _same_text(text: str, snippet: str) -> bool:
    """The chunk ``text`` is the one whose (whitespace-folded, maybe shortened) snippet was shown."""
    return " ".join(text.split()).startswith(snippet.removesuffix("…").rstrip())


def _row_id(messages: list[dict[str, str]], target: str) -> str:
    blob = json.dumps([messages, target], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def iter_examples(
    verdicts: Iterable[dict[str, Any]], builder: PromptBuilder, settings: FinetuneSettings,
    report: DatasetReport,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """('sft' | 'kto', row) for each usable verdict, counting what is dropped and why."""
    dropped: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    for verdict in verdicts:
        report.feedback_rows += 1
        answer = Answer.model_validate(verdict["answer"])
        if not answer.grounded:
            # Nothing was retrieved, so the model was never asked: the canned reply is not its.
            dropped["ungrounded"] += 1
            continue
        if answer.prompt_version != builder.prompt_version and not settings.keep_old_prompts:
            dropped["old_prompt_version"] += 1
            continue
        if _blocked(answer.question, settings.blocklist):
            dropped["blocked"] += 1
            continue
        rating, correction = verdict.get("rating"), (verdict.get("correction") or "").strip()
        if _blocked(correction, settings.blocklist):
            dropped["blocked"] += 1  # an abusive verdict says nothing about the answer either
            continue
        candidates: list[tuple[str, str, bool]] = []  # (kind, text, good)
        if correction:
            candidates.append(("correction", correction, True))
            if rating != "up":
                candidates.append(("corrected_answer", answer.answer.strip(), False))
        elif rating in ("up", "down"):
            candidates.append(("thumbs_" + rating, answer.answer.strip(), rating == "up"))
        messages, how = builder.messages(answer)
        split = split_of(answer.question, settings)
        base = {
            "answer_id": answer.id, "feedback_id": verdict["id"], "question": answer.question,
            "split": split, "prompt_version": answer.prompt_version, "context": how,
            "model": answer.model,
        }
        for kind, text, good in candidates:
            if not text:
                dropped["empty"] += 1
                continue
            if _blocked(text, settings.blocklist):
                dropped["blocked"] += 1
                continue
            row_id = _row_id(messages, text)
            for dataset in (("sft",) if good else ()) + ("kto",):
                key = (dataset, row_id + str(good))
                if key in seen:
                    dropped[f"duplicate_{dataset}"] += 1
                    continue
                seen.add(key)
                if dataset == "sft":
                    yield "sft", {"id": row_id, **base, "source": kind, "messages": messages,
                                  "target": text}
                else:
                    yield "kto", {"id": row_id, **base, "source": kind, "messages": messages,
                                  "completion": text, "label": good}
    report.dropped.update(dropped)


def build_dataset(
    feedback: Any, store: Any | None, run: RunLayout, settings: FinetuneSettings, *,
    history_turns: int, prompt_version: str | None = None,
) -> DatasetReport:
    """Write the run's ``dataset/{train,val,test,kto}.jsonl`` and ``report.json``; return the report.

    ``feedback`` is a ``FeedbackStore``, ``store`` the ``ChunkStore`` (None when nothing was ever
    ingested). Raises NotEnoughData when the training or test split would be too small.
    """
    report = DatasetReport(run=run.name, path=run.dataset)
    # Trained as it will be prompted: the configured prompt version.
    builder = PromptBuilder(store, history_turns, prompt_version)
    rows: dict[str, list[dict[str, Any]]] = {"sft": [], "kto": []}
    for dataset, row in iter_examples(feedback.iter_feedback(latest_only=True), builder, settings, report):
        rows[dataset].append(row)

    sft = rows["sft"]
    if sft and not any(r["split"] == "test" for r in sft):
        # Few questions can all hash outside the test share: hold out the one nearest to it, so
        # the promotion gate always has something to measure. Deterministic for a given data set.
        pick = min(sft, key=lambda r: _bucket(r["question"]))["question"]
        for r in (*sft, *rows["kto"]):
            if normalise_question(r["question"]) == normalise_question(pick):
                r["split"] = "test"
        report.test_fallback = True

    for r in sft:
        report.sft[r["split"]] += 1
        report.sources[r["source"]] = report.sources.get(r["source"], 0) + 1
        report.context[r["context"]] = report.context.get(r["context"], 0) + 1
    for r in rows["kto"]:
        report.kto[r["split"]] += 1

    if report.sft["train"] < settings.min_examples or report.sft["test"] == 0:
        raise NotEnoughData(
            f"Too little feedback to fine-tune: {report.sft['train']} training and "
            f"{report.sft['test']} test examples from {report.feedback_rows} rated answers "
            f"(at least {settings.min_examples} training examples are needed; "
            f"dropped: {dict(report.dropped) or 'none'})",
            "collect more corrections and thumbs-up in the assistant, or lower "
            "LOCALCAT_FINETUNE__MIN_EXAMPLES",
        )

    run.dataset.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(_write_jsonl(run.split(split), [r for r in sft if r["split"] == split]))
    digest.update(_write_jsonl(run.kto, rows["kto"]))
    report.sha256 = digest.hexdigest()
    report.write(run.dataset_json)
    return report


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> bytes:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

"""Answer quality: ask an answer set through the real pipeline, once per model, and score it.

Every question goes through ``Container.pipeline(collection).stream`` exactly as `localcat ask`
sends it; answers are read only through the pipeline's events (Token, Done). Per answer:

- source_shown: a chunk of the reference source is among the chunks shown with the answer;
- citation_correct: share of the chunks the answer cites as [n] that come from the reference source
  (over the answers that cite any);
- grounded_cites_source: the answer is grounded (a chunk of the reference source was shown and the
  answer is not "not found") and at least one of its [n] points at a chunk of that source; None for
  answers that are not grounded (the issue's target: ≥ 80 % of grounded answers);
- key_fact_recall: share of the reference's first 60 distinct content words found in the answer;
- token_f1: F1 of the content words of answer and reference;
- support: share of the answer's distinct content words found in the chunks it cites (in all
  chunks shown when it cites none); not measured for refusals;
- refused: "not found" (the pipeline's own text, or a refusal phrase near the start);
- repetitive: a word 4-gram occurs 3 times or more, more often than in the chunks shown together
  (the answer loops, rather than copying a source that repeats itself);
- latency (call to Done), time to first token, and writing speed (Token events after the first,
  over the time from the first to the last; answers the model wrote, not the pipeline's not-found).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ConfigError
from localcat.evaluation.datasets import AnswerItem
from localcat.evaluation.metrics import (
    is_refusal,
    is_repetitive,
    key_fact_recall,
    mean,
    percentile,
    support,
    token_f1,
)
from localcat.evaluation.runner import Prepared

if TYPE_CHECKING:
    from core.schemas import Answer, Citation
    from core.settings import LLMSettings, Settings
    from localcat.evaluation.records import AnswerRecord, RecordWriter


def resolve_model(spec: str, settings: Settings) -> LLMSettings:
    """LLM settings for a ``--model`` value: "default" (what `localcat serve` would serve, the
    active fine-tuned version included), a catalog name (`localcat models list --available`), a
    GGUF file for the embedded runtime, or ``ollama:NAME``."""
    from core.catalog import CATALOG

    if spec == "default":
        from localcat.container import Container

        return Container(settings).served_llm
    if spec.startswith("ollama:"):
        return settings.llm.model_copy(update={"runtime": "ollama", "ollama_model": spec[7:]})
    if spec in CATALOG:
        return settings.llm.model_copy(
            update={"runtime": "embedded", "model": spec, "model_path": None, "lora_path": None})
    path = Path(spec).expanduser()
    if path.is_file():
        return settings.llm.model_copy(
            update={"runtime": "embedded", "model_path": path.resolve(), "lora_path": None})
    raise ConfigError(
        f"Unknown model {spec!r}: not 'default', a catalog name, a GGUF file or ollama:NAME",
        f"give --model default, a catalog name ({', '.join(CATALOG)}), "
        "--model path/to/model.gguf or --model ollama:llama3.2")


@dataclass
class Timed:
    """One pipeline run: the finished answer and when its tokens came."""

    answer: Answer
    latency_s: float
    ttft_s: float | None
    tokens: int
    decode_s: float | None  # first token to the last


def ask_timed(pipeline, question: str) -> Timed:
    from assistant.pipeline import Done, Token

    start = time.perf_counter()
    first = last = None
    tokens = 0
    answer = None
    for event in pipeline.stream(question):
        if isinstance(event, Token):
            tokens += 1
            last = time.perf_counter()
            first = first if first is not None else last
        elif isinstance(event, Done):
            answer = event.answer
    end = time.perf_counter()
    if answer is None:
        raise AssertionError("pipeline ended without an answer")
    # Writing speed stops at the last token: what the pipeline does after it (checking
    # citations) counts in the latency, not in tokens/s.
    return Timed(answer, end - start, None if first is None else first - start, tokens,
                 None if first is None else last - first)


def score_answer(item: AnswerItem, answer: str, shown: list[Citation],
                 doc_of: Callable[[str], str], chunk_text: Mapping[str, str],
                 not_found: str | None = None) -> dict:
    """The per-answer measures (see the module docstring); None where one does not apply."""
    refs = set(item.sources)
    cited = [c for c in shown if c.cited]
    refused = is_refusal(answer, not_found)
    row: dict = {
        "id": item.id, "question": item.question, "answerable": item.answerable,
        "kind": item.kind, "answer": answer,
        "shown": [doc_of(c.source) for c in shown], "cited": [c.n for c in cited],
        "refused": refused,
        "repetitive": is_repetitive(answer, [chunk_text.get(c.chunk_id, "") for c in shown]),
        "source_shown": None, "citation_correct": None, "grounded_cites_source": None,
        "key_fact_recall": None, "token_f1": None,
    }
    if item.answerable:
        if refs:
            row["source_shown"] = any(doc_of(c.source) in refs for c in shown)
            if cited:
                row["citation_correct"] = sum(doc_of(c.source) in refs for c in cited) / len(cited)
            if row["source_shown"] and not refused:
                row["grounded_cites_source"] = any(doc_of(c.source) in refs for c in cited)
        row["key_fact_recall"] = key_fact_recall(answer, item.answer)
        row["token_f1"] = token_f1(answer, item.answer)
    evidence = cited or shown
    row["support"] = (support(answer, [chunk_text[c.chunk_id] for c in evidence
                                       if c.chunk_id in chunk_text])
                      if evidence and not refused else None)
    return row


def summarize(rows: Iterable[dict]) -> dict:
    """Per-model figures from per-answer rows (each with the timing fields of ``Timed``)."""
    rows = list(rows)
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    written = [r for r in rows if r["decode_s"] and r["tokens"] > 1]
    decode_s = sum(r["decode_s"] for r in written)
    latency = [r["latency_s"] for r in rows]
    ttft = [r["ttft_s"] for r in rows if r["ttft_s"] is not None]
    return {
        "source_shown": mean(r["source_shown"] for r in answerable),
        "cited": mean(bool(r["cited"]) for r in answerable) if answerable else None,
        "citation_correct": mean(r["citation_correct"] for r in answerable),
        "grounded_answers": sum(r.get("grounded_cites_source") is not None for r in answerable),
        "grounded_citation_correct": mean(r.get("grounded_cites_source") for r in answerable),
        "key_fact_recall": mean(r["key_fact_recall"] for r in answerable),
        "token_f1": mean(r["token_f1"] for r in answerable),
        "support": mean(r["support"] for r in rows),
        "not_found": mean(r["refused"] for r in answerable),
        "refusal": mean(r["refused"] for r in unanswerable),
        "repetition": mean(r["repetitive"] for r in rows),
        "latency_p50_s": percentile(latency, 50),
        "latency_p95_s": percentile(latency, 95),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "tokens_per_s": sum(r["tokens"] - 1 for r in written) / decode_s if decode_s else None,
    }


def run_model(prepared: Prepared, items: list[AnswerItem], llm: LLMSettings, *,
              quiet: bool = False, desc: str = "answers",
              records: list[AnswerRecord] | RecordWriter | None = None) -> tuple[str, list[dict]]:
    """(model tag, per-answer rows) for one model over the answer set; with ``records``, each
    question's record (shown chunks, raw and marked-up text) is appended to it."""
    from tqdm import tqdm

    from core.prompt import NOT_FOUND
    from localcat.container import Container

    c = Container(prepared.container.settings.model_copy(update={"llm": llm}))
    pipeline = c.pipeline(prepared.collection)
    # Loading is not answering: load the embedder and the model before the first timed question.
    c.embeddings.embed_query("warm-up")
    model, tag = c.chat_model()
    if hasattr(model, "load"):  # the embedded runtime; Ollama loads on its first request
        model.load()
    rows = []
    for item in tqdm(items, desc=desc, unit="q", file=sys.stderr, disable=quiet):
        t = ask_timed(pipeline, item.question)
        shown = t.answer.citations
        chunks = c.store.chunks(prepared.collection, [s.chunk_id for s in shown])
        texts = {i: ch.text for i, ch in chunks.items()}
        row = score_answer(item, t.answer.answer, shown, prepared.doc_of, texts, NOT_FOUND)
        if records is not None:
            records.append(_record(desc, item, t.answer, prepared.doc_of, texts))
        row.update(grounded=t.answer.grounded, latency_s=round(t.latency_s, 4),
                   ttft_s=None if t.ttft_s is None else round(t.ttft_s, 4), tokens=t.tokens,
                   decode_s=None if t.decode_s is None or not t.answer.grounded
                   else round(t.decode_s, 4))
        rows.append(row)
    return tag, rows


def _record(model: str, item: AnswerItem, answer: Answer, doc_of: Callable[[str], str],
            chunk_text: Mapping[str, str]) -> AnswerRecord:
    from localcat.evaluation.records import AnswerRecord, ShownChunk

    return AnswerRecord(
        model=model, id=item.id, question=item.question, reference=item.answer,
        reference_docs=list(item.sources), kind=item.kind,
        shown=[ShownChunk(n=c.n, chunk_id=c.chunk_id, doc=doc_of(c.source),
                          text=chunk_text.get(c.chunk_id, "")) for c in answer.citations],
        raw_answer=answer.raw_answer or answer.answer, answer=answer.answer,
        sentences=answer.sentences)


def evaluate_answers(items: list[AnswerItem], prepared: Prepared, models: list[str],
                     settings: Settings, *, quiet: bool = False,
                     records: list[AnswerRecord] | RecordWriter | None = None) -> dict:
    """The answer report: per model, its figures side by side and every answer (and, with
    ``records``, each answer's record appended to it)."""
    report_models: dict[str, dict] = {}
    for spec in models:
        llm = resolve_model(spec, settings)
        label = spec if spec not in report_models else f"{spec}#{len(report_models) + 1}"
        tag, rows = run_model(prepared, items, llm, quiet=quiet, desc=label, records=records)
        report_models[label] = {
            "spec": spec, "tag": tag,
            "llm": llm.model_dump(mode="json", include={"runtime", "model_path", "lora_path",
                                                        "ollama_model", "temperature",
                                                        "max_tokens", "threads"}),
            "metrics": summarize(rows), "answers": rows,
        }
    c = prepared.container
    return {
        "dataset": {"questions": len(items), "answerable": sum(i.answerable for i in items),
                    "unanswerable": sum(not i.answerable for i in items)},
        "collection": prepared.collection,
        "chunks": prepared.chunks,
        "ingest": {"seconds": round(prepared.ingest_seconds, 2), **prepared.ingest_summary},
        "settings": {"retrieval": c.settings.retrieval.model_dump(),
                     "chunking": c.settings.chunking.model_dump(), "embedding": c.embeddings.name},
        "models": report_models,
    }

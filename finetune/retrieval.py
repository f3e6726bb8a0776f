"""Retrieval learns from feedback: a collection's embedder fine-tuned on (question, chunk) pairs.

Each answer's verdict (its latest feedback) ties the question the retriever was asked to chunks:

* thumbs-up: the chunks the answer cited, or the top shown chunk when it cited none;
* correction: the chunk that best supports the correction, found by searching the collection with
  the correction text itself (the served retriever: dense + BM25, fused), which names the answer
  far better than the question did; plus the cited chunks when the answer was also rated up;
* thumbs-down: the chunks it showed become hard negatives of the question (never a chunk another
  verdict confirmed for it).

Questions split with ``finetune.dataset.split_of`` on that text: test questions never train; they
are the gate. A run fine-tunes the collection's ingest embedder (r0) on all the feedback so far
(each version starts from r0, so versions never compound), with MultipleNegativesRankingLoss
(in-batch and hard negatives), into ``data_dir/embedders/learned/<collection>/r<N>``; re-embeds
every chunk of the chunk store into the Chroma collection ``<collection>--r<N>`` while queries
keep the served version; scores held-out nDCG@10 for the served version and the candidate; and,
when the candidate is better beyond noise (``core.stats.beats``), switches to it in one SQLite
transaction. A crash before the switch leaves the served version serving; the next run finishes
the interrupted version when the feedback is the same, else marks it failed. Versions are kept
(``localcat retrieval list|use|rollback|drop``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from core.chroma import VectorStore
from core.chunkstore import ChunkStore, RetrievalVersion
from core.embeddings import LEARNED_MARKER, trainable_folder
from core.errors import BadRequest, StoreUnavailable
from core.schemas import Answer
from core.settings import FinetuneSettings, RetrievalLearningSettings, RetrievalSettings, Settings
from core.stats import beats
from finetune.artifacts import Split
from finetune.dataset import NotEnoughData, _blocked, _same_text, normalise_question, split_of

#: progress(step, done, total): "embed" while re-embedding, "score" while the gate ranks.
Progress = Callable[[str, int, int], None]


class Parts(Protocol):
    """What a run needs from the composition root (``localcat.container.Container``)."""

    settings: Settings
    store: ChunkStore
    vectors: VectorStore
    feedback: Any  # assistant.feedback.FeedbackStore: another stage, so not imported here

    def embedder(self, name: str | None) -> Any: ...

    def retriever(self, collection: str | None = None, *, version: int | None = None,
                  settings: RetrievalSettings | None = None) -> Any: ...


# --- feedback → pairs -------------------------------------------------------------------------


@dataclass
class QuestionPairs:
    """One question (as the retriever was asked it) and the chunks feedback ties to it."""

    question: str
    split: Split
    positives: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    sources: Counter[str] = field(default_factory=Counter)


class PairsReport(BaseModel):
    feedback_rows: int = Field(0, description="Verdicts on answers from this collection.")
    questions: dict[str, int] = Field(default_factory=lambda: {"train": 0, "val": 0, "test": 0})
    pairs: int = Field(0, description="Training (question, chunk) pairs without a hard negative.")
    triplets: int = Field(0, description="Training (question, chunk, hard negative) triplets.")
    sources: dict[str, int] = Field(default_factory=dict)
    dropped: dict[str, int] = Field(default_factory=dict)
    sha256: str = Field("", description="Digest of the pairs: the same feedback gives the same.")

    @property
    def training_rows(self) -> int:
        return self.pairs + self.triplets

    def summary(self) -> str:
        q = self.questions
        return (f"{self.feedback_rows} verdicts → {q['train'] + q['val']} training questions "
                f"({self.pairs} pairs, {self.triplets} with a hard negative), {q['test']} held out"
                + (f"; dropped {self.dropped}" if self.dropped else ""))


def shown_chunks(store: ChunkStore, collection: str, answer: Answer) -> list[tuple[str, bool]]:
    """(chunk id, cited) for each chunk the answer showed that still holds the text it showed."""
    if not answer.citations or not store.has_collection(collection):
        return []
    current = store.resolve(collection, [c.chunk_id for c in answer.citations])
    found = store.chunks(collection, current.values())
    out = []
    for c in sorted(answer.citations, key=lambda c: c.n):
        chunk = found.get(current[c.chunk_id])
        if chunk is not None and _same_text(chunk.text, c.snippet):
            out.append((chunk.id, c.cited))
    return out


def build_pairs(
    verdicts: Iterable[dict[str, Any]], collection: str, store: ChunkStore,
    search: Callable[[str], list[str]], ft: FinetuneSettings, *, max_negatives: int = 3,
) -> tuple[list[QuestionPairs], PairsReport]:
    """The questions with at least one positive chunk, and what was counted and dropped.

    ``verdicts`` as ``FeedbackStore.iter_feedback(latest_only=True)`` gives them; ``search(text)``
    returns chunk ids best first (empty when nothing in the collection is relevant).
    """
    report, dropped = PairsReport(), Counter[str]()
    by_question: dict[str, QuestionPairs] = {}
    found: dict[str, list[str]] = {}
    for verdict in verdicts:
        answer = Answer.model_validate(verdict["answer"])
        if answer.collection != collection:
            continue
        report.feedback_rows += 1
        question = (answer.standalone_question or answer.question).strip()
        rating, correction = verdict.get("rating"), (verdict.get("correction") or "").strip()
        if _blocked(question, ft.blocklist) or _blocked(correction, ft.blocklist):
            dropped["blocked"] += 1
            continue
        shown = shown_chunks(store, collection, answer)
        positives: list[str] = []
        negatives: list[str] = []
        source = None
        if rating == "up":
            positives += [i for i, cited in shown if cited] or [i for i, _ in shown[:1]]
            source = "thumbs_up"
        if correction:
            if correction not in found:
                found[correction] = search(correction)[:1]
            positives += found[correction]
            source = "correction" if found[correction] else source
        if rating == "down":
            negatives += [i for i, _ in shown]
            source = source or "thumbs_down"
        if not positives and not negatives:
            dropped["correction_unmatched" if correction else "no_chunk"] += 1
            continue
        q = by_question.setdefault(normalise_question(question),
                                   QuestionPairs(question, split_of(question, ft)))
        q.positives += [i for i in dict.fromkeys(positives) if i not in q.positives]
        q.negatives += [i for i in dict.fromkeys(negatives) if i not in q.negatives]
        q.sources[source] += 1
    out = []
    for q in by_question.values():
        q.negatives = [i for i in q.negatives if i not in q.positives]
        if not q.positives:
            dropped["question_without_positive"] += 1
            continue
        out.append(q)
        report.questions[q.split] += 1
        for source, n in q.sources.items():
            report.sources[source] = report.sources.get(source, 0) + n
    report.dropped = dict(dropped)
    report.pairs, report.triplets = (len(rows) for rows in training_rows(out, max_negatives))
    blob = json.dumps(sorted((q.question, q.split, q.positives, q.negatives) for q in out))
    report.sha256 = hashlib.sha256(blob.encode()).hexdigest()
    return out, report


def training_rows(questions: Sequence[QuestionPairs], max_negatives: int,
                  ) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """(question, positive id) pairs and (question, positive id, negative id) triplets from the
    questions outside the test split."""
    pairs: list[tuple[str, str]] = []
    triplets: list[tuple[str, str, str]] = []
    for q in questions:
        if q.split == "test":
            continue
        for p in q.positives:
            negatives = q.negatives[:max_negatives]
            if negatives:
                triplets += [(q.question, p, n) for n in negatives]
            else:
                pairs.append((q.question, p))
    return pairs, triplets


# --- the gate ---------------------------------------------------------------------------------


def ndcg_at_10(ranked: Sequence[str], relevant: set[str]) -> float:
    """nDCG@10 with binary gains (localcat.evaluation.metrics.ndcg_at_k's definition)."""
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
    return dcg / ideal if ideal else 0.0


def unfiltered(rs: RetrievalSettings) -> RetrievalSettings:
    """The served ranking with no relevance bar: the gate compares orders, not a threshold set
    for another embedder's cosines."""
    return rs.model_copy(update={"min_similarity": -1.0, "min_coverage": 0.0})


def score(retriever: Any, questions: Sequence[QuestionPairs],
          progress: Progress | None = None) -> list[float]:
    """Per-question nDCG@10 of ``retriever`` (LangChain retriever with ``search(query, k)``)."""
    out = []
    for i, q in enumerate(questions):
        docs = retriever.search(q.question, k=10)
        out.append(ndcg_at_10([d.metadata["chunk_id"] for d in docs], set(q.positives)))
        if progress:
            progress("score", i + 1, len(questions))
    return out


class Gate(BaseModel):
    """Candidate vs served on the held-out questions, and the decision."""

    promoted: bool
    forced: bool = False
    reason: str
    test_questions: int
    min_questions: int
    ndcg_served: float | None = None
    ndcg_candidate: float | None = None
    gain: float | None = None
    low: float | None = None
    high: float | None = None
    confidence: float
    resamples: int


def decide(candidate: Sequence[float], served: Sequence[float], ft: FinetuneSettings, *,
           force: bool = False) -> Gate:
    """Promote when there are at least ``gate_min_questions`` held-out questions and the paired
    bootstrap interval of the candidate's per-question nDCG@10 gain lies above zero: the
    generation gate's rule and settings. Or when forced."""
    verdict = beats(candidate, served, min_n=ft.gate_min_questions, what="nDCG@10",
                    unit="test questions", resamples=ft.gate_resamples,
                    confidence=ft.gate_confidence, seed=ft.seed)
    iv = verdict.interval
    if verdict.better:
        reason = f"better than the served version: {verdict.reason}"
    elif iv is None:
        reason = f"too little data to judge: {verdict.reason}"
    else:
        reason = f"not better beyond noise: {verdict.reason}"
    if force and not verdict.better:
        reason += "; promoted anyway (--force)"
    return Gate(promoted=verdict.better or force, forced=force and not verdict.better,
                reason=reason, test_questions=len(candidate), min_questions=ft.gate_min_questions,
                ndcg_served=_mean(served), ndcg_candidate=_mean(candidate),
                gain=iv.mean if iv else None, low=iv.low if iv else None,
                high=iv.high if iv else None, confidence=ft.gate_confidence,
                resamples=ft.gate_resamples)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


# --- training -----------------------------------------------------------------------------------


class TrainStats(BaseModel):
    base: str
    pairs: int
    triplets: int
    steps: int
    loss: float | None
    seconds: float


def train_embedder(base: Path, pairs: Sequence[tuple[str, str]],
                   triplets: Sequence[tuple[str, str, str]], target: Path,
                   s: RetrievalLearningSettings, *, marker: dict[str, Any], seed: int = 0,
                   progress: bool = False) -> TrainStats:
    """Fine-tune the sentence-transformers model in ``base`` on texts; write it to ``target``.

    Written in a temporary folder, marker file last, then renamed: a folder with the marker is a
    whole model. NO_DUPLICATES batches keep a question's other positives out of its negatives.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    try:  # sentence-transformers 6 moved the losses; 3–5 have them here only
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    # The trainer prints its summary to stdout, which commands keep for their results.
    with (tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp,
          contextlib.redirect_stdout(sys.stderr)):
        model = SentenceTransformer(str(base), device="cpu")
        data = {}
        if pairs:
            data["pairs"] = Dataset.from_dict({"anchor": [a for a, _ in pairs],
                                               "positive": [p for _, p in pairs]})
        if triplets:
            data["triplets"] = Dataset.from_dict({"anchor": [a for a, _, _ in triplets],
                                                  "positive": [p for _, p, _ in triplets],
                                                  "negative": [n for _, _, n in triplets]})
        args = SentenceTransformerTrainingArguments(
            output_dir=str(Path(tmp) / "trainer"), num_train_epochs=s.epochs,
            per_device_train_batch_size=s.batch_size, learning_rate=s.learning_rate,
            warmup_steps=0.1, batch_sampler="no_duplicates", save_strategy="no",
            report_to="none", seed=seed, use_cpu=True, disable_tqdm=not progress,
            logging_steps=10**6, dataloader_num_workers=0,
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=data if len(data) > 1 else next(iter(data.values())),
            loss=MultipleNegativesRankingLoss(model),
        )
        result = trainer.train()
        staged = Path(tmp) / "model"
        model.save(str(staged))
        stats = TrainStats(base=str(base), pairs=len(pairs), triplets=len(triplets),
                           steps=result.global_step, loss=result.training_loss,
                           seconds=time.perf_counter() - started)
        (staged / LEARNED_MARKER).write_text(json.dumps({**marker, "train": stats.model_dump()},
                                                        indent=2))
        if target.exists():
            shutil.rmtree(target)  # a failed version's leftovers, or a dropped collection's
        os.replace(staged, target)
    return stats


# --- vectors ------------------------------------------------------------------------------------


def sync_vectors(store: ChunkStore, vectors: VectorStore, collection: str, embedder: Any,
                 batch: int, progress: Progress | None = None) -> set[str]:
    """Make ``vectors`` (a store pinned to one version) hold a vector for every chunk of the chunk
    store: embed the missing ones in batches, delete those of chunks gone. Returns the ids held.

    Resumable: what a crashed run wrote stays, and only the rest is embedded.
    """
    have = vectors.ids(collection)
    wanted = store.chunk_ids(collection)
    vectors.delete_ids(collection, sorted(have - wanted))
    have &= wanted
    missing = sorted(wanted - have)
    if progress:
        progress("embed", 0, len(missing))
    for i in range(0, len(missing), batch):
        part = store.chunks(collection, missing[i : i + batch])
        chunks = list(part.values())  # a chunk removed meanwhile is simply not embedded
        if chunks:
            vectors.upsert(collection, chunks, embedder.encode([c.text for c in chunks]))
            have.update(c.id for c in chunks)
        if progress:
            progress("embed", min(i + batch, len(missing)), len(missing))
    return have


def _activate(parts: Parts, collection: str, version: RetrievalVersion, embedder: Any,
              progress: Progress | None = None, wait_s: float = 300) -> None:
    """Catch up on chunks ingested meanwhile and switch, retrying while an ingest is writing."""
    view = parts.vectors.pinned(collection, version.vectors)
    batch = parts.settings.retrieval_learning.embed_batch
    deadline = time.monotonic() + wait_s
    while True:
        embedded = sync_vectors(parts.store, view, collection, embedder, batch, progress)
        if parts.store.switch_version(collection, version.version, embedded):
            return
        if time.monotonic() > deadline:
            raise StoreUnavailable(
                f"Collection {collection!r} kept being written for {wait_s:.0f} s; "
                f"{version.name} was not switched in",
                "run the command again when the ingest is done",
            )
        time.sleep(0.5)


@contextlib.contextmanager
def _collection_lock(root: Path, collection: str) -> Iterator[None]:
    """One learning run, `use` or `rollback` per collection at a time, across processes."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadRequest(f"Another retrieval run is working on collection {collection!r}",
                             "wait for it to finish") from None
        yield  # the lock goes with the file (and with the process, should it die)


def _root(parts: Parts, collection: str) -> Path:
    return parts.settings.learned_dir / collection


# --- a run --------------------------------------------------------------------------------------


class LearnReport(BaseModel):
    collection: str
    status: Literal["promoted", "rejected"]
    version: str = Field(description="The candidate, e.g. r2.")
    served_before: str
    served: str
    resumed: bool = Field(False, description="Finished a version an interrupted run left.")
    pairs: PairsReport
    train: TrainStats | None = None
    chunks: int = 0
    embed_seconds: float = 0.0
    gate: Gate

    def summary(self) -> str:
        g = self.gate
        scores = (f"held-out nDCG@10 {g.ndcg_served:.3f} ({self.served_before}) → "
                  f"{g.ndcg_candidate:.3f} ({self.version}); " if g.test_questions else "")
        return (f"{self.collection}: {self.version} {self.status}, serving {self.served}. "
                f"{scores}{g.reason}")


def learn(parts: Parts, collection: str, *, force: bool = False,
          progress: Progress | None = None, quiet: bool = True) -> LearnReport:
    """Feedback → pairs → fine-tuned embedder → re-embedded version → gate → switch or not.

    Raises NotEnoughData (without training) when there are too few training pairs, or too few
    held-out questions for the gate and ``force`` is off.
    """
    s, ft, store = parts.settings.retrieval_learning, parts.settings.finetune, parts.store
    store.require_collection(collection)
    with _collection_lock(_root(parts, collection), collection):
        served = store.serving(collection)
        base = store.retrieval_version(collection, 0)
        base_folder = trainable_folder(parts.embedder(base.embedder))
        served_retriever = parts.retriever(collection)
        questions, report = build_pairs(
            parts.feedback.iter_feedback(latest_only=True), collection, store,
            lambda text: [d.metadata["chunk_id"] for d in served_retriever.search(text, k=1)],
            ft, max_negatives=s.max_negatives,
        )
        pairs, triplets = training_rows(questions, s.max_negatives)
        test = [q for q in questions if q.split == "test"]
        short = []
        if report.training_rows < (1 if force else s.min_pairs):
            short.append(f"{report.training_rows} training pairs ({s.min_pairs} needed)")
        if len(test) < ft.gate_min_questions and not force:
            short.append(f"{len(test)} held-out test questions ({ft.gate_min_questions} needed "
                         "for the gate)")
        if short:
            raise NotEnoughData(
                f"Too little feedback for retrieval to learn on {collection!r}: only "
                f"{' and '.join(short)}, from {report.feedback_rows} rated answers "
                f"(dropped: {report.dropped or 'none'})",
                "collect more thumbs and corrections, or --force to learn and promote without "
                "the gate (LOCALCAT_FINETUNE__GATE_MIN_QUESTIONS and "
                "LOCALCAT_RETRIEVAL_LEARNING__MIN_PAIRS set the bar)",
            )

        version, stats = _leftover(parts, collection, report.sha256), None
        if version is None:
            metrics = {"data_sha256": report.sha256, "pairs": report.model_dump()}
            version = store.new_retrieval_version(
                collection, lambda n: str(_root(parts, collection) / f"r{n}"), metrics)
            texts = store.chunks(collection, {i for q in questions for i in q.positives + q.negatives})
            stats = train_embedder(
                base_folder,
                [(a, texts[p].text) for a, p in pairs if p in texts],
                [(a, texts[p].text, texts[n].text) for a, p, n in triplets
                 if p in texts and n in texts],
                Path(version.embedder), s, seed=ft.seed, progress=not quiet,
                marker={"collection": collection, "version": version.version,
                        "base": base.embedder, "data_sha256": report.sha256},
            )
            store.set_version_status(collection, version.version, "building",
                                     {**metrics, "train": stats.model_dump()})
            version = store.retrieval_version(collection, version.version)
        candidate = parts.embedder(version.embedder)
        started = time.perf_counter()
        embedded = sync_vectors(store, parts.vectors.pinned(collection, version.vectors),
                                collection, candidate, s.embed_batch, progress)
        embed_seconds = time.perf_counter() - started

        rs = unfiltered(parts.settings.retrieval)
        old = score(parts.retriever(collection, version=served.version, settings=rs), test, progress)
        new = score(parts.retriever(collection, version=version.version, settings=rs), test, progress)
        gate = decide(new, old, ft, force=force)
        metrics = {**version.metrics, "gate": gate.model_dump()}
        if gate.promoted:
            store.set_version_status(collection, version.version, "building", metrics)
            _activate(parts, collection, version, candidate)  # catch-up only: no bar
        else:
            store.set_version_status(collection, version.version, "rejected", metrics)
            parts.vectors.drop_vectors(version.vectors)  # the model stays: `use` re-embeds it
        return LearnReport(
            collection=collection, status="promoted" if gate.promoted else "rejected",
            version=version.name, served_before=served.name, served=store.serving(collection).name,
            resumed=stats is None, pairs=report, train=stats, chunks=len(embedded),
            embed_seconds=embed_seconds, gate=gate,
        )


def _leftover(parts: Parts, collection: str, sha256: str) -> RetrievalVersion | None:
    """A version an interrupted run left 'building': resumed when its model is whole and was
    trained on the same feedback, else marked failed and its files removed."""
    resume = None
    for v in parts.store.retrieval_versions(collection):
        if v.status != "building" or v.active:
            continue
        whole = (Path(v.embedder) / LEARNED_MARKER).is_file()
        if resume is None and whole and v.metrics.get("data_sha256") == sha256:
            resume = v
            continue
        parts.vectors.drop_vectors(v.vectors)
        shutil.rmtree(v.embedder, ignore_errors=True)
        parts.store.set_version_status(collection, v.version, "failed")
    return resume


# --- versions -------------------------------------------------------------------------------------


def use_version(parts: Parts, collection: str, version: int,
                progress: Progress | None = None) -> RetrievalVersion:
    """Serve ``version``: its vectors caught up with the chunk store first (all of them for a
    rejected version), then the switch."""
    store = parts.store
    store.require_collection(collection)
    with _collection_lock(_root(parts, collection), collection):
        v = store.retrieval_version(collection, version)
        if v.active:
            return v
        if v.status not in ("ready", "rejected"):
            raise BadRequest(f"{v.name} of {collection!r} is {v.status} and cannot be served",
                             f"see `localcat retrieval list --collection {collection}`")
        _activate(parts, collection, v, parts.embedder(v.embedder), progress)
        return store.serving(collection)


def rollback(parts: Parts, collection: str, progress: Progress | None = None) -> RetrievalVersion:
    """Serve again the version served before the last switch."""
    previous = parts.store.previous_version(collection)
    if previous is None:
        raise BadRequest(f"Nothing to roll back: collection {collection!r} never switched "
                         "retrieval version", "see `localcat retrieval list`")
    return use_version(parts, collection, previous, progress)


def drop_version(parts: Parts, collection: str, version: int) -> RetrievalVersion:
    """Delete a version's vectors and model (its record stays, as 'dropped')."""
    store = parts.store
    with _collection_lock(_root(parts, collection), collection):
        v = store.retrieval_version(collection, version)
        if v.active or v.version == 0:
            raise BadRequest(f"{v.name} of {collection!r} is {'served' if v.active else 'the base'}"
                             " and cannot be dropped",
                             "serve another version first (`localcat retrieval use`)"
                             if v.active else "drop the collection itself to remove it")
        parts.vectors.drop_vectors(v.vectors)
        shutil.rmtree(v.embedder, ignore_errors=True)
        store.set_version_status(collection, version, "dropped")
        return store.retrieval_version(collection, version)

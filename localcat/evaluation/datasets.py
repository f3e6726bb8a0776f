"""The question sets: BEIR folders (retrieval) and answer sets (JSONL of questions with references)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ConfigError


@dataclass
class BeirSet:
    corpus: dict[str, tuple[str, str]]  # doc id → (title, text)
    queries: dict[str, str]  # query id → text, only those with a relevant document
    qrels: dict[str, dict[str, int]]  # query id → {doc id: grade > 0}
    unanswerable: dict[str, tuple[str, str]] = field(default_factory=dict)  # id → (text, kind)


def read_jsonl(path: Path) -> Iterable[dict]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{n} is not JSON ({exc.msg})",
                                      "each line must be one JSON object") from exc


def load_beir(folder: Path, split: str = "test") -> BeirSet:
    """Read corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv and the optional unanswerable.jsonl."""
    paths = {"corpus": folder / "corpus.jsonl", "queries": folder / "queries.jsonl",
             "qrels": folder / "qrels" / f"{split}.tsv"}
    for path in paths.values():
        if not path.is_file():
            raise ConfigError(
                f"{folder} is not a BEIR folder: {path.relative_to(folder)} is missing",
                "give a folder with corpus.jsonl, queries.jsonl and qrels/test.tsv, e.g. one "
                "written by scripts/build_eval_set.py",
            )
    corpus = {str(d["_id"]): (d.get("title") or "", d.get("text") or "")
              for d in read_jsonl(paths["corpus"])}
    texts = {str(q["_id"]): q["text"] for q in read_jsonl(paths["queries"])}
    qrels: dict[str, dict[str, int]] = {}
    with paths["qrels"].open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts or (n == 1 and not parts[-1].lstrip("-").isdigit()):
                continue  # blank line or the "query-id corpus-id score" header
            if len(parts) == 4:  # TREC style: qid 0 docid grade
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise ConfigError(f"{paths['qrels']}:{n}: expected 'query-id corpus-id score'",
                                  "use tab-separated BEIR qrels")
            qid, doc, grade = parts[0], parts[1], int(parts[2])
            if grade > 0 and qid in texts and doc in corpus:
                qrels.setdefault(qid, {})[doc] = grade
    if not qrels:
        raise ConfigError(f"No query in {paths['qrels']} has a relevant document in the corpus",
                          "check that the qrels ids match queries.jsonl and corpus.jsonl")
    unanswerable = {}
    if (folder / "unanswerable.jsonl").is_file():
        for q in read_jsonl(folder / "unanswerable.jsonl"):
            kind = (q.get("metadata") or {}).get("kind", "unanswerable")
            unanswerable[str(q["_id"])] = (q["text"], kind)
    return BeirSet(corpus, {q: texts[q] for q in qrels}, qrels, unanswerable)


@dataclass(frozen=True)
class AnswerItem:
    """One question of an answer set; ``answer`` None means the documents do not answer it."""

    id: str
    question: str
    answer: str | None
    sources: tuple[str, ...] = ()  # file names or BEIR doc ids of the documents that answer it
    kind: str = ""  # e.g. "off-topic" for an unanswerable question
    split: str | None = None

    @property
    def answerable(self) -> bool:
        return self.answer is not None


def load_answers(path: Path, *, split: str | None = None, limit: int | None = None) -> list[AnswerItem]:
    """Read an answer set: one ``{question, answer, source?}`` object a line.

    ``answer`` null (or ``"unanswerable": true``) marks a question the documents do not answer;
    ``source`` is a file name or doc id, or a list of them; ``id``, ``kind`` and ``split`` are
    optional. ``split`` keeps only the questions of that split; ``limit`` the first that many.
    """
    items: list[AnswerItem] = []
    for n, row in enumerate(read_jsonl(path), 1):
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ConfigError(f"{path}: entry {n} has no question",
                              'each line needs {"question": ..., "answer": ...}')
        if "answer" not in row and not row.get("unanswerable"):
            raise ConfigError(f"{path}: entry {n} has no answer",
                              'give "answer": "…", or "answer": null for a question the '
                              "documents do not answer")
        answer = None if row.get("unanswerable") else row.get("answer")
        sources = row.get("source", row.get("sources")) or ()
        items.append(AnswerItem(
            id=str(row.get("id", f"a{n:03d}")), question=question.strip(), answer=answer,
            sources=(sources,) if isinstance(sources, str) else tuple(map(str, sources)),
            kind=row.get("kind") or ("" if answer is not None else "unanswerable"),
            split=row.get("split"),
        ))
    if split is not None:
        items = [i for i in items if i.split == split]
    items = items[:limit] if limit else items
    if not items:
        raise ConfigError(f"{path} has no questions" + (f" in split {split!r}" if split else ""),
                          "check the file (and --split)")
    return items

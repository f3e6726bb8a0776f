"""Build a BEIR-format retrieval eval set from the Python docs that Debian ships (python3.11-doc).

    apt-get install -y python3.11-doc
    .venv/bin/python scripts/build_eval_set.py [OUT_DIR] [--docs /usr/share/doc/python3.11/html]
    .venv/bin/localcat eval OUT_DIR

Queries are the question headings of the FAQ pages (faq/*.html); each one's answer (the section
text below the heading, without the heading) is its relevant passage. Sections of the library,
tutorial, how-to, reference and using pages are distractors. Identical questions on two pages
become one query with two relevant passages. A second split, ``qrels/identifiers.tsv``, asks about
code identifiers (``os.path.expanduser``, ``PYTHONSAFEPATH``) that occur in exactly one document:
the exact-term lookups BM25 is in the mix for. ``unanswerable.jsonl`` holds hand-written questions
the docs do not answer (off-topic, and near-topic software questions) for the "nothing relevant"
threshold. Written outside git by default (``$data_dir/eval/python-faq``); the extracted text is
PSF-licensed documentation and is not committed.

``answers.jsonl`` is the answer-quality set for ``localcat eval FOLDER --answers``: each FAQ
question with its FAQ answer as the reference and its doc id(s) as ``source``, plus the
unanswerable questions (``"answer": null``), in a seeded shuffle. A fixed fifth of the questions,
chosen by a hash of the question text (so it does not move when the docs or the seed change), is
flagged ``"split": "heldout"``: never tune or train on those; the rest are ``"dev"``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from collections.abc import Iterator
from pathlib import Path

DOCS = Path("/usr/share/doc/python3.11/html")
DISTRACTOR_DIRS = ("library", "tutorial", "howto", "reference", "using")
_HEADING = re.compile(r"^h[1-6]$")
_BLOCKS = {"p", "div", "section", "dl", "dt", "dd", "ul", "ol", "li", "table", "tr",
           "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "figure", "caption"}

# Questions the Python docs do not answer. "off-topic" share no subject with them; "near-topic"
# are software questions about other tools, which a threshold should also turn away.
UNANSWERABLE = {
    "off-topic": [
        "What is the capital of Australia?",
        "How long should I boil an egg for a runny yolk?",
        "Who won the football World Cup in 2014?",
        "How many vacation days do employees get per year?",
        "What is the best time of year to visit Japan?",
        "How do I get a red wine stain out of a carpet?",
        "What is the boiling point of water at high altitude?",
        "How often should I water a cactus?",
        "Which planet has the most moons?",
        "What does a mortgage broker do?",
        "How do I train my dog to stop barking at night?",
        "What are the symptoms of the flu?",
        "How do I change a flat tyre on a bicycle?",
        "Who painted the Mona Lisa?",
        "What is the recipe for a classic margherita pizza?",
        "How tall is Mount Everest?",
        "When should I prune apple trees?",
        "What is the per-diem allowance for business travel?",
        "How do I apply for a passport renewal?",
        "What is the difference between a violin and a viola?",
        "How many players are on a rugby union team?",
        "What causes the northern lights?",
        "How do I knit a scarf for beginners?",
        "Which wine goes well with salmon?",
        "What is the speed of sound in air?",
        "How do I reset my office badge if it stops working?",
        "What is a good stretching routine for lower back pain?",
        "Who wrote Pride and Prejudice?",
        "How does compound interest work on a savings account?",
        "What is the population of Brazil?",
    ],
    "near-topic": [
        "How do I center a div horizontally in CSS?",
        "How do I undo the last commit in git?",
        "What is the difference between let and var in JavaScript?",
        "How do I configure a Kubernetes horizontal pod autoscaler?",
        "How do I write a JOIN across three tables in PostgreSQL?",
        "How do I declare a generic interface in TypeScript?",
        "What is the borrow checker in Rust?",
        "How do I set up a reverse proxy with nginx?",
        "How do I resize an Azure virtual machine?",
        "What is a goroutine in Go?",
    ],
}


def html_text(node) -> str:
    """Plain text of an HTML element: blocks become paragraphs, <pre> keeps its lines."""
    from bs4 import NavigableString

    out: list[str] = []

    def walk(el) -> None:
        for child in el.children:
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:  # not comments, doctypes, CDATA
                    out.append(re.sub(r"\s+", " ", str(child)))
            elif child.name == "pre":
                out.append("\n\n" + child.get_text().strip("\n") + "\n\n")
            elif child.name in ("script", "style") or "headerlink" in (child.get("class") or []):
                continue
            elif child.name in _BLOCKS:
                out.append("\n\n")
                walk(child)
                out.append("\n\n")
            else:
                out.append("\n" if child.name == "br" else "")
                walk(child)

    walk(node)
    paragraphs = (p.strip() for p in re.split(r"\n\s*\n", "".join(out)))
    return "\n\n".join(p for p in paragraphs if p)


def _heading(section):
    return section.find(_HEADING, recursive=False)


def _title(heading) -> str:
    return " ".join(heading.get_text(" ").replace("¶", "").split())


def _leaf_sections(soup) -> Iterator[tuple[list[str], object]]:
    """(heading path, section) for each innermost section of the page body."""
    body = soup.select_one("div.body") or soup.body
    if body is None:
        return
    for section in body.find_all("section"):
        if section.find("section") is not None or _heading(section) is None:
            continue
        path = [_title(h) for s in reversed(section.find_parents("section"))
                if (h := _heading(s)) is not None]
        yield [*path, _title(_heading(section))], section


def _body_without_heading(section) -> str:
    heading = _heading(section)
    heading.extract()
    return html_text(section)


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind("\n\n", 0, limit)
    return text[: cut if cut > limit // 2 else limit].rstrip()


def faq_pairs(docs: Path) -> list[tuple[str, str, str, str]]:
    """(doc id, page title, question, answer) for each FAQ question section."""
    from bs4 import BeautifulSoup

    pairs = []
    for page in sorted((docs / "faq").glob("*.html")):
        if page.name == "index.html":
            continue
        soup = BeautifulSoup(page.read_text(encoding="utf-8"), "lxml")
        for path, section in _leaf_sections(soup):
            question = path[-1]
            # A category heading with a paragraph under it ("General GUI Questions") is no question.
            if question.endswith("Questions") or question.endswith("questions"):
                continue
            answer = _body_without_heading(section)
            if len(answer) < 20:
                continue
            pairs.append((f"faq/{page.stem}#{section.get('id')}", path[0], question, answer))
    return pairs


def distractors(docs: Path, n: int, seed: int, max_chars: int, min_chars: int = 200):
    """n sections (doc id, title, text) sampled from the non-FAQ manuals, deterministically."""
    from bs4 import BeautifulSoup

    pages = sorted(p for d in DISTRACTOR_DIRS for p in (docs / d).rglob("*.html"))
    from tqdm import tqdm

    candidates = []
    for page in tqdm(pages, desc="distractor pages", unit="page", file=sys.stderr):
        soup = BeautifulSoup(page.read_text(encoding="utf-8", errors="replace"), "lxml")
        rel = page.relative_to(docs).with_suffix("").as_posix()
        for path, section in _leaf_sections(soup):
            text = _truncate(_body_without_heading(section), max_chars)
            if len(text) >= min_chars:
                candidates.append((f"{rel}#{section.get('id')}", " > ".join(path), text))
    rng = random.Random(seed)
    return sorted(rng.sample(candidates, min(n, len(candidates))))


# Dotted names, snake_case names and CONSTANTS: what people paste into a search box verbatim.
_IDENT = re.compile(
    r"(?<![\w.])(?:[A-Za-z_]\w+(?:\.[A-Za-z_]\w+)+|[A-Za-z]\w*_\w+|[A-Z][A-Z0-9_]{5,})(?![\w(])"
)
_NOT_IDENT = re.compile(r"\.(py|pyc|html|org|com|net|txt|cfg|toml|h|c|exe|dll|so|zip)$|^www\.|__$")
_TEMPLATES = ("{}", "what does {} do", "how do I use {}", "{} example", "what is {} for?")


def identifier_queries(corpus: list[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str]]:
    """(query, doc id) for identifiers that occur in exactly one document, one per document."""
    found: dict[str, set[str]] = {}
    for doc_id, text in corpus:
        for token in set(_IDENT.findall(text)):
            if len(token) >= 8 and not _NOT_IDENT.search(token):
                found.setdefault(token, set()).add(doc_id)
    rare: dict[str, list[str]] = {}
    for token, where in found.items():
        if len(where) == 1:
            # Substring check too: "expanduser" inside another doc's "os.path.expanduser" counts.
            rare.setdefault(next(iter(where)), []).append(token)
    everything = "\n".join(text for _, text in corpus)
    rng = random.Random(seed)
    out = []
    for doc_id in rng.sample(sorted(rare), len(rare)):
        tokens = [t for t in sorted(rare[doc_id]) if everything.count(t) == 1]
        if tokens:
            token = rng.choice(tokens)
            out.append((_TEMPLATES[len(out) % len(_TEMPLATES)].format(token), doc_id))
        if len(out) == n:
            break
    return out


HELDOUT_EVERY = 5


def split_of(question: str) -> str:
    """'heldout' for a fixed fifth of the questions, by a hash of the text; else 'dev'."""
    digest = hashlib.sha256(question.casefold().encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") % HELDOUT_EVERY == 0 else "dev"


def answer_set(pairs: list[tuple[str, str, str, str]],
               queries: dict[str, tuple[str, list[str]]], seed: int) -> list[dict]:
    """The FAQ questions with their answers as references, and the unanswerable questions, shuffled.

    A question asked on two pages keeps the first page's answer as its reference; both pages
    count as its source.
    """
    rows, done = [], set()
    for _, _, question, answer in pairs:
        key = question.casefold()
        if key in done:
            continue
        done.add(key)
        qid, sources = queries[key]
        rows.append({"id": qid, "question": question, "answer": answer,
                     "source": sources[0] if len(sources) == 1 else sources,
                     "split": split_of(question)})
    n = 0
    for kind, texts in UNANSWERABLE.items():
        for text in texts:
            n += 1
            rows.append({"id": f"u{n:03d}", "question": text, "answer": None, "kind": kind,
                         "split": split_of(text)})
    random.Random(seed).shuffle(rows)
    return rows


def build(docs: Path, out: Path, *, n_distractors: int, seed: int, max_chars: int,
          n_identifiers: int = 100) -> dict:
    if not (docs / "faq" / "programming.html").is_file():
        sys.exit(f"No Python FAQ under {docs}: install it with `apt-get install -y python3.11-doc` "
                 "or pass --docs DIR (the html folder)")
    pairs = faq_pairs(docs)
    extra = distractors(docs, n_distractors, seed, max_chars)

    queries: dict[str, tuple[str, list[str]]] = {}  # question text → (query id, relevant doc ids)
    for doc_id, _, question, _ in pairs:
        qid, rel = queries.setdefault(question.casefold(), (f"q{len(queries) + 1:03d}", []))
        rel.append(doc_id)

    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as f:
        # FAQ answers go in without their question: the title would hand the query to both rankers.
        for doc_id, page, _, answer in pairs:
            f.write(json.dumps({"_id": doc_id, "title": "", "text": answer,
                                "metadata": {"kind": "faq-answer", "page": page}}) + "\n")
        for doc_id, title, text in extra:
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text,
                                "metadata": {"kind": "distractor"}}) + "\n")
    question_text = {q.casefold(): q for _, _, q, _ in pairs}
    texts = [(d, a) for d, _, _, a in pairs] + [(d, f"{t}\n\n{x}") for d, t, x in extra]
    idents = identifier_queries(texts, n_identifiers, seed)
    with (out / "queries.jsonl").open("w", encoding="utf-8") as f:
        for key, (qid, _) in queries.items():
            f.write(json.dumps({"_id": qid, "text": question_text[key]}) + "\n")
        for i, (text, _) in enumerate(idents, 1):
            f.write(json.dumps({"_id": f"k{i:03d}", "text": text}) + "\n")
    with (out / "qrels" / "identifiers.tsv").open("w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for i, (_, doc_id) in enumerate(idents, 1):
            f.write(f"k{i:03d}\t{doc_id}\t1\n")
    with (out / "qrels" / "test.tsv").open("w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, rel in queries.values():
            for doc_id in rel:
                f.write(f"{qid}\t{doc_id}\t1\n")
    with (out / "unanswerable.jsonl").open("w", encoding="utf-8") as f:
        n = 0
        for kind, texts in UNANSWERABLE.items():
            for text in texts:
                n += 1
                f.write(json.dumps({"_id": f"u{n:03d}", "text": text, "metadata": {"kind": kind}})
                        + "\n")
    answers = answer_set(pairs, queries, seed)
    with (out / "answers.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in answers)
    meta = {
        "source": str(docs), "seed": seed, "max_chars": max_chars,
        "answers": len(answers), "answers_heldout": sum(r["split"] == "heldout" for r in answers),
        "queries": len(queries), "identifier_queries": len(idents), "faq_answers": len(pairs), "distractors": len(extra),
        "unanswerable": n, "corpus_chars": sum(len(a) for *_, a in pairs) + sum(len(t) for *_, t in extra),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path,
                        help="output folder (default: $data_dir/eval/python-faq, outside git)")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the python3.11-doc html folder")
    parser.add_argument("--distractors", type=int, default=1000,
                        help="sections sampled from the other manuals (default 1000)")
    parser.add_argument("--max-chars", type=int, default=3000,
                        help="distractor sections are cut at a paragraph near this length")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.out
    if out is None:
        from core.settings import Settings

        out = Settings().data_dir / "eval" / "python-faq"
    meta = build(args.docs, out, n_distractors=args.distractors, seed=args.seed,
                 max_chars=args.max_chars)
    print(json.dumps({"out": str(out), **meta}, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()

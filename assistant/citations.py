"""Inline citations: every answer sentence that a shown chunk supports carries that chunk's [n].

Small models write almost no [n] marks themselves (SmolLM2-135M, Qwen2.5-Coder-0.5B), so after the
answer is generated each sentence is scored against each shown chunk, with the same embedder the
retriever uses plus content-word overlap, and attributed to the chunk that supports it: the model's
own marks stay where they are when that chunk supports the sentence, marks naming no shown source go,
missing marks are added before the sentence's final punctuation, and sentences no chunk supports are
flagged.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from langchain_core.embeddings import Embeddings

from core.schemas import SentenceAttribution

# --- thresholds ---------------------------------------------------------------------------------
# Measured, not guessed: samples/ ingested with MiniLM; 32 answerable questions asked through the
# pipeline (k=3) of SmolLM2-135M and of Qwen2.5-Coder-0.5B; each distinct answer sentence labelled
# by hand with the shown chunk(s) that back it, or none: 80 backed, 63 not. 143 more unbacked pairs
# came from scoring each sentence against the chunks shown for another question. Then swept:
# - score = DENSE_WEIGHT × (cosine with the chunk's closest line) + (1 − DENSE_WEIGHT) × (share of
#   the sentence's content words in the chunk) − NUMBER_PENALTY × (share of its figures missing).
#   Dense alone missed 11 backed sentences at its best threshold, words alone cited 1 wrong chunk;
#   weights 0.3–0.5 made no error on backed sentences. The figure check took the marked unbacked
#   sentences at 0.65 from 8 to 4 ("EUR 2,000 per night" against "GBP 160").
# - SUPPORT 0.6: backed sentences scored ≥ 0.66 (int8 MiniLM; 0.67 fp32), all on the right chunk;
#   a chunk unrelated to the sentence never above 0.50. Between lie only the model's garbled
#   recombinations of one chunk's words (they spread over 0.55–0.80: no threshold separates them;
#   10 of 63 get that chunk's mark). 0.6 rather than 0.65 because int8 scores move by up to ±0.03
#   with what else is in the batch, and a missed mark on a right sentence costs more.
# - KEEP 0.5: the unrelated-chunk ceiling (95 % of them under 0.32): a model's own mark on a chunk
#   scoring at least this stays even where we would not have added it.
# - MARGIN 0.15: a second source joins a kept mark only when clearly better; a judgment call (in
#   the sample every mark the models wrote was on the best chunk).
# - Without an embedder (LEXICAL_*): backed ≥ 0.67, unrelated chunks ≤ 0.50.
# Held out, 16 "explain/summarise" questions per model (both wrote some [n] there): no backed
# sentence missed or cited wrong, every mark they wrote kept.
DENSE_WEIGHT = 0.5
NUMBER_PENALTY = 0.25
SUPPORT = 0.6
KEEP = 0.5
MARGIN = 0.15
LEXICAL_SUPPORT = 0.6
LEXICAL_KEEP = 0.55

# --- splitting ----------------------------------------------------------------------------------

# A model's marks: [1], [1, 2], [1][2] (the last is two groups).
MARK = re.compile(r"\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\]")
_FENCE = re.compile(r"^\s*(```|~~~)")
_PREFIX = re.compile(r"^\s*(?:#{1,6}\s+|>\s*|(?:[-*+•]|\d{1,3}[.)])\s+)*")
_RULE = re.compile(r"^\s*(?:[-*_]\s*){3,}$")
# A line of code the model wrote without a fence (Qwen2.5-Coder-0.5B copies a FAQ's listing as
# bare lines: "import config", "config.x = 1"): a mark there would break the code when copied.
# Prose never starts with a bare assignment, import, call or def, so these stay claims.
_CODE_LINE = re.compile(r"""^\s*(?:
    (?:>>>|\.\.\.)(?:\s|$)                                       # interpreter prompt
    | (?:from\s+[\w.]+\s+)?import\s+[\w.*]+(?:\s*,\s*[\w.*]+)*(?:\s+as\s+\w+)?\s*$
    | (?:async\s+)?(?:def|class)\s+\w+\s*[(:].*$
    | @[\w.]+(?:\(.*\))?\s*$                                       # decorator
    | (?:return|raise|yield|pass|break|continue|del|assert|global|nonlocal)\b.*(?<![.!?])\s*$
    | [A-Za-z_][\w.]*(?:\[[^\]]*\])?(?:\s*,\s*[A-Za-z_][\w.]*)*\s*(?:[-+*/%|&^@]|//|\*\*|>>|<<)?=(?!=).*$
    | [A-Za-z_][\w.]*\(.*\)\s*(?:\#.*)?$                          # a call on its own
)""", re.VERBOSE)
# Sentence end: terminal punctuation, closing quotes/brackets/bold, then marks the model put after
# the full stop ("... per year. [1]"), which belong to the sentence they follow.
_END = re.compile(r"[.!?…]+[\"'”’)\]*_]*(?:\s*\[\d{1,3}(?:\s*[,;]\s*\d{1,3})*\])*(?=\s|$)")
_ABBREVIATIONS = frozenset(re.findall(r"\S+", """
    e.g i.e etc vs approx ca cf fig no nr mr mrs ms dr prof st inc ltd co corp dept est min max
    jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun"""))


@dataclass(frozen=True)
class Span:
    start: int
    end: int


def split_sentences(text: str) -> list[Span]:
    """Spans of ``text`` that state something: sentences and list items.

    Left out, as claiming nothing a source could back: code (fenced, or lines of code without a
    fence), table rows, rules, lead-ins ending with a colon, questions, refusals and pleasantries,
    and echoes of the prompt's source headers.
    """
    spans: list[Span] = []
    in_code = False
    pos = 0
    for line in text.splitlines(keepends=True):
        start, pos = pos, pos + len(line)
        if _FENCE.match(line):
            in_code = not in_code
            continue
        body = line.rstrip("\r\n")
        if (in_code or not body.strip() or body.lstrip().startswith("|") or _RULE.match(body)
                or _CODE_LINE.match(bare(body))):
            continue
        offset = start + _PREFIX.match(body).end()
        for s, e in _line_sentences(body[offset - start:]):
            spans.append(Span(offset + s, offset + e))
    return [s for s in spans if _claims(text[s.start:s.end])]


def _line_sentences(line: str) -> list[tuple[int, int]]:
    out = []
    begin = 0
    for m in _END.finditer(line):
        if _abbreviation(line, m.start()) or _continues_lowercase(line, m.end()):
            continue
        out.append((begin, m.end()))
        begin = m.end()
    out.append((begin, len(line)))
    result = []
    for s, e in out:
        chunk = line[s:e]
        lead = len(chunk) - len(chunk.lstrip())
        trail = len(chunk) - len(chunk.rstrip())
        if chunk.strip():
            result.append((s + lead, e - trail))
    return result


def _abbreviation(line: str, dot: int) -> bool:
    if line[dot] != ".":
        return False
    word = re.search(r"([A-Za-z][A-Za-z.]*)$", line[:dot])
    if word is None:
        return False
    w = word.group(1).lower()
    return w in _ABBREVIATIONS or len(w) == 1  # "J. Smith", "p. 4"


def _continues_lowercase(line: str, end: int) -> bool:
    """'approx. five', 'the v2.1 release' — a new sentence starts with a capital, digit or mark."""
    rest = line[end:].lstrip()
    return bool(rest) and rest[0].islower()


def _claims(sentence: str) -> bool:
    if _ECHO.match(sentence):
        return False
    text = bare(sentence).rstrip("*_ ")
    return (bool(text) and not text.endswith((":", "?")) and not _NOT_A_CLAIM.search(text)
            and bool(_content_words(text)))


def bare(sentence: str) -> str:
    """The sentence without its [n] marks."""
    return " ".join(MARK.sub(" ", sentence).split())


# --- scoring ------------------------------------------------------------------------------------

_STOPWORDS = frozenset(re.findall(r"\S+", """
    a an the and or but if then than so as of at by for from in into on onto to with without
    about over under up down out off is are was were be been being am do does did done have has had
    having it its this that these those there here which who whom whose what when where why how i
    you he she we they me him her us them my your his our their not no nor can could should would
    will shall may might must also just only very more most some any each every all both either
    neither other such own same too again further once yes sure okay ok well
    based information provided according reference material document source context answer
    question given mentioned following text note"""))
_WORD = re.compile(r"[a-z0-9]+(?:[.,:/'-][a-z0-9]+)*")
# "[2] (handbook.md, section Leave)": the prompt's header of a source, repeated by a small model.
_ECHO = re.compile(r"\s*\[\d{1,3}\]\s*\(")
# Sentences that say nothing about the documents: refusals and pleasantries are not claims.
_NOT_A_CLAIM = re.compile(
    r"\b(?:could not|couldn't|cannot|can't|unable to) find\b|\bno (?:information|mention)\b"
    r"|\bfeel free\b|\blet me know\b|\bhope this helps\b|\bfurther (?:assistance|questions)\b",
    re.IGNORECASE,
)


def _content_words(text: str) -> set[str]:
    return {stem for w in _WORD.findall(text.lower())
            if w not in _STOPWORDS and (stem := _stem(w)) not in _STOP_STEMS}


def _stem(word: str) -> str:
    """Crude suffix stripping, the same on both sides: 'days'/'day', 'descaled'/'descale' meet."""
    if word[0].isdigit():
        return word.replace(",", "")  # 1,500 == 1500
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    for suffix in ("ing", "ed", "es", "s", "e"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix) and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


_STOP_STEMS = frozenset(_stem(w) for w in _STOPWORDS)


def chunk_units(chunk: str) -> list[str]:
    """A chunk's sentences and lines (table rows, CSV records): what a sentence is compared with.

    A sentence matched against the best single unit scored supported sentences far apart from
    unsupported ones; against the whole ~1000-character chunk the dense scores of both sank
    together (the measurement in the thresholds' comment).
    """
    units = []
    for line in chunk.splitlines():
        units += [line[s:e] for s, e in _line_sentences(line) if len(line[s:e].split()) >= 2]
    return units or [chunk]


# --- attribution --------------------------------------------------------------------------------

@dataclass
class Attribution:
    """The marked-up answer and, per checked sentence, the sources it carries."""

    text: str
    sentences: list[SentenceAttribution]


class CitationAttributor:
    """Scores answer sentences against shown chunks and puts the [n] marks right.

    ``embeddings`` is the retriever's embedder (one batch per answer; chunk lines are cached);
    without one, content-word overlap alone decides, with its own thresholds.
    """

    def __init__(self, embeddings: Embeddings | None = None, *, cache_size: int = 4096):
        self.embeddings = embeddings
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        if embeddings is None:
            self.support, self.keep = LEXICAL_SUPPORT, LEXICAL_KEEP
        else:
            self.support, self.keep = SUPPORT, KEEP

    # scores

    def scores(self, sentences: Sequence[str], chunks: Sequence[str]) -> np.ndarray:
        """(sentences × chunks) support scores, about 0 to 1."""
        shape = (len(sentences), len(chunks))
        chunk_words = [_content_words(c) for c in chunks]
        lexical, numbers = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        for i, sentence in enumerate(sentences):
            words = _content_words(sentence)
            figures = {w for w in words if w[0].isdigit()}
            for j, cw in enumerate(chunk_words):
                lexical[i, j] = len(words & cw) / len(words) if words else 0.0
                numbers[i, j] = len(figures - cw) / len(figures) if figures else 0.0
        penalty = NUMBER_PENALTY * numbers  # "EUR 2,000 per night" is not backed by "GBP 160"
        if self.embeddings is None or not sentences:
            return lexical - penalty
        dense = np.clip(self._dense(sentences, chunks), 0.0, 1.0)
        return DENSE_WEIGHT * dense + (1 - DENSE_WEIGHT) * lexical - penalty

    def _dense(self, sentences: Sequence[str], chunks: Sequence[str]) -> np.ndarray:
        """Cosine of each sentence with the closest line or sentence of each chunk."""
        units = [chunk_units(c) for c in chunks]
        with self._lock:
            missing = list(dict.fromkeys(u for us in units for u in us if u not in self._cache))
        vectors = _normalised(self.embeddings.embed_documents([*sentences, *missing]))
        sent, new = vectors[: len(sentences)], vectors[len(sentences):]
        with self._lock:
            for unit, vector in zip(missing, new, strict=True):
                self._cache[unit] = vector
            unit_vectors = [np.stack([self._cache[u] for u in us]) for us in units]
            for us in units:
                for u in us:
                    self._cache.move_to_end(u)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return np.stack([(uv @ sent.T).max(axis=0) for uv in unit_vectors], axis=1)

    # marks

    def attribute(self, answer: str, chunks: Sequence[str]) -> Attribution:
        """``answer`` with each claim's [n] checked against ``chunks`` (shown as [1], [2], ...)."""
        spans = split_sentences(answer)
        k = len(chunks)
        table = self.scores([bare(answer[s.start:s.end]) for s in spans], chunks)
        out: list[str] = []
        sentences: list[SentenceAttribution] = []
        pos = 0
        for span, row in zip(spans, table, strict=True):
            out.append(_drop_unknown(answer[pos:span.start], k))
            text, sources, written = self._mark(answer[span.start:span.end], row, k)
            start = sum(map(len, out))
            out.append(text)
            score = max((row[n - 1] for n in sources), default=row.max() if k else 0.0)
            sentences.append(SentenceAttribution(
                text=text, start=start, end=start + len(text), sources=sources,
                model_sources=written, score=round(float(score), 3), supported=bool(sources),
            ))
            pos = span.end
        out.append(_drop_unknown(answer[pos:], k))
        return Attribution("".join(out), sentences)

    def _mark(self, sentence: str, row: np.ndarray, k: int) -> tuple[str, list[int], list[int]]:
        """(the sentence with checked marks, the sources it carries, the marks the model wrote)."""
        groups = _marks(sentence)
        written = list(dict.fromkeys(n for g in groups for n in _numbers(g)))
        kept = [n for n in written if 1 <= n <= k and row[n - 1] >= self.keep]
        best = int(row.argmax()) + 1 if k else 0
        add = []
        # A kept mark wins unless another source scores clearly higher: then both are shown.
        if (k and row[best - 1] >= self.support and best not in kept
                and (not kept or row[best - 1] >= max(row[n - 1] for n in kept) + MARGIN)):
            add = [best]
        text, last_kept = _rewrite_groups(sentence, groups, set(kept))
        if add:
            marks = "".join(f"[{n}]" for n in add)
            if last_kept is not None:
                text = text[:last_kept] + marks + text[last_kept:]
            else:
                text = insert_mark(text, marks)
        return text, kept + add, written


# Code is never a citation: `xs = [3, 1, 2]` or a fenced listing keeps its brackets as written.
_CODE = re.compile(r"(```|~~~).*?(?:\1|\Z)|`[^`\n]*`", re.DOTALL)


def _marks(text: str) -> list[re.Match]:
    """The [n] groups of ``text`` outside code spans and fenced blocks."""
    code = [m.span() for m in _CODE.finditer(text)]
    return [g for g in MARK.finditer(text) if not any(a <= g.start() < b for a, b in code)]


def cited_numbers(text: str) -> set[int]:
    """Every n the text cites as [n] (or in a group like [1, 2]), code left out."""
    return {n for g in _marks(text) for n in _numbers(g)}


def _numbers(group: re.Match) -> list[int]:
    return [int(x) for x in re.split(r"\s*[,;]\s*", group.group(1))]


def _rewrite_groups(text: str, groups: list[re.Match], keep: set[int]) -> tuple[str, int | None]:
    """Groups reduced to their kept numbers, emptied ones removed with the space before them.

    Returns the new text and where the last kept group ends in it (None when none is left)."""
    out, pos, last = [], 0, None
    for g in groups:
        numbers = _numbers(g)
        left = [n for n in numbers if n in keep]
        start = g.start()
        if not left:
            while start > pos and text[start - 1] in " \t":
                start -= 1
            out.append(text[pos:start])
        elif left == numbers:
            out.append(text[pos:g.end()])
        else:
            out.append(text[pos:start] + "[" + ", ".join(map(str, left)) + "]")
        if left:
            last = sum(map(len, out))
        pos = g.end()
    out.append(text[pos:])
    return "".join(out), last


_TAIL = re.compile(r"[.!?…]+[\"'”’)\]*_]*\s*$")


def insert_mark(sentence: str, mark: str) -> str:
    """``mark`` goes before the final punctuation ("27 days [1]."), or at the end when there is none."""
    stripped = sentence.rstrip()
    tail = _TAIL.search(stripped)
    cut = tail.start() if tail else len(stripped)
    head = stripped[:cut].rstrip()
    return f"{head} {mark}" + stripped[cut:] + sentence[len(stripped):]


def _drop_unknown(text: str, k: int) -> str:
    """Outside the checked sentences only marks naming no shown source go."""
    groups = [g for g in _marks(text) if any(not 1 <= n <= k for n in _numbers(g))]
    if not groups:
        return text
    return _rewrite_groups(text, groups, set(range(1, k + 1)))[0]


def _normalised(vectors) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.where(norms == 0, 1, norms)

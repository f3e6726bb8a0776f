"""Answer quality by word overlap: the one definition `localcat eval` and the fine-tune gate use.

The measures work on *content words*: lowercase word tokens (``\\w+``, so ``os.path`` is two)
minus a small English stop list, with ``[n]`` citation marks removed first. The marks are read
on their own (``citation_marks``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

_STOP = """
a about above after again all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has
have having he her here hers him his how i if in into is it its itself just me more most my no
nor not now of off on once only or other our ours out over own same she should so some such than
that the their theirs them then there these they this those through to too under until up very
was we were what when where which while who whom why will with would you your yours
s t d ll m re ve don doesn didn isn aren wasn weren won wouldn shouldn couldn can cannot
"""
STOP_WORDS = frozenset(_STOP.split())
KEY_FACT_WORDS = 60
# An answer loops when one word 4-gram occurs 3 or more times: small models that lose the thread
# repeat a phrase until max_tokens, and normal prose almost never says the same 4 words thrice.
# A source may say it thrice itself ("it is guaranteed that", FAQ held-out q162, over two chunks):
# an answer that repeats a 4-gram no more often than the shown sources do is copying, not looping.
REPEAT_N, REPEAT_TIMES = 4, 3
# The pipeline stops an answer that loops while it is written: a word 8-gram the third time, more
# often than the shown chunks hold it. Longer than the measure's 4-gram, so lists in the same
# words ("the minor version number is incremented for …") go on; looping models repeat sentences.
GUARD_N, GUARD_TIMES = 8, 3
_MARK = re.compile(r"\[\d+\]")  # removed before words are counted
# A citation as the prompt asks for it ([2]) or grouped as models write it ([1, 3], [1][2]).
_CITE = re.compile(r"\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\]")
_WORD = re.compile(r"\w+")
# "Not found" as the pipeline says it (core.prompt.NOT_FOUND) or as a model words it; looked for
# near the start only, so an answer that merely mentions something missing later is no refusal.
_REFUSAL = re.compile(
    r"\b(?:i |we )?(?:could ?n[o’']t|can ?n[o’']t|can[’']t|cannot|unable to|did ?n[o’']t|was ?n[o’']t able to) "
    r"(?:find|locate|see|determine)\b"
    r"|\b(?:documents?|sources?|context|material|reference|text|information)(?: provided| given)? "
    r"(?:do|does|did) ?n[o’']t (?:contain|mention|say|include|provide|answer|specify)\b"
    r"|\bno (?:information|mention|answer|details?)\b"
    r"|\bnot (?:mentioned|found|provided|specified|stated) in\b"
    r"|\bi (?:do ?n[o’']t|don[’']t) know\b",
    re.IGNORECASE,
)
REFUSAL_WINDOW = 200


def citation_marks(text: str) -> list[int]:
    """The source numbers cited as ``[n]`` (or ``[n, m]``), in order of first mention."""
    found = (int(n) for m in _CITE.finditer(text) for n in re.split(r"\s*[,;]\s*", m.group(1)))
    return list(dict.fromkeys(found))


def words(text: str) -> list[str]:
    return _WORD.findall(_MARK.sub(" ", text).lower())


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOP_WORDS]


def key_fact_recall(answer: str, reference: str, n: int = KEY_FACT_WORDS) -> float:
    """Share of the reference's first ``n`` distinct content words that the answer contains."""
    facts = list(dict.fromkeys(content_words(reference)))[:n]
    if not facts:
        return 0.0
    said = set(content_words(answer))
    return sum(w in said for w in facts) / len(facts)


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style F1 of the content-word multisets of answer and reference."""
    a, r = Counter(content_words(answer)), Counter(content_words(reference))
    overlap = sum((a & r).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(a.values()), overlap / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def exact_match(answer: str, reference: str) -> bool:
    """The same words (case and punctuation aside) citing the same sources in the same order."""
    return words(answer) == words(reference) and citation_marks(answer) == citation_marks(reference)


def citation_agreement(answer: str, reference: str) -> float | None:
    """Share of the sources the answer cites that the reference cites too; None when either
    cites none (there is nothing to judge: the answer's other measures show what it said)."""
    said, right = citation_marks(answer), set(citation_marks(reference))
    if not said or not right:
        return None
    return sum(n in right for n in said) / len(said)


def support(answer: str, evidence: Iterable[str]) -> float | None:
    """Share of the answer's distinct content words found in the evidence (None: no content words)."""
    said = set(content_words(answer))
    if not said:
        return None
    seen: set[str] = set()
    for text in evidence:
        seen.update(content_words(text))
    return len(said & seen) / len(said)


def _grams(text: str, n: int) -> Counter[tuple[str, ...]]:
    w = words(text)
    return Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1))


def gram_counts(texts: Iterable[str], n: int = GUARD_N) -> Counter[tuple[str, ...]]:
    """Word ``n``-gram counts over ``texts`` together (what ``loop_start`` allows)."""
    held: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        held.update(_grams(text, n))
    return held


class LoopWatch:
    """Follows an answer as it grows and tells where it began to loop: the offset of the second
    occurrence of a word ``n``-gram that occurs ``times`` times or more, and more often than in
    ``held`` (``gram_counts`` of the shown chunks). Each call reads only the text added since the
    last, so a streamed answer costs linear time."""

    def __init__(self, held: Counter[tuple[str, ...]] | None = None, n: int = GUARD_N,
                 times: int = GUARD_TIMES):
        self.held, self.n, self.times = held if held is not None else Counter(), n, times
        self._read = 0  # text before this offset is counted (it ends at a space: whole words)
        self._words: list[tuple[int, str]] = []
        self._seen: dict[tuple[str, ...], list[int]] = {}
        self.start: int | None = None

    def feed(self, text: str, *, final: bool = False) -> int | None:
        """``text`` is the whole answer so far; ``final``: it is complete (its last word too)."""
        end = len(text) if final else max(text.rfind(" "), text.rfind("\n"))
        if end <= self._read:
            return self.start
        part = _MARK.sub(lambda m: " " * len(m.group()), text[self._read : end])
        n = self.n
        for m in _WORD.finditer(part):
            self._words.append((self._read + m.start(), m.group().lower()))
            if len(self._words) < n:
                continue
            gram = tuple(w for _, w in self._words[-n:])
            at = self._seen.setdefault(gram, [])
            at.append(self._words[-n][0])
            if len(at) >= self.times and len(at) > self.held[gram]:
                self.start = at[1] if self.start is None else min(self.start, at[1])
        self._read = end
        return self.start


def loop_start(text: str, held: Counter[tuple[str, ...]] | None = None, n: int = GUARD_N,
               times: int = GUARD_TIMES) -> int | None:
    """Where the complete ``text`` began to loop (see LoopWatch); None when it does not."""
    return LoopWatch(held, n, times).feed(text, final=True)


def is_repetitive(text: str, sources: Iterable[str] = (), n: int = REPEAT_N,
                  times: int = REPEAT_TIMES) -> bool:
    """The answer loops: one word ``n``-gram occurs ``times`` times or more, and more often than
    in the ``sources`` shown with it, together."""
    repeated = {g: c for g, c in _grams(text, n).items() if c >= times}
    held = gram_counts(sources, n) if repeated else Counter()
    return any(held[g] < c for g, c in repeated.items())


def is_refusal(text: str, not_found: str | None = None) -> bool:
    """The answer says the documents do not answer: the pipeline's own ``not_found`` text, or a
    refusal phrase in its first REFUSAL_WINDOW characters."""
    text = text.strip()
    return (not_found is not None and text == not_found) or bool(
        _REFUSAL.search(text[:REFUSAL_WINDOW]))

"""Sentence splitting and citation attribution, with a small handwritten embedder."""

from __future__ import annotations

import math
import re

import pytest
from langchain_core.embeddings import Embeddings

from assistant.citations import CitationAttributor, cited_numbers, insert_mark, split_sentences

VACATION = ("Every full-time employee gets 27 days of paid vacation per year. Up to 5 unused days "
            "carry over into the next year.")
COFFEE = "The espresso machine is descaled every Friday by the facilities team."
PASSWORD = "Passwords must be at least 14 characters long. Reset them at the identity portal."
CHUNKS = [VACATION, COFFEE, PASSWORD]


class TopicEmbeddings(Embeddings):
    """One axis per topic, counting its words: texts on one topic point the same way.

    Records every batch it is asked to embed."""

    TOPICS = (
        ("vacation", "days", "holiday", "leave", "year", "carry"),
        ("espresso", "coffee", "machine", "descaled", "kitchen", "friday"),
        ("password", "passwords", "characters", "reset", "portal", "login"),
        ("moon", "cheese", "planet", "rocket"),
    )

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def _vector(self, text: str) -> list[float]:
        words = re.findall(r"[a-z]+", text.lower())
        v = [float(sum(w in topic for w in words)) for topic in self.TOPICS] + [0.05]
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.batches.append(list(texts))
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)


@pytest.fixture
def attributor() -> CitationAttributor:
    return CitationAttributor(TopicEmbeddings())


def sentences(text: str) -> list[str]:
    return [text[s.start:s.end] for s in split_sentences(text)]


# --- splitting ----------------------------------------------------------------------------------

def test_splits_sentences_without_breaking_abbreviations_or_numbers():
    text = ("Mileage is paid at GBP 0.45 per mile, e.g. for trips to Leeds. Ask Dr. Weber first! "
            "Is it 27 days? Yes [1]. It is 27 days.")
    assert sentences(text) == [
        "Mileage is paid at GBP 0.45 per mile, e.g. for trips to Leeds.",
        "Ask Dr. Weber first!",
        "It is 27 days.",
    ]  # a question, or "Yes [1].", claims nothing on its own


def test_list_items_headings_code_tables_and_lead_ins():
    text = (
        "## Vacation\n"
        "The rules are:\n"
        "1. Request leave 10 days ahead.\n"
        "- **Carry over**: up to 5 days\n"
        "```bash\n"
        "nwctl password reset. Really.\n"
        "```\n"
        "| Benefit | Amount |\n"
        "|---|---|\n"
        "* Gym costs GBP 40 per month [2]\n"
    )
    assert sentences(text) == [
        "Vacation",
        "Request leave 10 days ahead.",
        "**Carry over**: up to 5 days",
        "Gym costs GBP 40 per month [2]",
    ]


def test_code_lines_without_a_fence_are_not_sentences():
    # As Qwen2.5-Coder-0.5B copied a FAQ's listing: bare code lines between prose.
    text = ("Import the config module in all modules [1]. For example:\n\nconfig.py:\n\n"
            "x = 0 # Default value of the 'x' configuration setting\n\nmod.py:\n\n"
            "import config\nconfig.x = 1\nprint(config.x)\n>>> C.count += 1\n"
            "    return C.count # or return self.count\n\n"
            "Caution: an assignment like self.count = 42 creates a new instance variable.\n"
            "os.remove(path) deletes a file.\nreturn to the menu, then save.")
    assert sentences(text) == [
        "Import the config module in all modules [1].",
        "Caution: an assignment like self.count = 42 creates a new instance variable.",
        "os.remove(path) deletes a file.",
        "return to the menu, then save.",
    ]


def test_marks_after_the_full_stop_belong_to_the_sentence_before():
    assert sentences("You get 27 days. [1] Unused days carry over. [1, 2]") == [
        "You get 27 days. [1]", "Unused days carry over. [1, 2]"]


def test_refusals_pleasantries_and_echoed_source_headers_are_not_claims():
    text = ("I could not find the parking rules in the documents. "
            "If you have further questions, feel free to ask.\n"
            "[2] (handbook.md, section Vacation policy)\n")
    assert sentences(text) == []


def test_mark_goes_before_the_final_punctuation():
    assert insert_mark("You get **27 days**.", "[1]") == "You get **27 days** [1]."
    assert insert_mark('The network is "NW-Guest".', "[2]") == 'The network is "NW-Guest" [2].'
    assert insert_mark("Gym: GBP 40 per month", "[3]") == "Gym: GBP 40 per month [3]"


# --- attribution --------------------------------------------------------------------------------

def test_adds_the_missing_marks_and_flags_what_no_chunk_supports(attributor):
    answer = ("Every employee gets 27 vacation days per year. The espresso machine is descaled "
              "on Fridays. The moon is made of cheese.")
    result = attributor.attribute(answer, CHUNKS)
    assert result.text == ("Every employee gets 27 vacation days per year [1]. The espresso machine "
                           "is descaled on Fridays [2]. The moon is made of cheese.")
    assert [s.sources for s in result.sentences] == [[1], [2], []]
    assert [s.supported for s in result.sentences] == [True, True, False]
    assert all(result.text[s.start:s.end] == s.text for s in result.sentences)
    assert result.sentences[0].score > result.sentences[2].score


def test_keeps_right_marks_where_the_model_put_them(attributor):
    answer = "Passwords need [3] at least 14 characters. You get 27 days [1] of vacation."
    result = attributor.attribute(answer, CHUNKS)
    assert result.text == answer
    assert [(s.sources, s.model_sources) for s in result.sentences] == [([3], [3]), ([1], [1])]


def test_replaces_wrong_marks_and_drops_unknown_sources(attributor):
    answer = ("The espresso machine is descaled every Friday [1]. Vacation is 27 days per year [7]. "
              "The moon is cheese [2].\n\nSee also [9]:")
    result = attributor.attribute(answer, CHUNKS)
    assert result.text == ("The espresso machine is descaled every Friday [2]. Vacation is 27 days "
                           "per year [1]. The moon is cheese.\n\nSee also:")
    assert [s.model_sources for s in result.sentences] == [[1], [7], [2]]
    assert [s.sources for s in result.sentences] == [[2], [1], []]
    assert cited_numbers(result.text) == {1, 2}


def test_a_group_mark_keeps_only_its_supporting_sources(attributor):
    result = attributor.attribute("Unused vacation days carry over to next year [1, 2].", CHUNKS)
    assert result.text == "Unused vacation days carry over to next year [1]."


def test_list_items_without_punctuation_get_the_mark_at_the_end(attributor):
    result = attributor.attribute("Rules:\n- 27 vacation days a year\n- coffee machine descaled Friday\n",
                                  CHUNKS)
    assert result.text == "Rules:\n- 27 vacation days a year [1]\n- coffee machine descaled Friday [2]\n"


def test_encodes_each_answer_once_and_chunk_lines_only_the_first_time(attributor):
    embeddings = attributor.embeddings
    attributor.attribute("You get 27 vacation days. Coffee machine is descaled Fridays.", CHUNKS)
    assert len(embeddings.batches) == 1
    first = embeddings.batches[0]
    assert first[:2] == ["You get 27 vacation days.", "Coffee machine is descaled Fridays."]
    assert "Passwords must be at least 14 characters long." in first  # chunk lines, not chunks
    attributor.attribute("Passwords need 14 characters.", CHUNKS)
    assert embeddings.batches[1] == ["Passwords need 14 characters."]


def test_without_an_embedder_word_overlap_decides():
    result = CitationAttributor(None).attribute(
        "Passwords must be 14 characters long. Rockets fly to the moon.", CHUNKS)
    assert result.text == "Passwords must be 14 characters long [3]. Rockets fly to the moon."
    assert [s.supported for s in result.sentences] == [True, False]


def test_nothing_to_check_leaves_the_text_alone(attributor):
    answer = "The answer is in the sources [1]."  # a claim about nothing: no content words
    result = attributor.attribute(answer, CHUNKS)
    assert result.text == answer and result.sentences == []


# --- rendering at the edges ---------------------------------------------------------------------

def test_page_and_terminal_link_marks_and_flag_unsupported_sentences(attributor):
    import click

    from core.schemas import Answer, Citation
    from localcat.cli import render_answer
    from ui.app import answer_markdown

    result = attributor.attribute("You get 27 vacation days a year. The moon is made of cheese.", CHUNKS)
    answer = Answer(
        id="ans_0123456789abcdef0123456789abcdef", question="q", standalone_question="q",
        collection="kb", answer=result.text, sentences=result.sentences, grounded=True, model="m",
        prompt_version="v", citations=[Citation(n=n, chunk_id=f"c{n}", source=f"/d/f{n}.md",
                                                snippet="s", score=0.1) for n in (1, 2, 3)])

    page = answer_markdown(answer)
    assert page.startswith("You get 27 vacation days a year "
                           "<a class='lc-cite' href='#lc-src-0123456789ab-1' title='f1.md'>[1]</a>.")
    assert ("<span class='lc-unsupported'" in page and "The moon is made of cheese "
            "<sup class='lc-flag' title='No shown source supports this sentence'>[?]</sup>." in page)

    terminal = render_answer(answer)
    assert click.unstyle(terminal) == ("You get 27 vacation days a year [1]. "
                                       "The moon is made of cheese [?].")
    assert click.style("The moon is made of cheese [?].", dim=True) in terminal


def test_code_lines_without_a_fence_get_no_marks():
    chunk = ("Create a module config.py with x = 0, then import config in every module; "
             "config.x = 1 in one module is seen by print(config.x) in another.")
    answer = ("Every module that imports config sees the same config.x value.\n\n"
              "import config\nconfig.x = 1\nprint(config.x)\n")
    marked = CitationAttributor(None).attribute(answer, [chunk])
    assert marked.text == ("Every module that imports config sees the same config.x value [1].\n\n"
                           "import config\nconfig.x = 1\nprint(config.x)\n")
    assert len(marked.sentences) == 1


def test_code_keeps_its_brackets() -> None:
    """A list literal in code is not a citation: it is never dropped or rewritten."""
    from assistant.citations import CitationAttributor, cited_numbers

    answer = ("Sort with sorted() and a key [1].\n\n```python\nlist1 = [3, 1, 2]\nlist2 = [9, 8]\n"
              "```\n\nIndex with `xs[7]` as usual.")
    marked = CitationAttributor(None).attribute(answer, ["sorted() takes a key function"]).text
    assert "list1 = [3, 1, 2]\nlist2 = [9, 8]" in marked and "`xs[7]`" in marked
    assert cited_numbers(answer) == {1}

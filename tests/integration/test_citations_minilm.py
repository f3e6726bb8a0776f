"""Citation attribution with the real MiniLM embedder on chunks retrieved from samples/, checking
answers that the small models really gave (recorded from Qwen2.5-Coder-0.5B and SmolLM2-135M)."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.citations import CitationAttributor
from tests.conftest import SAMPLES

pytestmark = pytest.mark.integration

PASSWORD_ANSWER = (  # Qwen2.5-Coder-0.5B: one step from the handbook, two made up
    "To reset your password, you can follow these steps:\n\n"
    "1. **Visit the IT password reset page**: Go to [https://id.northwind.example/reset]"
    "(https://id.northwind.example/reset) using your registered phone.\n"
    "2. **Enter your registered phone number**: Enter your registered phone number when prompted.\n"
    "3. **Follow the instructions**: Follow the instructions provided on the page to reset your "
    "password.\n\n"
    "If you have any questions or need further assistance, feel free to ask."
)
HOTEL_RIGHT = ("According to the information provided in the reference material, hotels in London "
               "cost up to GBP 160 per night in London and EUR 140 per night elsewhere in Europe.")
HOTEL_WRONG = "A hotel in London can cost between EUR 2,000 and EUR 3,500 per night."  # SmolLM2


@pytest.fixture
def retrieved(container):
    """(the embedder, question → the shown chunks' texts and file names) from the real retriever."""
    container.indexer.ingest([SAMPLES / "handbook.md", SAMPLES / "travel-policy.pdf"], "samples")
    retriever = container.retriever("samples")

    def shown(question: str) -> tuple[list[str], list[str]]:
        docs = retriever.invoke(question)
        return [d.page_content for d in docs], [Path(d.metadata["source"]).name for d in docs]

    return container.embeddings, shown


def test_real_answer_steps_are_cited_or_flagged(retrieved):
    embeddings, shown = retrieved
    chunks, names = shown("How do I reset my password?")
    result = CitationAttributor(embeddings).attribute(PASSWORD_ANSWER, chunks)

    assert [s.supported for s in result.sentences] == [True, False, False]
    (n,) = result.sentences[0].sources
    assert names[n - 1] == "handbook.md" and "id.northwind.example/reset" in chunks[n - 1]
    assert f"using your registered phone [{n}].\n2." in result.text
    # The lead-in and the closing pleasantry claim nothing and are left alone.
    assert result.text.startswith("To reset your password, you can follow these steps:\n\n1.")
    assert result.text.endswith("further assistance, feel free to ask.")


def test_a_made_up_figure_is_flagged_where_the_right_one_is_cited(retrieved):
    embeddings, shown = retrieved
    chunks, names = shown("How much may a hotel in London cost?")
    attributor = CitationAttributor(embeddings)

    right = attributor.attribute(HOTEL_RIGHT, chunks).sentences[0]
    assert right.supported and names[right.sources[0] - 1] == "travel-policy.pdf"
    assert "GBP 160" in chunks[right.sources[0] - 1]

    wrong = attributor.attribute(HOTEL_WRONG, chunks)
    assert wrong.text == HOTEL_WRONG and not wrong.sentences[0].supported
    assert wrong.sentences[0].score < right.score

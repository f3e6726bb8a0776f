"""ingest.chunking: sizes, overlap, metadata, whitespace and code fences."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from core.errors import ConfigError
from ingest.chunking import chunk_sections

WORDS = " ".join(f"word{i}" for i in range(400))


def chunks(text: str, size: int = 200, overlap: int = 40, **metadata) -> list[Document]:
    return chunk_sections(
        [Document(page_content=text, metadata=metadata)], chunk_size=size, chunk_overlap=overlap
    )


def test_chunks_respect_size_and_cover_the_text():
    out = chunks(WORDS)
    assert len(out) > 5
    assert all(len(c.page_content) <= 200 for c in out)
    assert out[0].page_content.startswith("word0 ")
    assert out[-1].page_content.endswith("word399")
    seen = set(" ".join(c.page_content for c in out).split())
    assert seen == set(WORDS.split())


def test_neighbouring_chunks_overlap():
    out = chunks(WORDS, size=200, overlap=40)
    for first, second in zip(out, out[1:], strict=False):
        assert first.page_content.split()[-1] in second.page_content.split()


def test_each_chunk_keeps_its_sections_metadata():
    sections = [
        Document(page_content=WORDS, metadata={"page": 2}),
        Document(page_content="Short section.", metadata={"heading": "A > B", "anchor": "b"}),
    ]
    out = chunk_sections(sections, chunk_size=200, chunk_overlap=0)
    assert {c.metadata["page"] for c in out[:-1]} == {2}
    assert out[-1].metadata == {"heading": "A > B", "anchor": "b"}
    out[0].metadata["page"] = 99
    assert sections[0].metadata == {"page": 2}  # copies, not shared with the section


def test_whitespace_is_normalised_but_paragraph_breaks_stay():
    (out,) = chunks(
        "  First\t\tline   with\u00a0 gaps.  \n\n\n\n Second\u200b paragraph. \r\nNext line."
    )
    assert out.page_content == "First line with gaps.\n\nSecond paragraph.\nNext line."


def test_whitespace_only_sections_and_chunks_are_dropped():
    sections = [
        Document(page_content=" \n\n\t \u200b\n", metadata={"page": 1}),
        Document(page_content="Real text.", metadata={"page": 2}),
    ]
    out = chunk_sections(sections, chunk_size=100, chunk_overlap=10)
    assert [(c.page_content, c.metadata) for c in out] == [("Real text.", {"page": 2})]


CODE = """```python
def reset(user):
    if user.locked:

        unlock(user)
    return   send_link(user)
```"""


def test_code_fence_that_fits_stays_whole_with_its_indentation():
    # Unprotected, the splitter would fill the first chunk with the prose and the fence's first
    # half, since the fence has a blank line inside.
    text = " ".join(["prose"] * 12) + "\n\n" + CODE + "\n\nAfter."
    out = chunks(text, size=len(CODE) + 20, overlap=10)
    assert sum(CODE in c.page_content for c in out) == 1
    assert not any("```" in c.page_content and CODE not in c.page_content for c in out)


def test_code_fence_larger_than_a_chunk_is_still_split():
    big = "```\n" + "\n".join(f"line_{i} = {i}" for i in range(100)) + "\n```"
    out = chunks(big, size=200, overlap=0)
    assert len(out) > 1
    assert all(len(c.page_content) <= 200 for c in out)


def test_chunking_is_deterministic():
    sections = [Document(page_content=WORDS + "\n\n" + CODE, metadata={"heading": "X"})]
    first = chunk_sections(sections, chunk_size=150, chunk_overlap=30)
    second = chunk_sections(sections, chunk_size=150, chunk_overlap=30)
    assert [(c.page_content, c.metadata) for c in first] == [
        (c.page_content, c.metadata) for c in second
    ]


def test_overlap_not_smaller_than_size_is_a_config_error():
    with pytest.raises(ConfigError, match="chunk_overlap"):
        chunks(WORDS, size=100, overlap=150)

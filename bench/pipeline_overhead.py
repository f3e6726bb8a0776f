"""Pipeline overhead before the first token, the model's own time excluded.

    .venv/bin/python bench/pipeline_overhead.py [--iterations 2000] [--profile]

Target (issue 5): < 5 ms p50. Ours = RagPipeline.stream(question) until its first Token, with a
retriever that returns 4 fixed chunks instantly and GenericFakeChatModel answering instantly, so
what is left is the pipeline: the retriever call through LangChain, citations, the prompt, the
LCEL chain and its callbacks. Raw = the same fake model's own .stream() on the finished prompt
messages until its first chunk, i.e. the model's share, which the target excludes. Each iteration
runs both, alternating order; overhead = ours − raw, per iteration. Retrieval itself is measured
by bench/retrieval.py.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import pstats
import time

from _common import append, p50, pct, verdict

ANSWER = ("Employees get 27 vacation days per calendar year [1]. Unused days carry over until "
          "March 31 [1], and sick leave is reported to your lead before 9:30 [2].")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--profile", action="store_true", help="cProfile 300 pipeline calls")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from langchain_core.documents import Document
    from langchain_core.language_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.retrievers import BaseRetriever

    from assistant.pipeline import RagPipeline, Token
    from core.prompt import ANSWER_PROMPT, format_context

    docs = [
        Document(page_content=("Every employee gets 27 vacation days per calendar year. " * 8).strip(),
                 metadata={"chunk_id": f"c{i}", "source": f"/docs/handbook-{i}.md", "score": 0.03 / i,
                           "similarity": 0.61, "heading": "Leave > Vacation", "page": None,
                           "anchor": None, "bm25": 7.2})
        for i in range(1, 5)
    ]

    class FixedRetriever(BaseRetriever):
        collection: str = "bench"

        def _get_relevant_documents(self, query, *, run_manager=None):
            return docs

    llm = GenericFakeChatModel(messages=itertools.repeat(AIMessage(ANSWER)))
    pipe = RagPipeline(llm, FixedRetriever(), model_tag="fake", condense=True)
    question = "How many vacation days do I get?"
    messages = ANSWER_PROMPT.format_messages(context=format_context(docs), history=[],
                                             question=question)

    def ours() -> float:
        t0 = time.perf_counter()
        stream = pipe.stream(question)
        for event in stream:
            if isinstance(event, Token):
                break
        dt = time.perf_counter() - t0
        stream.close()
        return dt

    def raw() -> float:
        t0 = time.perf_counter()
        stream = llm.stream(messages)
        next(stream)
        dt = time.perf_counter() - t0
        stream.close()
        return dt

    for _ in range(100):  # warm-up: imports, pydantic schema caches
        ours(), raw()
    t_ours, t_raw, overhead = [], [], []
    for i in range(args.iterations):
        if i % 2:
            a, b = ours(), raw()
        else:
            b, a = raw(), ours()
        t_ours.append(a * 1000)
        t_raw.append(b * 1000)
        overhead.append((a - b) * 1000)

    prof = ""
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(300):
            ours()
        profiler.disable()
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(25)
        prof = buf.getvalue()
        print(prof)

    o50 = p50(overhead)
    body = "\n".join([
        f"{args.iterations} iterations after 100 warm-up; 4 retrieved chunks of ~450 characters; "
        "GenericFakeChatModel (langchain-core) answers instantly.",
        "",
        "| measure | p50 ms | p95 ms |",
        "|---|---|---|",
        f"| ours: `RagPipeline.stream` → first Token | {p50(t_ours):.2f} | {pct(t_ours, 95):.2f} |",
        f"| raw: fake model `.stream(prompt)` → first chunk | {p50(t_raw):.2f} | {pct(t_raw, 95):.2f} |",
        f"| overhead (ours − raw, per iteration) | {o50:.2f} | {pct(overhead, 95):.2f} |",
        "",
        f"Overhead p50 {o50:.2f} ms vs target < 5 ms: {verdict(o50, 5.0, higher_is_better=False)}; "
        f"ours/raw p50 ratio {p50(t_ours) / p50(t_raw):.1f}×.",
    ])
    append("Pipeline overhead before the first token (bench/pipeline_overhead.py)", body,
           write=not args.no_write)


if __name__ == "__main__":
    main()

"""Answer-quality measures against cases worked out by hand; the answer-set reader; the command's
argument checks. The real pipeline runs in tests/integration/test_eval_cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.answer_metrics import (
    content_words,
    gram_counts,
    is_refusal,
    is_repetitive,
    key_fact_recall,
    loop_start,
    support,
    token_f1,
)
from core.errors import ConfigError
from core.prompt import NOT_FOUND
from core.schemas import Answer, Citation
from localcat.evaluation import eval_command, load_answers
from localcat.evaluation.answering import ask_timed, resolve_model, score_answer, summarize
from localcat.evaluation.datasets import AnswerItem
from localcat.evaluation.metrics import percentile

REPO = Path(__file__).resolve().parents[2]


def test_content_words_drop_stop_words_and_citation_marks():
    assert content_words("The vacation is 27 days [1].") == ["vacation", "27", "days"]
    assert content_words("Use os.path, don't!") == ["use", "os", "path"]


def test_key_fact_recall_by_hand():
    ref = "Every full-time employee gets 27 days of paid vacation per year."
    # 11 distinct content words: every full time employee gets 27 days paid vacation per year
    assert key_fact_recall("You get 27 vacation days [1].", ref) == pytest.approx(3 / 11)
    # Only the first n distinct content words count: alpha, beta.
    assert key_fact_recall("beta", "alpha beta alpha gamma", n=2) == 0.5
    assert key_fact_recall("anything", "the of and") == 0.0


def test_token_f1_by_hand():
    # answer 3 words, reference 6 (27 days paid vacation per year), 3 shared: P 1, R 0.5
    assert token_f1("27 vacation days", "27 days of paid vacation per year") == pytest.approx(2 / 3)
    # Multisets: "days" twice in the answer matches once: P 0.5, R 1.
    assert token_f1("days days", "days") == pytest.approx(2 / 3)
    assert token_f1("nothing shared", "27 days") == 0.0


def test_support_counts_the_answers_distinct_words_in_the_evidence():
    evidence = ["Every employee gets 27 vacation days.", "Unrelated chunk."]
    assert support("27 vacation days in Paris, 27!", evidence) == 0.75
    assert support("the of [1]", evidence) is None
    assert support("Paris", []) == 0.0


def test_repetition_is_a_4gram_three_times():
    assert is_repetitive("The cat sat down. The cat sat down. The cat sat down.")
    assert not is_repetitive("The cat sat down. The cat sat down. Then it left.")
    assert is_repetitive("yes yes yes yes yes yes")  # "yes yes yes yes" at 3 offsets
    assert not is_repetitive("short")


def test_loop_start_is_the_second_time_round_of_a_run_of_8_words():
    line = "It is a collection of packages for use in R. "
    text = "Intro. " + line * 3
    assert loop_start(text) == len("Intro. ") + len(line)
    assert loop_start("Intro. " + line * 2) is None  # twice is not yet a loop
    assert loop_start(text, gram_counts([line * 3])) is None  # the source says it thrice
    # lists in the same words are not runs of 8
    versions = ("The major version number is incremented for big changes. The minor version "
                "number is incremented for small ones. The micro version number is incremented "
                "for each bugfix release.")
    assert loop_start(versions) is None
    # marks do not break a run
    assert loop_start("Intro. " + (line.strip() + " [1] ") * 3) is not None


def test_repeating_a_source_that_repeats_itself_is_no_loop():
    source = "It is guaranteed that a. It is guaranteed that b. It is guaranteed that c."
    assert not is_repetitive(source, ["unrelated text", source])
    # the source cut into two chunks, both shown
    assert not is_repetitive(source, source.split(" b. "))
    # the same 4-gram once more than the source has it is a loop again
    assert is_repetitive(source + " It is guaranteed that d.", [source])
    # a loop on one phrase is not excused by another phrase the source repeats
    assert is_repetitive(source + " The cat sat down." * 3, [source])


def test_refusal_is_the_pipelines_text_or_a_phrase_near_the_start():
    assert is_refusal(NOT_FOUND, NOT_FOUND)
    assert is_refusal("I could not find that in the documents.")
    assert is_refusal("I couldn't find any dog policy.")
    assert is_refusal("The documents do not mention a dog policy.")
    assert is_refusal("There is no information about pizza in the sources.")
    assert not is_refusal("Python does not have a switch statement; use a dict [1].")
    assert not is_refusal("You get 27 days.")
    assert not is_refusal("x " * 150 + "I could not find it.")  # beyond the first 200 characters


def test_percentile_interpolates_like_numpy():
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([1, 2, 3, 4], 95) == pytest.approx(3.85)
    assert percentile([5.0], 95) == 5.0
    assert percentile([], 50) is None


def cite(n: int, source: str, cited: bool = False) -> Citation:
    return Citation(n=n, chunk_id=f"c{n}", source=source, snippet="…", score=0.1, cited=cited)


CHUNKS = {"c1": "Every full-time employee gets 27 days of paid vacation per year.",
          "c2": "The kitchen is deep-cleaned every Friday at 15:00."}
SHOWN = [cite(1, "/docs/handbook.md", cited=True), cite(2, "/docs/office-guide.txt")]


def doc_of(source: str) -> str:
    return Path(source).name


def test_score_answer_right_reference_scores_higher_than_a_wrong_one():
    answer = "Full-time employees get 27 days of paid vacation per year [1]."
    right = AnswerItem("q", "Vacation days?", CHUNKS["c1"], ("handbook.md",))
    wrong = AnswerItem("q", "Vacation days?", "Hotel rooms cost up to GBP 160 per night in London.",
                       ("travel-policy.pdf",))
    good, bad = (score_answer(i, answer, SHOWN, doc_of, CHUNKS) for i in (right, wrong))
    assert good["source_shown"] is True and bad["source_shown"] is False
    assert good["citation_correct"] == 1.0 and bad["citation_correct"] == 0.0
    # answer: full time employees get 27 days paid vacation per year (10 content words);
    # right: every full time employee gets 27 days paid vacation per year (11), 8 shared;
    # wrong: hotel rooms cost gbp 160 per night london (8), 1 shared ("per").
    assert good["key_fact_recall"] == pytest.approx(8 / 11)
    assert bad["key_fact_recall"] == pytest.approx(1 / 8)
    assert good["token_f1"] == pytest.approx(2 * 0.8 * (8 / 11) / (0.8 + 8 / 11))
    assert bad["token_f1"] == pytest.approx(2 * 0.1 * 0.125 / 0.225)
    # Support reads the chunk the answer cites, whatever the reference says: 8 of its 10 words
    # are there ("employees" and "get" are not).
    assert good["support"] == bad["support"] == pytest.approx(0.8)
    assert good["cited"] == [1] and good["shown"] == ["handbook.md", "office-guide.txt"]
    assert not good["refused"] and not good["repetitive"]
    # Grounded (source shown, not refused) and citing it; the wrong reference was never shown.
    assert good["grounded_cites_source"] is True and bad["grounded_cites_source"] is None


def test_grounded_answers_count_with_or_without_marks_and_not_when_refused():
    item = AnswerItem("q", "Vacation days?", CHUNKS["c1"], ("handbook.md",))
    wrong_mark = [cite(1, "/docs/handbook.md"), cite(2, "/docs/office-guide.txt", cited=True)]
    assert score_answer(item, "27 days [2].", wrong_mark, doc_of, CHUNKS)[
        "grounded_cites_source"] is False
    unmarked = [cite(1, "/docs/handbook.md"), cite(2, "/docs/office-guide.txt")]
    row = score_answer(item, "27 days.", unmarked, doc_of, CHUNKS)
    # No mark at all: not counted by citation_correct, a miss among grounded answers.
    assert row["citation_correct"] is None and row["grounded_cites_source"] is False
    refused = score_answer(item, "I could not find that in the documents.", unmarked, doc_of,
                           CHUNKS)
    assert refused["source_shown"] and refused["grounded_cites_source"] is None


def test_score_answer_without_marks_supports_from_all_chunks_and_refusals_get_none():
    item = AnswerItem("q", "Vacation days?", CHUNKS["c1"], ("handbook.md",))
    uncited = [cite(1, "/docs/handbook.md"), cite(2, "/docs/office-guide.txt")]
    row = score_answer(item, "27 days, cleaned Friday, in Paris", uncited, doc_of, CHUNKS)
    assert row["citation_correct"] is None and row["cited"] == []
    assert row["support"] == pytest.approx(4 / 5)  # 27 days cleaned friday found, paris not
    refused = score_answer(item, NOT_FOUND, [], doc_of, CHUNKS, NOT_FOUND)
    assert refused["refused"] and refused["support"] is None and refused["source_shown"] is False
    off = AnswerItem("u", "Pizza?", None, kind="off-topic")
    row = score_answer(off, "I could not find it.", uncited, doc_of, CHUNKS)
    assert row["refused"] and row["key_fact_recall"] is None and row["source_shown"] is None


def row(answerable=True, refused=False, latency=1.0, ttft=0.5, tokens=1, decode=None, **kw):
    base = {"answerable": answerable, "refused": refused, "repetitive": False, "cited": [],
            "source_shown": None, "citation_correct": None, "grounded_cites_source": None,
            "key_fact_recall": None,
            "token_f1": None, "support": None, "latency_s": latency, "ttft_s": ttft,
            "tokens": tokens, "decode_s": decode}
    return {**base, **kw}


def test_summarize_by_hand():
    rows = [
        row(source_shown=True, cited=[1], citation_correct=1.0, key_fact_recall=0.5,
            token_f1=0.4, support=0.9, latency=1.0, ttft=0.2, tokens=11, decode=2.0,
            grounded_cites_source=True),
        row(source_shown=False, cited=[1, 2], citation_correct=0.5, key_fact_recall=0.1,
            token_f1=0.2, support=0.5, latency=2.0, ttft=0.4, tokens=6, decode=1.0,
            repetitive=True),
        row(refused=True, source_shown=False, key_fact_recall=0.0, token_f1=0.0, latency=0.1,
            ttft=0.1),
        row(answerable=False, refused=True, latency=3.0, ttft=0.3),
        row(answerable=False, support=0.2, latency=4.0, ttft=0.3, tokens=3, decode=0.5),
    ]
    m = summarize(rows)
    assert m["source_shown"] == pytest.approx(1 / 3)
    assert m["cited"] == pytest.approx(2 / 3)
    assert m["citation_correct"] == 0.75
    assert m["key_fact_recall"] == pytest.approx(0.2)
    assert m["token_f1"] == pytest.approx(0.2)
    assert m["support"] == pytest.approx((0.9 + 0.5 + 0.2) / 3)
    assert m["not_found"] == pytest.approx(1 / 3)
    assert m["refusal"] == 0.5
    assert m["repetition"] == 0.2
    assert m["latency_p50_s"] == 2.0 and m["latency_p95_s"] == pytest.approx(3.8)
    assert m["ttft_p50_s"] == 0.3
    assert m["tokens_per_s"] == pytest.approx((10 + 5 + 2) / 3.5)


def test_summarize_grounded_citation_correct_is_over_grounded_answers_only():
    rows = [row(source_shown=True, grounded_cites_source=True),
            row(source_shown=True, grounded_cites_source=False),
            row(source_shown=True, grounded_cites_source=True),
            row(source_shown=False), row(refused=True, source_shown=True),
            row(answerable=False)]
    m = summarize(rows)
    assert m["grounded_answers"] == 3
    assert m["grounded_citation_correct"] == pytest.approx(2 / 3)


def test_summarize_leaves_what_was_not_measured_as_none():
    m = summarize([row(answerable=False, refused=True)])
    assert m["refusal"] == 1.0
    assert m["key_fact_recall"] is None and m["cited"] is None and m["tokens_per_s"] is None


class RecordingPipeline:
    """Yields what RagPipeline.stream yields, and records the questions it got."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.questions = tokens, []

    def stream(self, question):
        from assistant.pipeline import Done, Sources, Token

        self.questions.append(question)
        yield Sources(question, [])
        for t in self.tokens:
            yield Token(t)
        yield Done(Answer(id="a", question=question, standalone_question=question,
                          collection="c", answer="".join(self.tokens), citations=[],
                          grounded=True, model="fake", prompt_version="x"))


def test_ask_timed_counts_token_events_and_times_the_first():
    p = RecordingPipeline(["27", " days", " [1]."])
    t = ask_timed(p, "Vacation?")
    assert p.questions == ["Vacation?"]
    assert t.answer.answer == "27 days [1]." and t.tokens == 3
    assert 0 <= t.ttft_s <= t.latency_s and t.decode_s <= t.latency_s


def test_load_answers_reads_nulls_lists_splits_and_limits(tmp_path):
    path = tmp_path / "a.jsonl"
    rows = [{"question": "Q1?", "answer": "A1", "source": "x.md", "split": "heldout"},
            {"id": "u", "question": "Q2?", "answer": None, "kind": "off-topic", "split": "dev"},
            {"question": "Q3?", "unanswerable": True},
            {"question": "Q4?", "answer": "A4", "source": ["a", "b"], "split": "heldout"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_answers(path)
    assert [i.id for i in items] == ["a001", "u", "a003", "a004"]
    assert items[0].sources == ("x.md",) and items[3].sources == ("a", "b")
    assert [i.answerable for i in items] == [True, False, False, True]
    assert items[1].kind == "off-topic" and items[2].kind == "unanswerable"
    assert [i.id for i in load_answers(path, split="heldout")] == ["a001", "a004"]
    assert [i.id for i in load_answers(path, limit=2)] == ["a001", "u"]
    with pytest.raises(ConfigError, match="no questions in split 'test'"):
        load_answers(path, split="test")
    path.write_text(json.dumps({"question": "Q?"}) + "\n")
    with pytest.raises(ConfigError, match="entry 1 has no answer"):
        load_answers(path)


def test_the_samples_answer_set_is_about_the_sample_files():
    items = load_answers(REPO / "bench" / "answers-samples.jsonl")
    assert 10 <= len(items) <= 20
    assert 2 <= sum(not i.answerable for i in items) <= 3
    samples = {p.name for p in (REPO / "samples").iterdir()}
    for item in items:
        assert set(item.sources) <= samples, item
        assert item.answerable == bool(item.sources)
    assert len({i.id for i in items}) == len(items)
    # A tiny run takes the first three: two answerable, one unanswerable.
    assert [i.answerable for i in items[:3]] == [True, True, False]


def test_resolve_model(tmp_path):
    from core.settings import Settings

    settings = Settings()
    assert resolve_model("default", settings) == settings.llm
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    llm = resolve_model(str(gguf), settings)
    assert llm.runtime == "embedded" and llm.model_path == gguf.resolve()
    assert resolve_model("ollama:qwen", settings).ollama_model == "qwen"
    by_name = resolve_model("qwen2.5-coder-0.5b", settings)
    assert (by_name.runtime, by_name.model, by_name.model_path) == ("embedded", "qwen2.5-coder-0.5b", None)
    with pytest.raises(ConfigError, match="Unknown model 'nope.gguf'"):
        resolve_model("nope.gguf", settings)


@pytest.mark.parametrize("args, message", [
    ([], "give a BEIR FOLDER"),
    (["--docs", "."], "go with --answers"),
    (["--answers", "bench/answers-samples.jsonl"], "give the documents"),
    (["tests", "--answers", "bench/answers-samples.jsonl", "--docs", "samples"], "one of them"),
])
def test_eval_command_argument_checks(args, message, monkeypatch):
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 2 and message in result.output


def test_the_faq_answer_set_builder_writes_what_load_answers_reads(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_eval_set",
                                                  REPO / "scripts" / "build_eval_set.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    pairs = [("faq/a#x", "A", "How do I X?", "Use x()."), ("faq/b#x", "B", "How do I X?", "Call x."),
             ("faq/a#y", "A", "Why Y?", "Because.")]
    queries = {"how do i x?": ("q001", ["faq/a#x", "faq/b#x"]), "why y?": ("q002", ["faq/a#y"])}
    rows = build.answer_set(pairs, queries, seed=0)
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = {i.id: i for i in load_answers(path)}
    assert items["q001"].answer == "Use x()." and items["q001"].sources == ("faq/a#x", "faq/b#x")
    assert items["q002"].sources == ("faq/a#y",)
    unanswerable = [i for i in items.values() if not i.answerable]
    assert len(unanswerable) == sum(map(len, build.UNANSWERABLE.values()))
    # The held-out split is a property of the question text: the same whatever the seed.
    assert {r["id"]: r["split"] for r in build.answer_set(pairs, queries, seed=1)} == \
        {i.id: i.split for i in items.values()}
    splits = [build.split_of(f"question {n}") for n in range(1000)]
    assert 150 < splits.count("heldout") < 250 and set(splits) == {"heldout", "dev"}


def test_records_round_trip_and_rescore_offline(tmp_path):
    from assistant.citations import CitationAttributor
    from localcat.evaluation.records import (
        AnswerRecord,
        ShownChunk,
        read_records,
        rescore,
        score_record,
        write_records,
    )

    raw = "Full-time employees get 27 days of paid vacation per year [2]."
    record = AnswerRecord(
        model="default", id="q1", question="Vacation days?", reference=CHUNKS["c1"],
        reference_docs=["handbook.md"],
        shown=[ShownChunk(n=1, chunk_id="c1", doc="handbook.md", text=CHUNKS["c1"]),
               ShownChunk(n=2, chunk_id="c2", doc="office-guide.txt", text=CHUNKS["c2"])],
        raw_answer=raw, answer=raw)
    write_records(tmp_path / "r.jsonl", [record])
    [back] = read_records(tmp_path / "r.jsonl")
    assert back == record
    assert score_record(back)["grounded_cites_source"] is False  # the model's wrong [2]

    fixed = rescore(back, CitationAttributor())  # word overlap: the sentence is chunk 1's
    assert fixed.raw_answer == raw and fixed.answer.endswith("per year [1].")
    assert fixed.sentences[0].model_sources == [2] and fixed.sentences[0].sources == [1]
    row = score_record(fixed)
    assert row["grounded_cites_source"] is True and row["citation_correct"] == 1.0

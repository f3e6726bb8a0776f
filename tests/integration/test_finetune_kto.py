"""Many thumbs, few corrections: the loop trains with TRL's KTOTrainer (unsloth, for real, on the
tiny model), says so and why, learns from it, and the gate refuses to judge a test split this small
unless forced.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant.feedback import FeedbackStore
from assistant.pipeline import RagPipeline
from core.chunkstore import ChunkStore
from core.llm import ChatLlamaCpp
from core.schemas import Chunk
from tests.fixtures.tiny_model import TINY_ANSWER
from tests.integration.test_finetune_loop import (
    TARGET,
    WORDS,
    StoreRetriever,
    cli,
    environment,
    questions,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIKED = set(WORDS[:2])  # answers to questions about these were rated up, the others down
CORRECTED = 8  # the first questions' answers were corrected (too few for SFT to be chosen)


def liked(question: str) -> bool:
    return question.split()[3] in LIKED  # "Where is the <word> …"


def fill_thumbs(data: Path, gguf: Path, n: int = 48) -> None:
    """The tiny model's answers, a few corrected and the others rated up or down, in the real store."""
    store = ChunkStore(data / "index.sqlite")
    store.ensure_collection("default", "test", 3)
    chunks = [Chunk(id=f"c{i}", text=f"The {w} is on port {1000 + i}.", source=f"/docs/{w}.md",
                    file_hash=f"h{i}", position=0) for i, w in enumerate(WORDS[:6])]
    for c in chunks:
        store.mark_pending("default", c.source, c.file_hash, "{}")
        store.commit_file("default", c.source, c.file_hash, "{}", [c])
    llm = ChatLlamaCpp(model_path=gguf, temperature=0, max_tokens=24, n_ctx=1024)
    pipe = RagPipeline(llm, StoreRetriever(store=store, ids=[c.id for c in chunks]),
                       model_tag=f"embedded {llm.model_tag}", condense=False)
    with FeedbackStore(data / "feedback.sqlite") as feedback:
        for i, q in enumerate(questions(n, seed=1)):
            answer = pipe.ask(q)
            assert answer.answer == TINY_ANSWER
            feedback.record_answer(answer)
            if i < CORRECTED:
                feedback.add_feedback(answer.id, "down", correction=TARGET, user="tester")
            else:
                feedback.add_feedback(answer.id, "up" if liked(q) else "down", user="tester")


def test_few_corrections_train_with_kto_and_a_small_test_split_is_not_promoted(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    fill_thumbs(data, tiny_gguf)
    env = environment(data)
    done = cli("run", "--run", "k1", "--base", str(tiny_gguf), "--min-examples", "5",
               "--steps", "30", "--lr", "2e-3", "--no-ollama", "--json", "--quiet", env=env)
    assert done.returncode == 0, done.stderr[-6000:]
    result = json.loads(done.stdout)

    train = result["train"]
    dataset = result["dataset"]
    assert dataset["sources"]["correction"] == CORRECTED
    assert train["trainer"] == "unsloth" and train["objective"] == "kto"
    good, bad = train["examples"]["good"], train["examples"]["bad"]
    assert good + bad == train["examples"]["train"] == dataset["kto"]["train"]
    assert train["objective_reason"].startswith("only ")
    assert train["objective_reason"].endswith(
        f" corrections in the training split (fewer than 10), but {good} good and {bad} bad "
        "rated answers")
    assert "KTO (only " in done.stderr  # said while training, and in the summary
    manifest = json.loads((data / "finetune" / "k1" / "train" / "adapter" /
                           "localcat-adapter.json").read_text())
    assert manifest["objective"] == "kto"
    # Only the trained adapter is kept, not the reference copy KTOTrainer adds.
    adapter = data / "finetune" / "k1" / "train" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()

    # It learned from the ratings: the good answers' reward rose above the bad ones', and the
    # adapter now answers as corrected where the base still gives its one answer.
    state = json.loads((data / "finetune" / "k1" / "train" / "checkpoints" / "checkpoint-30" /
                        "trainer_state.json").read_text())
    margins = [e["rewards/margins"] for e in state["log_history"] if "rewards/margins" in e]
    assert margins and sum(margins[-5:]) > 0, margins

    # A handful of test questions cannot show a gain beyond noise: not promoted, not registered.
    evaluated = result["eval"]
    assert not evaluated["promoted"] and result["version"] is None
    n = evaluated["examples"]
    assert 0 < n < 20
    samples = evaluated["samples"]
    assert {s["base"] for s in samples} == {TINY_ANSWER}
    assert {s["adapter"] for s in samples} == {TARGET}, samples
    assert evaluated["reason"] == (f"cannot be judged: only {n} test questions (20 needed): "
                                   "not promoted; --force to register anyway")
    assert evaluated["gate"]["questions"] == n and evaluated["gate"]["low"] is None
    assert "eval: k1: not promoted — the adapter cannot be judged" in done.stderr

    refused = cli("register", "--run", "k1", "--base", str(tiny_gguf), "--no-ollama", env=env)
    assert refused.returncode == 1 and "(20 needed): not promoted" in refused.stderr
    forced = cli("register", "--run", "k1", "--base", str(tiny_gguf), "--no-ollama", "--force",
                 "--json", env=env)
    assert forced.returncode == 0, forced.stderr[-3000:]
    version = json.loads(forced.stdout)
    assert version["name"] == "v1" and version["status"] == "forced"

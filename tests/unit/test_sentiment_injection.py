"""Issue 16, item 7: the injection defence does not depend on wording (tiny random Llama).

The defence (services/sentiment/prompts.py) keeps real news whole, undoes hidden spellings and
reads a text by its pieces, each scored alone. With a random model the scores mean nothing, so
these tests check what holds for any model: what enters the prompt, and that a piece added to a
headline can not carry the score past the headline's own reading. The real SmolLM2 is measured
on the same labelled set by bench/sentiment.py and in tests/integration/test_sentiment_smollm2.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.sentiment.scorer import LLMOptions, LLMScorer

ROWS = [
    json.loads(line)
    for line in (Path(__file__).resolve().parents[1] / "data" / "injection_headlines.jsonl")
    .read_text(encoding="utf-8")
    .splitlines()
]
CLEAN = [r for r in ROWS if r["kind"] == "clean"]
INJECTED = [r for r in ROWS if r["kind"] == "injected"]


@pytest.fixture(scope="module")
def scorer(tiny_llama_dir: Path) -> LLMScorer:
    return LLMScorer(tiny_llama_dir, LLMOptions(batch_size=64))


def test_the_labelled_set_is_balanced_and_varied() -> None:
    assert len(CLEAN) >= 60 and len(INJECTED) >= 60
    assert {r["label"] for r in ROWS} == {"positive", "negative"}
    assert len({r["trick"] for r in INJECTED}) >= 15
    assert {"de", "fr", "es"} <= {r["lang"] for r in INJECTED}
    assert all(r["base"] in r["text"] or r["trick"] == "prefix_system" for r in INJECTED)


def test_real_news_enters_the_prompt_whole(scorer: LLMScorer) -> None:
    """The blocklist dropped real news that used words like "ignore", "you must", "answer ...
    positive" or "SYSTEM:"; now every clean headline reaches the model as it was written."""
    for row in CLEAN:
        assert scorer.data_parts(row["text"])[0] == row["text"], row["text"]
        assert f"\n{row['text']}\n" in scorer.prompt(row["text"])


@pytest.mark.parametrize(
    "trick", ["zero_width", "cyrillic_lookalikes", "fullwidth", "soft_hyphens"]
)
def test_hidden_spellings_reach_the_model_as_plain_letters(scorer: LLMScorer, trick: str) -> None:
    rows = [r for r in INJECTED if r["trick"] == trick]
    assert rows
    for row in rows:
        whole = scorer.data_parts(row["text"])[0]
        assert whole.isascii(), whole
        assert row["pushes"] in whole.lower() or row["pushes"][:4] in whole.lower()


def test_an_added_piece_can_not_carry_a_headline_past_its_own_reading(
    scorer: LLMScorer,
) -> None:
    """For every injected row whose headline stands as a piece of its own, the score is on the
    headline's side, or no further from zero than the headline's own score: the injection can
    weaken a reading, never turn it into the one it asks for."""
    rows = [r for r in INJECTED if r["base"] in scorer.data_parts(r["text"])[1:]]
    assert len(rows) >= 40
    bases = scorer.score([r["base"] for r in rows])
    scores = scorer.score([r["text"] for r in rows])
    for row, base, score in zip(rows, bases, scores, strict=True):
        same_side = (score.sentiment >= 0) == (base.sentiment >= 0)
        assert same_side or abs(score.sentiment) <= abs(base.sentiment) + 1e-6, (
            row["text"],
            base.sentiment,
            score.sentiment,
        )

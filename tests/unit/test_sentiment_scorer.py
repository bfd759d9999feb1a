"""The LLM scorer on a tiny random Llama: the shared-prefix cache and batching change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.sentiment.scorer import LLMOptions, LLMScorer, Score, make_scorer
from services.sentiment.service import build_scorer
from services.sentiment.settings import SentimentSettings

TEXTS = [
    "Acme shares plunge after profit warning",
    "Brightwave raises guidance",
    "A much longer headline about Northfield Bank, its loans, its deposits and its dividend",
    "x",
]


@pytest.fixture(scope="module")
def scorer(tiny_llama_dir: Path) -> LLMScorer:
    return LLMScorer(tiny_llama_dir, LLMOptions(batch_size=8))


def full_prompt_probs(scorer: LLMScorer, text: str) -> torch.Tensor:
    """The label probabilities from one plain forward of the whole prompt, no cache."""
    ids = scorer.tokenizer(scorer.prompt(text), return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        logits = scorer.model(**ids).logits[0, -1, scorer.label_ids]
    return torch.softmax(logits, dim=-1)


def scored(scorer: LLMScorer) -> list[Score]:
    """The scores of TEXTS, one per text: two empty lists compare equal, and a loop over none
    checks nothing, so a scorer that dropped texts would otherwise pass the tests below."""
    scores = scorer.score(TEXTS)
    assert len(scores) == len(TEXTS), f"{len(scores)} scores for {len(TEXTS)} texts"
    return scores


def test_cached_batched_scores_equal_plain_forward(scorer: LLMScorer) -> None:
    scores = scored(scorer)
    for text, score in zip(TEXTS, scores, strict=True):
        expected = full_prompt_probs(scorer, text).tolist()
        got = [score.probabilities[k] for k in ("positive", "negative", "neutral")]
        assert got == pytest.approx(expected, abs=1e-4)


def test_batch_size_does_not_change_scores(tiny_llama_dir: Path, scorer: LLMScorer) -> None:
    one = scored(LLMScorer(tiny_llama_dir, LLMOptions(batch_size=1)))
    many = scored(scorer)
    assert [s.sentiment for s in one] == pytest.approx([s.sentiment for s in many], abs=1e-4)


def test_prefix_cache_off_gives_the_same_scores(tiny_llama_dir: Path, scorer: LLMScorer) -> None:
    """The bench's baseline (every full prompt run from its first token, padded batch)."""
    plain = scored(LLMScorer(tiny_llama_dir, LLMOptions(batch_size=8, prefix_cache=False)))
    cached = scored(scorer)
    for a, b in zip(plain, cached, strict=True):
        assert list(a.probabilities.values()) == pytest.approx(
            list(b.probabilities.values()), abs=1e-4
        )


def test_score_is_p_positive_minus_p_negative(scorer: LLMScorer) -> None:
    for score in scored(scorer):
        p = score.probabilities
        assert sum(p.values()) == pytest.approx(1.0, abs=1e-5)
        assert score.sentiment == pytest.approx(p["positive"] - p["negative"])
        assert -1.0 <= score.sentiment <= 1.0


def test_version_is_a_content_hash(scorer: LLMScorer, tiny_llama_dir: Path) -> None:
    assert len(scorer.version) == 12
    assert scorer.name == tiny_llama_dir.name


def test_calibration_uses_content_free_prior(tiny_llama_dir: Path, scorer: LLMScorer) -> None:
    calibrated = LLMScorer(tiny_llama_dir, LLMOptions(calibrate=True))
    assert calibrated._prior is not None
    assert calibrated.score(TEXTS[:1])[0].sentiment != pytest.approx(
        scorer.score(TEXTS[:1])[0].sentiment
    )


def test_missing_model_folder_is_a_clear_error_and_falls_back(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="rlmf models prepare"):
        make_scorer("llm", tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown sentiment backend"):
        make_scorer("magic")
    fallback = build_scorer(SentimentSettings(model_dir=tmp_path / "nope"))
    assert fallback.name == "vader"
    with pytest.raises(FileNotFoundError):
        build_scorer(SentimentSettings(model_dir=tmp_path / "nope", fallback_to_lexicon=False))

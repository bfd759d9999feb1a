"""Best-of-n: with a reward model the best-scored candidate wins; without one it is off."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from services.common.market_state import MarketState
from services.policy.actor_critic import LLMActorCritic
from services.policy.explain import ExplainConfig, Explainer, RewardScorer

STATE = MarketState(ticker="MSFT", as_of=datetime(2024, 1, 2, tzinfo=UTC), recent_closes=[1.0, 1.2])


class PrefersSell:
    """A reward model that likes "sell" candidates; records what it was asked to score."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        self.calls.append(responses)
        return [1.0 if r.startswith(" sell") else 0.0 for r in responses]


@pytest.fixture(scope="module")
def model(tiny_llama_dir: Path) -> LLMActorCritic:
    return LLMActorCritic.from_pretrained(tiny_llama_dir)


def _count_generated(model: LLMActorCritic, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap generate() to record how many new tokens each rationale really got."""
    counts: list[int] = []
    original = model.lm.generate

    def spy(input_ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
        out = original(input_ids, **kwargs)
        counts.append(out.shape[1] - input_ids.shape[1])
        return out

    monkeypatch.setattr(model.lm, "generate", spy)
    return counts


def test_best_of_n_keeps_the_candidate_the_reward_model_scores_highest(
    model: LLMActorCritic, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = _count_generated(model, monkeypatch)
    scorer = PrefersSell()
    assert isinstance(scorer, RewardScorer)
    explainer = Explainer(ExplainConfig(max_new_tokens=4, best_of_n=6, seed=1), scorer)
    decision = explainer.explain_decisions(model, [STATE], model.decide([STATE]))[0]
    assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 6
    # seeded: this draw holds sell candidates, and the reward model's favourite wins
    assert any(r.startswith(" sell") for r in scorer.calls[0])
    assert decision.action == "sell" and decision.explanation is not None
    assert len(counts) == 6 and all(0 < n <= 4 for n in counts)


def test_without_a_reward_model_best_of_n_is_off_and_says_so(model: LLMActorCritic) -> None:
    explainer = Explainer(ExplainConfig(max_new_tokens=4, best_of_n=6), scorer=None)
    assert not explainer.best_of_n_active
    assert "off: no reward model" in explainer.status
    decision = explainer.explain_decisions(model, [STATE], model.decide([STATE]))[0]
    assert decision.action == max(decision.probabilities, key=decision.probabilities.__getitem__)

"""The real SmolLM2-135M-Instruct as the actor-critic (slow): prefix cache exactness, a legal
greedy decision, and a rationale bounded in tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from services.common.market_state import ACTIONS, MarketState
from services.policy.actor_critic import ActorCriticConfig, LLMActorCritic
from services.policy.explain import ExplainConfig, Explainer

pytestmark = pytest.mark.slow

STATES = [
    MarketState(
        ticker="MSFT",
        as_of=datetime(2024, 3, 1, 21, tzinfo=UTC),
        recent_closes=[400.0, 404.0, 409.0, 415.0][: 2 + i],
        position=2.0,
        cash=5000.0,
        features={"rsi_14": 62.0},
        news_summary=[
            "Cloud revenue beat estimates.",
            "Regulators opened a probe into the company.",
        ][i],
        sentiment=[0.6, -0.7][i],
    )
    for i in range(2)
]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path) -> LLMActorCritic:
    torch.manual_seed(0)
    return LLMActorCritic.from_pretrained(smollm2_dir, ActorCriticConfig(trainable_top_k=2))


def test_prefix_cache_gives_the_uncached_logits_on_smollm2(smollm2: LLMActorCritic) -> None:
    with torch.no_grad():
        full, _ = smollm2(*smollm2.encode(STATES))
    cached, _ = smollm2.cached_forward(*smollm2.encode_suffixes(STATES))
    torch.testing.assert_close(cached, full, atol=2e-4, rtol=1e-4)
    probs = torch.softmax(full, -1)
    assert torch.allclose(probs.sum(-1), torch.ones(2))


def test_explanation_is_bounded_and_best_of_n_says_it_is_off(
    smollm2: LLMActorCritic, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts: list[int] = []
    original = smollm2.lm.generate

    def spy(input_ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
        out = original(input_ids, **kwargs)
        counts.append(out.shape[1] - input_ids.shape[1])
        return out

    monkeypatch.setattr(smollm2.lm, "generate", spy)
    explainer = Explainer(ExplainConfig(max_new_tokens=12, best_of_n=4), scorer=None)
    assert not explainer.best_of_n_active and "no reward model" in explainer.status
    decision = explainer.explain_decisions(smollm2, STATES[:1], smollm2.decide(STATES[:1]))[0]
    assert decision.action in ACTIONS and decision.explanation
    assert len(counts) == 1 and 0 < counts[0] <= 12

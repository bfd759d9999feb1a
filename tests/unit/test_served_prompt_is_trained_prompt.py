"""The prompt the policy is served is the prompt it is trained on: the live session (simulator)
and the training env build the same state for the same bar, so the same prompt text and the
same token ids; and a market.feedback.v1 record's state block rebuilds exactly that prompt for
D_MF. Otherwise a student would be trained on prompts it is never shown (and the day cache,
keyed by the day part's tokens, would never hit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from services.common.market_state import Decision, MarketState
from services.common.state_block import state_block
from services.market.accounting import ExecutionConfig
from services.market.envs import DiscreteTradingEnv
from services.market.regime_market import generate_market, load_params
from services.policy.actor_critic import ActorCriticConfig, LLMActorCritic
from services.policy.prompt import build_prompt, decision_suffix, prompt_prefix
from services.simulator.session import BarData, TradingSession

ACTIONS_PLAYED = ["buy", "buy", "hold", "sell", "buy", "hold", "sell", "sell", "buy", "hold"]
BARS = 40


def _both_sides(bars: int = BARS) -> tuple[list[MarketState], list[MarketState]]:
    frame, _ = generate_market(load_params("default"), bars, seed=3)
    rng = np.random.default_rng(0)
    sentiment = pd.Series(np.round(np.tanh(rng.normal(size=bars)), 2), index=frame.index)
    summaries = pd.Series([f"Headline {i}" for i in range(bars)], index=frame.index)
    cfg = ExecutionConfig(fill_at="next_open")
    env = DiscreteTradingEnv(frame, ticker="SYN", sentiment=sentiment, summaries=summaries)
    env.reset(seed=0)
    session = TradingSession("SYN", cfg)
    served: list[MarketState] = []
    trained: list[MarketState] = []

    def decide(state: MarketState) -> Decision:
        served.append(state)
        return Decision(action=ACTIONS_PLAYED[len(served) % len(ACTIONS_PLAYED)], model_version="t")

    for t, (time, row) in enumerate(frame.iterrows()):
        bar = BarData("SYN", time.to_pydatetime(), row.open, row.high, row.low, row.close)
        session.on_bar(bar, decide, sentiment=float(sentiment.iloc[t]), summary=summaries.iloc[t])
    for k in range(len(frame) - 1):
        trained.append(env.current_state())
        _, _, done, truncated, _ = env.step(
            ["sell", "hold", "buy"].index(ACTIONS_PLAYED[(k + 1) % len(ACTIONS_PLAYED)])
        )
        if done or truncated:
            break
    return served, trained


def _pairs() -> list[tuple[MarketState, MarketState]]:
    """(served, trained) state of each bar both sides decide on, every one of them: a side that
    stopped early would leave bars uncompared and the tests would pass on fewer."""
    served, trained = _both_sides()
    # The session decides on every bar; the env is stepped on all but the last (_both_sides).
    assert len(served) == BARS, f"the session decided on {len(served)} of {BARS} bars"
    assert len(trained) == BARS - 1, f"the env stepped {len(trained)} of {BARS - 1} bars"
    return list(zip(served[: len(trained)], trained, strict=True))


def test_the_live_session_and_the_training_env_render_the_same_prompts() -> None:
    for live, train in _pairs():
        assert build_prompt(live).text == build_prompt(train).text, live.as_of


def test_the_same_prompts_are_the_same_token_ids_and_feedback_rebuilds_them(
    tiny_llama_dir: Path,
) -> None:
    model = LLMActorCritic.from_pretrained(tiny_llama_dir, ActorCriticConfig(trainable_top_k=1))
    sampled = _pairs()[::7]
    # Pairs 0, 7, ..., 35 of the 39.
    assert len(sampled) == 6
    for live, train in sampled:
        served_ids, _ = model.encode([live])
        trained_ids, _ = model.encode([train])
        rebuilt_ids, _ = model.encode_texts(prompt_prefix(), [decision_suffix(state_block(live))])
        assert torch.equal(served_ids, trained_ids)
        assert torch.equal(served_ids, rebuilt_ids)


@pytest.mark.parametrize("share", [0.0, 0.3, 0.6, 1.0])
def test_the_portfolio_is_rendered_in_coarse_steps_whatever_the_share(share: float) -> None:
    state = MarketState(
        ticker="SYN",
        as_of=pd.Timestamp("2024-01-02", tz="UTC").to_pydatetime(),
        recent_closes=[100.0, 101.0],
        position=share * 100.0 / 101.0,
        cash=(1 - share) * 100.0,
    )
    tail = build_prompt(state).tail
    assert tail.startswith(f"invested_pct: {int(round(share * 4) * 25)}\n")

"""A tiny actor-critic and a steady uptrend for the PPO loop's tests: a real torch module with
the split the LLM policy offers (a frozen base, a trainable head), small enough to train in
a second. Shared by the PPO tests, which may not import one another."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import torch
from torch import Tensor, nn

from services.common.market_state import MarketState
from services.trainer.ppo import BUY, HOLD, SELL


class TinyActorCritic(nn.Module):
    """A frozen "base" (embedding) and a trainable head: the split the LLM policy offers."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.base = nn.Embedding(16, dim)
        self.base.requires_grad_(False)
        self.policy = nn.Linear(dim, 3)
        self.value = nn.Linear(dim, 1)
        self.base_calls = 0

    def base_hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        self.base_calls += 1
        return self.base(input_ids)

    def head_forward(self, hidden: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        pooled = hidden.mean(1)
        return self.policy(pooled), self.value(pooled).squeeze(-1)


class UptrendEnv:
    """Price rises 1% a day; reward = position's P&L (buy +r, sell -r, hold 0)."""

    def __init__(self, max_episode_steps: int = 20) -> None:
        self.max_steps = max_episode_steps
        self.t = 0

    def reset(self, *, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        self.t = 0
        return None, {}

    def current_state(self) -> MarketState:
        closes = [100 * 1.01 ** (self.t + i) for i in range(5)]
        return MarketState(
            ticker="UP",
            as_of=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=self.t),
            recent_closes=closes,
        )

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self.t += 1
        pnl = {BUY: 0.01, HOLD: 0.0, SELL: -0.01}[action]
        return None, pnl * 100, False, self.t >= self.max_steps, {"realised_return": 0.01}


def _encode(state: MarketState) -> tuple[Tensor, Tensor]:
    ids = torch.tensor([[1, 2, 3, 4]])
    return ids, torch.ones_like(ids)


def _buy_probability(agent: TinyActorCritic) -> float:
    ids, mask = _encode(UptrendEnv().current_state())
    with torch.no_grad():
        logits, _ = agent.head_forward(agent.base_hidden(ids, mask), mask)
    return float(torch.softmax(logits, -1)[0, BUY])


def _agents(seed: int) -> tuple[TinyActorCritic, TinyActorCritic]:
    torch.manual_seed(seed)
    agent = TinyActorCritic()
    teacher = TinyActorCritic()
    teacher.load_state_dict(agent.state_dict())
    return agent, teacher

"""Env steps/s: the project's DiscreteTradingEnv vs a straightforward pandas-row env, same rules.

The baseline reads each bar with `df.iloc`, computes its features from a pandas slice of past
closes at every step, and trades through the same accounting core; both envs are driven by the
same seeded action sequence and must produce the same rewards (checked) before being timed.
Prints one JSON line on stdout; progress on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium import spaces

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.market import accounting as acc  # noqa: E402
from services.market.accounting import ExecutionConfig, RewardConfig  # noqa: E402
from services.market.envs import DiscreteTradingEnv  # noqa: E402
from services.market.market_data import load_prices_csv  # noqa: E402

WINDOW = 10


class PandasRowEnv(gym.Env):  # type: ignore[misc]
    """The obvious implementation: pandas lookups and rolling math inside every step."""

    def __init__(
        self, prices: pd.DataFrame, sentiment: pd.Series, cfg: ExecutionConfig, rc: RewardConfig
    ) -> None:
        self.df = prices.assign(sentiment=sentiment)
        self.cfg, self.rc = cfg, rc
        self.action_space = spaces.Discrete(3)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(WINDOW + 4,), dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.t, self.cash, self.position = 0, self.cfg.initial_cash, 0.0
        return self._obs(), {}

    def _features(self, t: int) -> tuple[np.ndarray, float]:
        closes = self.df["close"].iloc[max(0, t - WINDOW) : t + 1]
        rets = np.log(closes).diff().fillna(0.0).to_numpy()[-WINDOW:]
        window = np.concatenate([np.zeros(WINDOW - len(rets)), rets])
        return window, float(window.std())

    def _obs(self) -> np.ndarray:
        row = self.df.iloc[self.t]
        window, vol = self._features(self.t)
        nw = self.cash + self.position * row["close"]
        return np.concatenate(
            [window, [vol, row["sentiment"], self.position * row["close"] / nw, self.cash / nw]]
        ).astype(np.float32)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        row, nxt = self.df.iloc[self.t], self.df.iloc[self.t + 1]
        nw_prev = self.cash + self.position * row["close"]
        price = nxt["open"] if self.cfg.fill_at == "next_open" else row["close"]
        qty = acc.discrete_quantity(int(action), self.cash, self.position, price, 1.0, self.cfg)
        self.cash, self.position, fill = acc.execute(self.cash, self.position, qty, price, self.cfg)
        _, vol = self._features(self.t)
        alignment = row["sentiment"] * (int(action) - 1) if fill else 0.0
        self.t += 1
        nw_now = self.cash + self.position * nxt["close"]
        r = acc.reward(
            nw_prev,
            nw_now,
            fill.notional if fill else 0.0,
            fill.cost if fill else 0.0,
            alignment,
            vol,
            self.rc,
        )
        return self._obs(), float(r), self.t >= len(self.df) - 1, False, {"net_worth": nw_now}


def drive(env: gym.Env, actions: np.ndarray) -> tuple[float, list[float]]:
    """Steps/s over the action sequence (resetting at episode ends) and the rewards seen."""
    env.reset(seed=0)
    rewards = []
    started = time.perf_counter()
    for a in actions:
        _, r, terminated, truncated, _ = env.step(int(a))
        rewards.append(r)
        if terminated or truncated:
            env.reset(seed=0)
    return len(actions) / (time.perf_counter() - started), rewards


def main() -> None:
    prices = load_prices_csv(REPO / "data" / "GOOGL.csv")
    sentiment = pd.Series(
        np.tanh(np.random.default_rng(0).normal(size=len(prices))), index=prices.index
    )
    cfg, rc = ExecutionConfig(cost_bps=10, fixed_fee=1.0), RewardConfig()
    fast = DiscreteTradingEnv(
        prices, ticker="GOOGL", sentiment=sentiment, execution=cfg, reward_config=rc, window=WINDOW
    )
    slow = PandasRowEnv(prices, sentiment, cfg, rc)
    actions = np.random.default_rng(1).integers(0, 3, size=6000)
    print("checking both envs give the same rewards ...", file=sys.stderr)
    _, r_fast = drive(fast, actions[:1500])
    _, r_slow = drive(slow, actions[:1500])
    same = bool(np.allclose(r_fast, r_slow, rtol=1e-9, atol=1e-12))
    if not same:
        raise SystemExit("the two envs disagree; the comparison would be meaningless")
    print("timing ...", file=sys.stderr)
    # Best of two runs each, to damp noise from other work on a shared machine.
    fast_sps = max(drive(fast, actions)[0] for _ in range(2))
    slow_sps = max(drive(slow, actions[:2000])[0] for _ in range(2))
    print(
        json.dumps(
            {
                "bench": "env",
                "env": "DiscreteTradingEnv",
                "baseline": "pandas-row env, same rules",
                "steps_per_s": round(fast_sps, 1),
                "baseline_steps_per_s": round(slow_sps, 1),
                "ratio": round(fast_sps / slow_sps, 2),
                "target_ratio": 20,
                "same_rewards": same,
                "data": "data/GOOGL.csv",
            }
        )
    )


if __name__ == "__main__":
    main()

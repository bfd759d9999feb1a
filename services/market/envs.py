"""Gymnasium trading environments over precomputed numpy arrays, all through one accounting core.

- `DiscreteTradingEnv`: {sell, hold, buy} as FLAG-Trader acts (index order = ACTIONS), with
  `current_state()` giving the MarketState its prompt shows; used by backtests and PPO rollouts.
- `ContinuousTradingEnv`: the News-driven RL seed's (type in [0,2], amount in [0,0.5]) action.
- `PortfolioEnv`: target weights over N tickers plus cash.

Time: step t decides on bar t (observation built from bars <= t only), fills at bar t+1's open
(or t's close, a setting), and is valued at bar t+1's close; the next observation is bar t+1's.
Features are computed once, vectorised, from past data only, so a step is a few float ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium import spaces

from services.common.market_state import ACTIONS, MAX_RECENT_PRICES, MarketState
from services.market import accounting as acc
from services.market.accounting import ExecutionConfig, Fill, RewardConfig

HOLD_TOLERANCE = 0.05


# ---------------------------------------------------------------------------------------------
# Precomputed market arrays
# ---------------------------------------------------------------------------------------------


@dataclass
class MarketArrays:
    """One ticker's series as arrays, with past-only features per bar."""

    times: pd.DatetimeIndex
    open: np.ndarray
    close: np.ndarray
    fill_price: np.ndarray
    """fill_price[t]: where a decision on bar t fills (t+1's open or t's close)."""
    returns_window: np.ndarray
    """[n, window] log returns up to and including bar t (zeros before the series starts)."""
    volatility: np.ndarray
    """Std of the last `window` period returns up to bar t."""
    sentiment: np.ndarray
    summaries: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.close)


def build_arrays(
    prices: pd.DataFrame,
    window: int,
    cfg: ExecutionConfig,
    sentiment: pd.Series | None = None,
    summaries: pd.Series | None = None,
) -> MarketArrays:
    """Precompute everything a step needs; every feature at t uses bars <= t only."""
    close = prices["close"].to_numpy(dtype=np.float64)
    opens = prices["open"].to_numpy(dtype=np.float64)
    if len(close) < 2:
        raise ValueError("need at least 2 bars to step an environment")
    fill = np.empty_like(close)
    if cfg.fill_at == "next_open":
        fill[:-1] = opens[1:]
        fill[-1] = np.nan  # no decision can be made on the last bar
    else:
        fill[:] = close
    log_ret = np.zeros_like(close)
    log_ret[1:] = np.diff(np.log(close))
    padded = np.concatenate([np.zeros(window - 1), log_ret])
    windows = np.lib.stride_tricks.sliding_window_view(padded, window).copy()
    # Before `window` returns exist the std covers what there is (zeros pad, never the future).
    vol = windows.std(axis=1)
    sent = np.zeros_like(close)
    if sentiment is not None:
        sent = sentiment.reindex(prices.index).fillna(0.0).clip(-1, 1).to_numpy(dtype=np.float64)
    text = [""] * len(close)
    if summaries is not None:
        text = [str(s) for s in summaries.reindex(prices.index).fillna("").tolist()]
    return MarketArrays(prices.index, opens, close, fill, windows, vol, sent, text)


def _window_bounds(n: int, start: int | None, end: int | None) -> tuple[int, int]:
    lo = 0 if start is None else start
    hi = n - 1 if end is None else min(end, n - 1)
    if not 0 <= lo < hi:
        raise ValueError(f"window start={lo} end={hi} must satisfy 0 <= start < end <= {n - 1}")
    return lo, hi


# ---------------------------------------------------------------------------------------------
# Single-asset base
# ---------------------------------------------------------------------------------------------


@dataclass
class TradeRecord:
    """A fill with the bar it was decided on."""

    decided_at: pd.Timestamp
    filled_at: pd.Timestamp
    fill: Fill


class _SingleAssetEnv(gym.Env):  # type: ignore[misc]
    """Shared stepping and accounting of the single-asset envs."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        prices: pd.DataFrame,
        *,
        ticker: str = "ASSET",
        sentiment: pd.Series | None = None,
        summaries: pd.Series | None = None,
        start: int | None = None,
        end: int | None = None,
        max_episode_steps: int | None = None,
        random_start: bool = False,
        window: int = 10,
        execution: ExecutionConfig | None = None,
        reward_config: RewardConfig | None = None,
        record: bool = False,
    ) -> None:
        super().__init__()
        self.ticker = ticker
        self.execution = execution or ExecutionConfig()
        self.reward_config = reward_config or RewardConfig()
        self.window = window
        self.market = build_arrays(prices, window, self.execution, sentiment, summaries)
        self.start, self.end = _window_bounds(self.market.n, start, end)
        self.max_episode_steps = max_episode_steps
        self.random_start = random_start
        self.record = record
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(window + 4,), dtype=np.float32)
        self._t = self.start
        self._episode_start = self.start
        self._steps = 0
        self.cash = self.execution.initial_cash
        self.position = 0.0
        self.trades: list[TradeRecord] = []
        self.equity: list[float] = []

    # -- episode --------------------------------------------------------------------------

    def _pick_start(self, options: dict[str, Any] | None) -> int:
        if options and "start" in options:
            first = int(options["start"])
            _window_bounds(self.market.n, first, self.end)
            return first
        if self.random_start and self.max_episode_steps:
            last_start = max(self.start, self.end - self.max_episode_steps)
            return int(self.np_random.integers(self.start, last_start + 1))
        return self.start

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = self._episode_start = self._pick_start(options)
        self._steps = 0
        self.cash = self.execution.initial_cash
        self.position = 0.0
        self.trades = []
        self.equity = [self.net_worth] if self.record else []
        return self._obs(), {"net_worth": self.net_worth, "t": self._t}

    @property
    def t(self) -> int:
        """Index of the bar the next decision is made on."""
        return self._t

    @property
    def time(self) -> pd.Timestamp:
        return self.market.times[self._t]

    @property
    def net_worth(self) -> float:
        return acc.net_worth(self.cash, self.position, float(self.market.close[self._t]))

    def _obs(self) -> np.ndarray:
        m, t = self.market, self._t
        nw = self.net_worth
        held = self.position * m.close[t] / nw if nw > 0 else 0.0
        extra = (m.volatility[t], m.sentiment[t], held, self.cash / nw if nw > 0 else 0.0)
        return np.concatenate([m.returns_window[t], extra]).astype(np.float32)

    # -- one step ---------------------------------------------------------------------------

    def _trade_and_advance(
        self, quantity: float, direction: int
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._t >= self.end:
            raise RuntimeError("episode is over; call reset()")
        m, t = self.market, self._t
        nw_prev = self.net_worth
        price = float(m.fill_price[t])
        self.cash, self.position, fill = acc.execute(
            self.cash, self.position, quantity, price, self.execution
        )
        self._t = t + 1
        self._steps += 1
        nw_now = self.net_worth
        notional = fill.notional if fill else 0.0
        cost = fill.cost if fill else 0.0
        alignment = float(m.sentiment[t]) * direction if fill else 0.0
        r = acc.reward(
            nw_prev, nw_now, notional, cost, alignment, float(m.volatility[t]), self.reward_config
        )
        if self.record:
            self.equity.append(nw_now)
            if fill:
                filled_at = m.times[t + 1] if self.execution.fill_at == "next_open" else m.times[t]
                self.trades.append(TradeRecord(m.times[t], filled_at, fill))
        terminated = self._t >= self.end or nw_now <= 0
        truncated = (
            bool(self.max_episode_steps and self._steps >= self.max_episode_steps)
            and not terminated
        )
        info = {"net_worth": nw_now, "cost": cost, "filled": fill is not None, "t": self._t}
        return self._obs(), float(r), bool(terminated), truncated, info


# ---------------------------------------------------------------------------------------------
# The three envs
# ---------------------------------------------------------------------------------------------


class DiscreteTradingEnv(_SingleAssetEnv):
    """{sell, hold, buy} (index order = ACTIONS): buy spends `trade_fraction` of cash, sell sells
    `trade_fraction` of holdings. `current_state()` is the MarketState the LLM policy prompts on."""

    def __init__(
        self,
        prices: pd.DataFrame,
        *,
        trade_fraction: float = 1.0,
        state_closes: int = 32,
        state_features: pd.DataFrame | None = None,
        **kwargs: Any,
    ) -> None:
        """`state_features`: more features per bar for the policy's state (rows indexed like
        `prices`, NaN where unknown), e.g. the features service's, read point in time at each
        bar's cutoff (services/trainer/offline_features.py); they extend the price features."""
        super().__init__(prices, **kwargs)
        if self.execution.allow_short:
            raise ValueError(
                "DiscreteTradingEnv's MarketState has no short positions; allow_short must be False"
            )
        if not 0 < trade_fraction <= 1:
            raise ValueError(f"trade_fraction must be in (0, 1], got {trade_fraction}")
        if not 1 <= state_closes <= MAX_RECENT_PRICES:
            raise ValueError(f"state_closes must be in [1, {MAX_RECENT_PRICES}]")
        self.trade_fraction = trade_fraction
        self.state_closes = state_closes
        self.action_space = spaces.Discrete(len(ACTIONS))
        self._extra_features = _finite_rows(state_features, prices.index)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = int(action)
        if not 0 <= a < len(ACTIONS):
            raise ValueError(f"action {action!r} is not one of 0..{len(ACTIONS) - 1} ({ACTIONS})")
        price = float(self.market.fill_price[self._t])
        qty = acc.discrete_quantity(
            a, self.cash, self.position, price, self.trade_fraction, self.execution
        )
        return self._trade_and_advance(qty, a - 1)

    def step_action(self, name: str) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Step by action name ("sell", "hold", "buy")."""
        return self.step(ACTIONS.index(name))

    def current_state(self) -> MarketState:
        """The state at the current bar: closes up to t, the account, features, news of t."""
        m, t = self.market, self._t
        first = max(0, t - self.state_closes + 1)
        return MarketState(
            ticker=self.ticker,
            as_of=m.times[t].to_pydatetime(),
            recent_closes=[float(c) for c in m.close[first : t + 1]],
            position=max(self.position, 0.0),
            cash=max(self.cash, 0.0),
            features={
                "return_1": float(m.returns_window[t, -1]),
                f"return_{self.window}": float(m.returns_window[t].sum()),
                "volatility": float(m.volatility[t]),
                **(self._extra_features[t] if self._extra_features else {}),
            },
            news_summary=m.summaries[t][:2000],
            sentiment=float(m.sentiment[t]) if m.summaries[t] or m.sentiment[t] else None,
        )


def _finite_rows(frame: pd.DataFrame | None, index: pd.Index) -> list[dict[str, float]] | None:
    """`frame`'s rows aligned to `index`, each without its missing or non-finite values."""
    if frame is None:
        return None
    aligned = frame.reindex(index)
    return [
        {str(k): float(v) for k, v in row.items() if isinstance(v, int | float) and np.isfinite(v)}
        for row in aligned.to_dict("records")
    ]


class ContinuousTradingEnv(_SingleAssetEnv):
    """The News-driven RL seed's env: action (type in [0,2], amount in [0,0.5])."""

    def __init__(
        self, prices: pd.DataFrame, *, hold_tolerance: float = HOLD_TOLERANCE, **kwargs: Any
    ) -> None:
        super().__init__(prices, **kwargs)
        self.hold_tolerance = hold_tolerance
        self.action_space = spaces.Box(
            low=np.array([0.0, 0.0], dtype=np.float32),
            high=np.array([2.0, 0.5], dtype=np.float32),
            dtype=np.float32,
        )

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        kind = float(np.clip(action[0], 0.0, 2.0))
        amount = float(np.clip(action[1], 0.0, 0.5))
        price = float(self.market.fill_price[self._t])
        qty, direction = acc.continuous_quantity(
            kind, amount, self.cash, self.position, price, self.hold_tolerance
        )
        return self._trade_and_advance(qty, direction)


class PortfolioEnv(gym.Env):  # type: ignore[misc]
    """Target weights over N tickers plus cash (the last weight); rebalanced at the fill price,
    sells before buys, every trade through the accounting core."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        prices: dict[str, pd.DataFrame],
        *,
        sentiment: dict[str, pd.Series] | None = None,
        start: int | None = None,
        end: int | None = None,
        max_episode_steps: int | None = None,
        window: int = 10,
        execution: ExecutionConfig | None = None,
        reward_config: RewardConfig | None = None,
    ) -> None:
        super().__init__()
        if not prices:
            raise ValueError("PortfolioEnv needs at least one ticker")
        self.tickers = sorted(prices)
        self.execution = execution or ExecutionConfig()
        self.reward_config = reward_config or RewardConfig()
        common = prices[self.tickers[0]].index
        for name in self.tickers[1:]:
            common = common.intersection(prices[name].index)
        if len(common) < 2:
            raise ValueError(
                f"tickers {self.tickers} share {len(common)} bar times; need at least 2"
            )
        sentiment = sentiment or {}
        self.markets = [
            build_arrays(prices[name].loc[common], window, self.execution, sentiment.get(name))
            for name in self.tickers
        ]
        self.times = common
        self.start, self.end = _window_bounds(len(common), start, end)
        self.max_episode_steps = max_episode_steps
        n = len(self.tickers)
        self.closes = np.stack([m.close for m in self.markets], axis=1)
        self.fill_prices = np.stack([m.fill_price for m in self.markets], axis=1)
        self.features = np.concatenate(
            [
                np.stack([m.returns_window for m in self.markets], axis=1).reshape(len(common), -1),
                np.stack([m.volatility for m in self.markets], axis=1),
                np.stack([m.sentiment for m in self.markets], axis=1),
            ],
            axis=1,
        )
        self.action_space = spaces.Box(0.0, 1.0, shape=(n + 1,), dtype=np.float32)
        self.observation_space = spaces.Box(
            -np.inf, np.inf, shape=(self.features.shape[1] + n + 1,), dtype=np.float32
        )
        self._t = self.start
        self._steps = 0
        self.cash = self.execution.initial_cash
        self.positions = np.zeros(n)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = self.start
        self._steps = 0
        self.cash = self.execution.initial_cash
        self.positions = np.zeros(len(self.tickers))
        return self._obs(), {"net_worth": self.net_worth}

    @property
    def net_worth(self) -> float:
        return self.cash + float(self.positions @ self.closes[self._t])

    def weights(self, prices: np.ndarray) -> np.ndarray:
        values = self.positions * prices
        nw = self.cash + values.sum()
        if nw <= 0:
            return np.zeros(len(self.tickers) + 1)
        return np.append(values, self.cash) / nw

    def _obs(self) -> np.ndarray:
        t = self._t
        return np.concatenate([self.features[t], self.weights(self.closes[t])]).astype(np.float32)

    @staticmethod
    def normalise(action: np.ndarray) -> np.ndarray:
        w = np.clip(np.asarray(action, dtype=np.float64), 0.0, None)
        total = w.sum()
        if total <= 1e-12:
            out = np.zeros_like(w)
            out[-1] = 1.0  # all cash
            return out
        return w / total

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._t >= self.end:
            raise RuntimeError("episode is over; call reset()")
        t = self._t
        target = self.normalise(action)
        prices = self.fill_prices[t]
        nw_prev = self.net_worth
        before = self.weights(prices)
        nw_fill = self.cash + float(self.positions @ prices)
        delta = target[:-1] * nw_fill / prices - self.positions
        notional = cost = 0.0
        for i in [*np.flatnonzero(delta < 0), *np.flatnonzero(delta > 0)]:  # sells free cash first
            self.cash, pos, fill = acc.execute(
                self.cash,
                float(self.positions[i]),
                float(delta[i]),
                float(prices[i]),
                self.execution,
            )
            self.positions[i] = pos
            if fill:
                notional += fill.notional
                cost += fill.cost
        after = self.weights(prices)
        self._t = t + 1
        self._steps += 1
        nw_now = self.net_worth
        vol = float(np.mean([m.volatility[t] for m in self.markets]))
        alignment = float(
            np.sum([m.sentiment[t] for m in self.markets] * (after[:-1] - before[:-1]))
        )
        r = acc.reward(nw_prev, nw_now, notional, cost, alignment, vol, self.reward_config)
        terminated = self._t >= self.end or nw_now <= 0
        truncated = (
            bool(self.max_episode_steps and self._steps >= self.max_episode_steps)
            and not terminated
        )
        return (
            self._obs(),
            float(r),
            bool(terminated),
            truncated,
            {"net_worth": nw_now, "cost": cost},
        )


class TickerRotationEnv(gym.Env):  # type: ignore[misc]
    """Several tickers' DiscreteTradingEnvs as one: each episode trades one ticker, drawn at
    reset from the reset's seed, so one policy learns from all of them and a run resumed at an
    episode count draws the same tickers again. gymnasium has no wrapper that switches between
    envs per episode (its vector envs step all of them at once), hence this one."""

    def __init__(self, envs: list[DiscreteTradingEnv]) -> None:
        if not envs:
            raise ValueError("TickerRotationEnv needs at least one env")
        self.envs = envs
        self.active = envs[0]
        self.action_space = self.active.action_space
        self.observation_space = self.active.observation_space

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.active = self.envs[int(self.np_random.integers(len(self.envs)))]
        return self.active.reset(seed=seed, options=options)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return self.active.step(action)

    def current_state(self) -> MarketState:
        return self.active.current_state()

"""Run a policy over a price series through the discrete env, beside Buy & Hold on the same window.

The loop is the one a training rollout uses: `env.current_state()` -> policy -> `env.step`,
so a backtest trades by exactly the env's rules (fills, costs, limits).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from services.common.market_state import Decision
from services.market.accounting import ExecutionConfig
from services.market.baseline_policies import BuyAndHold, Policy
from services.market.envs import DiscreteTradingEnv, TradeRecord
from services.market.performance import compare_to_buy_and_hold


@dataclass
class Run:
    """One policy's trajectory over the window: equity[k] is net worth at times[k]'s close."""

    times: pd.DatetimeIndex
    equity: np.ndarray
    positions: np.ndarray
    trades: list[TradeRecord]
    decisions: list[Decision] = field(default_factory=list)

    @property
    def traded_notional(self) -> list[float]:
        return [t.fill.notional for t in self.trades]


@dataclass
class BacktestResult:
    strategy: Run
    buy_and_hold: Run
    closes: np.ndarray
    metrics: dict[str, Any]


def run_policy(
    env: DiscreteTradingEnv, policy: Policy, seed: int, progress: bool = False, label: str = ""
) -> Run:
    """Step `env` to the end with `policy`, one decision per bar (each sees only bars <= t)."""
    env.record = True
    env.reset(seed=seed)
    start = env.t
    positions = [env.position]
    decisions: list[Decision] = []
    done = False
    with tqdm(
        total=env.end - start,
        desc=label or getattr(policy, "name", "policy"),
        disable=not progress,
        unit="bar",
    ) as bar:
        while not done:
            decision = policy.decide([env.current_state()])[0]
            decisions.append(decision)
            _, _, terminated, truncated, _ = env.step(decision.action_index)
            positions.append(env.position)
            done = terminated or truncated
            bar.update(1)
    times = env.market.times[start : start + len(env.equity)]
    return Run(times, np.asarray(env.equity), np.asarray(positions), list(env.trades), decisions)


def run_backtest(
    prices: pd.DataFrame,
    policy: Policy,
    *,
    ticker: str = "ASSET",
    sentiment: pd.Series | None = None,
    summaries: pd.Series | None = None,
    state_features: pd.DataFrame | None = None,
    execution: ExecutionConfig | None = None,
    seed: int = 0,
    start: int | None = None,
    end: int | None = None,
    progress: bool = False,
) -> BacktestResult:
    """The policy and Buy & Hold on the same window, costs and fill rule; metrics of both."""
    execution = execution or ExecutionConfig()

    def make_env() -> DiscreteTradingEnv:
        return DiscreteTradingEnv(
            prices,
            ticker=ticker,
            sentiment=sentiment,
            summaries=summaries,
            state_features=state_features,
            start=start,
            end=end,
            execution=execution,
        )

    strategy = run_policy(make_env(), policy, seed, progress, "backtest")
    bench = run_policy(make_env(), BuyAndHold(), seed, False)
    ppy = float(prices.attrs.get("periods_per_year", 252.0))
    metrics = compare_to_buy_and_hold(
        strategy.equity, bench.equity, ppy, strategy.traded_notional, bench.traded_notional
    )
    closes = prices["close"].to_numpy()[prices.index.get_indexer(strategy.times)]
    return BacktestResult(strategy, bench, closes, metrics)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _finite(value: Any) -> Any:
    # JSON has no NaN; an undefined metric (e.g. Sharpe of a flat curve) is written as null.
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def write_metrics_json(result: BacktestResult, run_info: dict[str, Any], out_dir: Path) -> Path:
    """DIR/metrics.json = {"strategy", "buy_and_hold", "excess", "run"}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    versions = sorted({d.model_version for d in result.strategy.decisions})
    fallbacks = sum(1 for d in result.strategy.decisions if d.fallback_reason)
    body = {
        **result.metrics,
        "run": {**run_info, "model_versions": versions, "policy_fallbacks": fallbacks},
    }
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(_finite(body), indent=2, default=str))
    return path

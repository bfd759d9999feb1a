"""Held-out evaluation of a policy: the simulator's backtest beside Buy & Hold, plus prediction
accuracy (did the action match the realised next move), the policy's mean entropy, and its daily
returns for the gate's bootstrap."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from services.common.market_state import ACTIONS
from services.market.backtest import run_backtest
from services.market.performance import period_returns
from services.policy.folder_policy import FolderPolicy
from services.trainer.gate import HeldOutReturns
from services.trainer.offline_features import BarFeatures, state_inputs
from services.trainer.ppo import move_label

REPORTED = ("sharpe", "max_drawdown", "cumulative_return", "annual_volatility", "final_net_worth")


@dataclass
class Evaluation:
    policy: dict[str, float]
    buy_and_hold: dict[str, float]
    daily_returns: np.ndarray
    """The policy's return on each held-out bar: one per decision, end - start of them."""
    periods_per_year: float
    """Of the prices (their attrs), so the gate annualises as the metrics do."""


def held_out_returns(student: Evaluation, teacher: Evaluation) -> HeldOutReturns:
    """The gate's paired returns: student and teacher must have traded the same bars."""
    if student.periods_per_year != teacher.periods_per_year:
        raise ValueError("student and teacher were evaluated on differently sampled prices")
    return HeldOutReturns(student.daily_returns, teacher.daily_returns, student.periods_per_year)


def _entropy(probabilities: dict[str, float]) -> float:
    p = np.array([max(probabilities.get(a, 0.0), 0.0) for a in ACTIONS])
    if not np.all(np.isfinite(p)) or p.sum() <= 0:
        return math.nan
    p = p / p.sum()
    return float(-(p[p > 0] * np.log(p[p > 0])).sum())


def evaluate(
    model: Any,
    prices: pd.DataFrame,
    start: int,
    end: int,
    *,
    ticker: str,
    seed: int,
    flat: float = 0.0,
    features: BarFeatures | None = None,
) -> Evaluation:
    """Trade bars start..end (decisions on start..end-1 see bars <= their own only), with the
    live states' features when `features` are given (offline_features.py)."""
    result = run_backtest(
        prices,
        FolderPolicy(model, Path(getattr(model, "model_version", "model"))),
        ticker=ticker,
        seed=seed,
        start=start,
        end=end,
        **state_inputs(features),
    )
    metrics = result.metrics
    closes = prices["close"].to_numpy()
    decisions = result.strategy.decisions
    moves = [closes[start + i + 1] / closes[start + i] - 1.0 for i in range(len(decisions))]
    correct = [
        ACTIONS.index(d.action) == move_label(m, flat)
        for d, m in zip(decisions, moves, strict=True)
    ]
    counts = np.bincount([ACTIONS.index(d.action) for d in decisions], minlength=3) / max(
        len(decisions), 1
    )
    policy = {k: float(metrics["strategy"][k]) for k in REPORTED}
    policy["prediction_accuracy"] = float(np.mean(correct)) if correct else math.nan
    policy["policy_entropy"] = float(np.mean([_entropy(d.probabilities) for d in decisions]))
    policy["action_entropy"] = float(-(counts[counts > 0] * np.log(counts[counts > 0])).sum())
    for action, share in zip(ACTIONS, counts, strict=True):
        policy[f"share_{action}"] = float(share)
    bench = {k: float(metrics["buy_and_hold"][k]) for k in REPORTED}
    ppy = float(prices.attrs.get("periods_per_year", 252.0))  # as run_backtest reads it
    return Evaluation(policy, bench, period_returns(result.strategy.equity), ppy)

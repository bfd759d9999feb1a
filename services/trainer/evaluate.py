"""Held-out evaluation of a policy: the simulator's backtest beside Buy & Hold, plus prediction
accuracy (did the action match the realised next move), the policy's mean entropy, and its daily
returns for the gate's bootstrap."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from services.common.market_state import ACTIONS
from services.market.backtest import run_backtest
from services.market.performance import compute_metrics, period_returns
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
    buy_and_hold_returns: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Buy & Hold's return on the same bars, so folds can be pooled (pool_folds)."""
    start_worth: float = 10_000.0
    """Net worth before the first held-out bar (the env's starting cash)."""
    return_times: pd.Index | None = None
    """The bar each daily return was realised on (decision bar t's return lands at t + 1), so
    tickers traded over the same stretch can be pooled bar by bar (pool_tickers)."""


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


def _share_entropy(shares: np.ndarray) -> float:
    """Entropy (nats) of the actions' shares of the decisions: 0 for a policy with one action.
    (+ 0.0: a one-action policy gives numpy's -0.0 otherwise.)"""
    used = shares[shares > 0]
    return float(-(used * np.log(used)).sum()) + 0.0


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
    policy["action_entropy"] = _share_entropy(counts)
    for action, share in zip(ACTIONS, counts, strict=True):
        policy[f"share_{action}"] = float(share)
    bench = {k: float(metrics["buy_and_hold"][k]) for k in REPORTED}
    ppy = float(prices.attrs.get("periods_per_year", 252.0))  # as run_backtest reads it
    returns = period_returns(result.strategy.equity)
    return Evaluation(
        policy,
        bench,
        returns,
        ppy,
        buy_and_hold_returns=period_returns(result.buy_and_hold.equity),
        start_worth=float(result.strategy.equity[0]),
        return_times=prices.index[start + 1 : start + 1 + len(returns)],
    )


def pool_folds(folds: list[Evaluation]) -> Evaluation:
    """Walk-forward folds, each traded by its own student, as one held-out evaluation: the
    daily returns in time order (each fold starting from its own cash), the money metrics of
    the curve they compound to, and the decision metrics weighted by each fold's decisions.
    One fold is returned as it is."""
    if len(folds) == 1:
        return folds[0]
    ppy = folds[0].periods_per_year
    if any(f.periods_per_year != ppy for f in folds):
        raise ValueError("walk-forward folds were evaluated on differently sampled prices")
    returns = np.concatenate([f.daily_returns for f in folds])
    bench_returns = np.concatenate([f.buy_and_hold_returns for f in folds])
    times = [f.return_times for f in folds if f.return_times is not None]
    joined = times[0].append(times[1:]) if len(times) == len(folds) else None
    return _pooled(folds, returns, bench_returns, joined)


def pool_tickers(tickers: list[Evaluation]) -> Evaluation:
    """Several tickers, each traded by the same student over the same stretch of time, as one
    held-out evaluation: an equal-weight book of their accounts, so each bar's return is the
    mean of the returns the tickers realised on that bar (those that traded it). The bars stay
    in time order, and a bar's tickers stay together: the gate's bootstrap resamples bars, so
    the tickers' shared moves on a day count once, not once per ticker. Decision metrics are
    weighted by each ticker's decisions. One ticker is returned as it is."""
    if len(tickers) == 1:
        return tickers[0]
    if any(t.return_times is None for t in tickers):
        raise ValueError("pooling tickers needs each evaluation's return_times")
    if any(t.periods_per_year != tickers[0].periods_per_year for t in tickers):
        raise ValueError("the tickers were evaluated on differently sampled prices")

    def by_bar(values: list[np.ndarray]) -> pd.Series:
        columns = [pd.Series(v, index=t.return_times) for v, t in zip(values, tickers, strict=True)]
        return pd.concat(columns, axis=1).sort_index().mean(axis=1)

    returns = by_bar([t.daily_returns for t in tickers])
    bench_returns = by_bar([t.buy_and_hold_returns for t in tickers])
    return _pooled(tickers, returns.to_numpy(), bench_returns.to_numpy(), returns.index)


def _pooled(
    parts: list[Evaluation],
    returns: np.ndarray,
    bench_returns: np.ndarray,
    times: pd.Index | None,
) -> Evaluation:
    """An evaluation of pooled `returns`: the money metrics of the curve they compound to, the
    decision metrics of `parts` weighted by their decisions."""
    ppy, start_worth = parts[0].periods_per_year, parts[0].start_worth
    weights = np.array([len(p.daily_returns) for p in parts], dtype=float)
    policy = _money_metrics(returns, ppy, start_worth)
    for key in ("prediction_accuracy", "policy_entropy", *(f"share_{a}" for a in ACTIONS)):
        policy[key] = float(np.average([p.policy[key] for p in parts], weights=weights))
    shares = np.array([policy[f"share_{a}"] for a in ACTIONS])
    policy["action_entropy"] = _share_entropy(shares)
    bench = _money_metrics(bench_returns, ppy, start_worth)
    return Evaluation(policy, bench, returns, ppy, bench_returns, start_worth, times)


def _money_metrics(returns: np.ndarray, ppy: float, start_worth: float) -> dict[str, float]:
    equity = start_worth * np.concatenate([[1.0], np.cumprod(1.0 + returns)])
    metrics = compute_metrics(equity, ppy).to_dict()
    return {k: float(metrics[k]) for k in REPORTED}

"""Performance metrics of an equity curve, always reported beside Buy & Hold on the same window.

All values are fractions, not percent. Conventions follow empyrical (tests cross-check them):
period returns r_i = E_i / E_{i-1} - 1; annual volatility = std(r, ddof=1) * sqrt(P);
Sharpe (risk-free 0) = mean(r) / std(r, ddof=1) * sqrt(P); Sortino = mean(r) * P /
(sqrt(mean(min(r, 0)^2)) * sqrt(P)); annual return = (E_n / E_0)^(P / n) - 1 for n periods;
max drawdown is a positive fraction; Calmar = annual return / max drawdown; win rate = share of
periods with a positive return among periods with a non-zero return (quantstats' definition);
turnover = traded notional / mean net worth; P = periods per year of the data.
These few lines are written here rather than imported so the project controls the conventions
(empyrical-reloaded is kept as the test oracle, not a runtime dependency).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Metrics:
    """One strategy's metrics on one window."""

    cumulative_return: float
    annual_return: float
    annual_volatility: float
    sharpe: float
    sortino: float
    max_drawdown: float
    calmar: float
    win_rate: float
    turnover: float
    n_trades: int
    n_periods: int
    final_net_worth: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _curve(equity: Sequence[float] | np.ndarray) -> np.ndarray:
    curve = np.asarray(equity, dtype=np.float64)
    if curve.ndim != 1 or len(curve) < 2:
        raise ValueError("an equity curve needs at least 2 points")
    if not np.all(np.isfinite(curve)) or np.any(curve <= 0):
        raise ValueError("equity must be positive and finite at every point")
    return curve


def period_returns(equity: Sequence[float] | np.ndarray) -> np.ndarray:
    curve = _curve(equity)
    return curve[1:] / curve[:-1] - 1.0


def cumulative_return(equity: Sequence[float] | np.ndarray) -> float:
    curve = _curve(equity)
    return float(curve[-1] / curve[0] - 1.0)


def annual_return(equity: Sequence[float] | np.ndarray, periods_per_year: float) -> float:
    curve = _curve(equity)
    years = (len(curve) - 1) / periods_per_year
    return float((curve[-1] / curve[0]) ** (1.0 / years) - 1.0)


def annual_volatility(returns: np.ndarray, periods_per_year: float) -> float:
    if len(returns) < 2:
        return 0.0
    return float(np.std(returns, ddof=1) * math.sqrt(periods_per_year))


def sharpe(returns: np.ndarray, periods_per_year: float) -> float:
    """NaN when returns have no variation (Sharpe is undefined then, not zero or infinite)."""
    if len(returns) < 2:
        return float("nan")
    std = np.std(returns, ddof=1)
    if std == 0:
        return float("nan")
    return float(np.mean(returns) / std * math.sqrt(periods_per_year))


def sortino(returns: np.ndarray, periods_per_year: float) -> float:
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2))) * math.sqrt(
        periods_per_year
    )
    if downside == 0:
        return float("nan")
    return float(np.mean(returns) * periods_per_year / downside)


def drawdown_series(equity: Sequence[float] | np.ndarray) -> np.ndarray:
    """Drawdown at each point as a positive fraction below the running peak."""
    curve = _curve(equity)
    return 1.0 - curve / np.maximum.accumulate(curve)


def max_drawdown(equity: Sequence[float] | np.ndarray) -> float:
    return float(drawdown_series(equity).max())


def calmar(equity: Sequence[float] | np.ndarray, periods_per_year: float) -> float:
    mdd = max_drawdown(equity)
    return float("nan") if mdd == 0 else annual_return(equity, periods_per_year) / mdd


def win_rate(returns: np.ndarray) -> float:
    active = returns[returns != 0]
    return float("nan") if len(active) == 0 else float(np.mean(active > 0))


def turnover(traded_notional: Sequence[float], equity: Sequence[float] | np.ndarray) -> float:
    return float(np.sum(np.abs(traded_notional)) / np.mean(_curve(equity)))


def rolling_sharpe(
    equity: Sequence[float] | np.ndarray, periods_per_year: float, window: int
) -> np.ndarray:
    """Sharpe over the trailing `window` returns at each point (NaN until enough data)."""
    r = period_returns(equity)
    out = np.full(len(r), np.nan)
    if len(r) < window:
        return out
    views = np.lib.stride_tricks.sliding_window_view(r, window)
    std = views.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[window - 1 :] = np.where(
            std > 0, views.mean(axis=1) / std * math.sqrt(periods_per_year), np.nan
        )
    return out


def compute_metrics(
    equity: Sequence[float] | np.ndarray,
    periods_per_year: float,
    traded_notional: Sequence[float] = (),
) -> Metrics:
    """Every metric of one equity curve; `traded_notional` has one entry per fill."""
    curve = _curve(equity)
    r = period_returns(curve)
    return Metrics(
        cumulative_return=cumulative_return(curve),
        annual_return=annual_return(curve, periods_per_year),
        annual_volatility=annual_volatility(r, periods_per_year),
        sharpe=sharpe(r, periods_per_year),
        sortino=sortino(r, periods_per_year),
        max_drawdown=max_drawdown(curve),
        calmar=calmar(curve, periods_per_year),
        win_rate=win_rate(r),
        turnover=turnover(traded_notional, curve),
        n_trades=len(traded_notional),
        n_periods=len(r),
        final_net_worth=float(curve[-1]),
    )


def compare_to_buy_and_hold(
    equity: Sequence[float] | np.ndarray,
    buy_and_hold_equity: Sequence[float] | np.ndarray,
    periods_per_year: float,
    traded_notional: Sequence[float] = (),
    buy_and_hold_notional: Sequence[float] = (),
) -> dict[str, dict[str, float | int]]:
    """{"strategy": {...}, "buy_and_hold": {...}, "excess": {metric: strategy - B&H}}."""
    if len(equity) != len(buy_and_hold_equity):
        raise ValueError("strategy and Buy & Hold curves must cover the same window")
    strategy = compute_metrics(equity, periods_per_year, traded_notional).to_dict()
    bench = compute_metrics(buy_and_hold_equity, periods_per_year, buy_and_hold_notional).to_dict()
    excess = {
        k: float(strategy[k]) - float(bench[k])
        for k in ("cumulative_return", "annual_return", "sharpe", "max_drawdown")
    }
    return {"strategy": strategy, "buy_and_hold": bench, "excess": excess}

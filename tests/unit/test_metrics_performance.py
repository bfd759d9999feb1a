"""Metrics: Buy & Hold by hand, and every metric against empyrical-reloaded / quantstats."""

from __future__ import annotations

import math

import empyrical
import numpy as np
import pandas as pd
import pytest
import quantstats as qs
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.market import performance as perf
from services.market.accounting import ExecutionConfig
from services.market.backtest import run_backtest
from services.market.baseline_policies import BuyAndHold


def test_buy_and_hold_metrics_equal_a_hand_computation() -> None:
    # Closes 100, 110, 99, 121, 110 with opens equal to the previous close and no costs: B&H
    # buys at bar 1's open (100) and its net worth is 10,000 * close / 100 from then on.
    closes = [100.0, 110.0, 99.0, 121.0, 110.0]
    opens = [100.0, 100.0, 110.0, 99.0, 121.0]
    index = pd.date_range("2024-01-01", periods=5, freq="B", tz="UTC", name="time")
    frame = pd.DataFrame(
        {"open": opens, "high": closes, "low": closes, "close": closes, "volume": 1.0}, index=index
    )
    frame.attrs["periods_per_year"] = 252.0
    result = run_backtest(frame, BuyAndHold(), execution=ExecutionConfig(cost_bps=0), seed=0)
    m = result.metrics["buy_and_hold"]
    equity = [10_000, 11_000, 9_900, 12_100, 11_000]
    assert result.buy_and_hold.equity == pytest.approx(equity)
    r = [0.1, -0.1, 12_100 / 9_900 - 1, 11_000 / 12_100 - 1]
    mean = sum(r) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / 3)
    assert m["cumulative_return"] == pytest.approx(0.1)
    assert m["annual_volatility"] == pytest.approx(std * math.sqrt(252))
    assert m["sharpe"] == pytest.approx(mean / std * math.sqrt(252))
    assert m["max_drawdown"] == pytest.approx(0.1)  # 11,000 -> 9,900
    assert m["annual_return"] == pytest.approx(1.1 ** (252 / 4) - 1)
    assert m["calmar"] == pytest.approx(m["annual_return"] / 0.1)
    assert m["win_rate"] == pytest.approx(0.5)
    assert m["n_trades"] == 1 and m["turnover"] == pytest.approx(10_000 / np.mean(equity))
    # The strategy was B&H too, so both columns agree.
    assert result.metrics["strategy"] == m


# Real period returns are 0 or at least 1e-6 in size; subnormal floats only test float rounding.
returns_st = st.one_of(st.just(0.0), st.floats(1e-6, 0.2), st.floats(-0.2, -1e-6))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(returns_st, min_size=5, max_size=300),
    st.sampled_from([12.0, 52.0, 252.0, 1638.0]),
)
def test_metrics_equal_empyrical(returns: list[float], ppy: float) -> None:
    r = np.asarray(returns)
    if np.std(r) == 0 or not np.any(r < 0):
        assume(False)  # Sharpe/Sortino undefined: checked separately below
    equity = 1000 * np.cumprod(np.concatenate([[1.0], 1 + r]))
    m = perf.compute_metrics(equity, ppy)
    series = pd.Series(perf.period_returns(equity))
    assert m.cumulative_return == pytest.approx(
        empyrical.cum_returns_final(series), rel=1e-9, abs=1e-12
    )
    assert m.annual_return == pytest.approx(
        empyrical.annual_return(series, annualization=ppy), rel=1e-9, abs=1e-12
    )
    assert m.annual_volatility == pytest.approx(
        empyrical.annual_volatility(series, annualization=ppy), rel=1e-9
    )
    assert m.sharpe == pytest.approx(empyrical.sharpe_ratio(series, annualization=ppy), rel=1e-9)
    assert m.sortino == pytest.approx(empyrical.sortino_ratio(series, annualization=ppy), rel=1e-9)
    assert m.max_drawdown == pytest.approx(-empyrical.max_drawdown(series), rel=1e-9, abs=1e-12)
    if m.max_drawdown > 0:
        assert m.calmar == pytest.approx(
            empyrical.calmar_ratio(series, annualization=ppy), rel=1e-9
        )


def test_win_rate_equals_quantstats() -> None:
    r = pd.Series(
        np.random.default_rng(1).normal(0.0005, 0.01, 500),
        index=pd.date_range("2020-01-01", periods=500, freq="B"),
    )
    r.iloc[::7] = 0.0  # flat periods count neither way
    equity = 100 * np.cumprod(np.concatenate([[1.0], 1 + r.to_numpy()]))
    assert perf.win_rate(perf.period_returns(equity)) == pytest.approx(
        qs.stats.win_rate(r, prepare_returns=False)
    )


def test_undefined_ratios_are_nan_not_fake_numbers() -> None:
    flat = perf.compute_metrics([100.0, 100.0, 100.0], 252)
    assert math.isnan(flat.sharpe) and math.isnan(flat.sortino) and math.isnan(flat.calmar)
    assert flat.max_drawdown == 0 and flat.cumulative_return == 0
    with pytest.raises(ValueError, match="positive"):
        perf.compute_metrics([100.0, -5.0, 10.0], 252)


def test_compare_to_buy_and_hold_requires_the_same_window() -> None:
    out = perf.compare_to_buy_and_hold([1.0, 1.1, 1.2], [1.0, 1.0, 1.3], 252, [0.5])
    assert out["excess"]["cumulative_return"] == pytest.approx(0.2 - 0.3)
    with pytest.raises(ValueError, match="same window"):
        perf.compare_to_buy_and_hold([1.0, 1.1, 1.2], [1.0, 1.0], 252)


def test_rolling_sharpe_matches_a_direct_computation() -> None:
    equity = 100 * np.cumprod(1 + np.random.default_rng(3).normal(0.001, 0.01, 100))
    rolled = perf.rolling_sharpe(equity, 252, 20)
    r = perf.period_returns(equity)
    assert np.isnan(rolled[18]) and rolled[50] == pytest.approx(perf.sharpe(r[31:51], 252))

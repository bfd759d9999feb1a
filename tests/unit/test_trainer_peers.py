"""One student from several tickers: each peer is cut to the cycle's stretch of time (no
ticker's held-out bar is seen through another's training bars), the held-out returns pool as
an equal-weight book bar by bar, and PPO trades one ticker an episode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.market.envs import DiscreteTradingEnv, TickerRotationEnv
from services.trainer.evaluate import Evaluation, pool_tickers
from services.trainer.offline_features import BarFeatures
from services.trainer.peers import align_peer
from services.trainer.plan import CyclePlan


def _bars(start: str, days: int, growth: float = 1.001) -> pd.DataFrame:
    close = 100 * growth ** np.arange(days)
    index = pd.bdate_range(start, periods=days, tz="UTC", name="time")
    frame = pd.DataFrame(
        {"open": close, "high": close, "low": close, "close": close, "volume": 1e6}, index=index
    )
    frame.attrs["periods_per_year"] = 252.0
    return frame


def _plan(prices: pd.DataFrame) -> CyclePlan:
    return CyclePlan(
        prices=prices,
        train_start=10,
        train_end=59,
        last=79,
        teacher_dir=Path("teacher"),
        teacher=None,
        version="s1",
        out=Path("out"),
        work=Path("work"),
        bar_features=None,
        eval_start=61,
        ticker="SYN",
    )


def test_a_peer_trains_by_the_plans_cut_off_and_is_judged_after_its_held_out_start() -> None:
    plan = _plan(_bars("2024-01-01", 80))
    # ACME's bars start 7 days earlier and run 30 past SYN's last bar (shifted, not aligned)
    peer = align_peer(plan, "ACME", _bars("2023-12-21", 117), None)
    assert peer is not None and peer.ticker == "ACME" and peer.version == plan.version
    times = plan.times
    assert peer.times[peer.train_start] == times[plan.train_start]
    assert peer.times[peer.train_end] <= times[plan.train_end]
    assert peer.times[peer.eval_start] >= times[plan.eval_start]
    assert peer.times[peer.last] == times[plan.last]
    assert peer.prices.index.max() == times[plan.last], "a bar after the cycle's last was kept"
    assert not peer.peers and not peer.earlier_folds


def test_a_peer_with_too_few_bars_in_the_stretch_is_left_out() -> None:
    plan = _plan(_bars("2024-01-01", 80))
    assert align_peer(plan, "NEW", _bars("2024-01-01", 80).iloc[-25:], None) is None


def _evaluation(returns: list[float], times: pd.DatetimeIndex) -> Evaluation:
    policy = {"prediction_accuracy": 0.5, "policy_entropy": 1.0}
    policy |= {f"share_{a}": 1 / 3 for a in ("sell", "hold", "buy")}
    values = np.array(returns)
    return Evaluation(policy, {}, values, 252.0, values * 0, 10_000.0, times)


def test_tickers_pool_as_an_equal_weight_book_bar_by_bar() -> None:
    times = pd.bdate_range("2024-01-01", periods=4, tz="UTC")
    a = _evaluation([0.01, 0.02, -0.01, 0.0], times)
    b = _evaluation([0.03, 0.00, 0.01], times[1:])  # b starts a bar later
    pooled = pool_tickers([a, b])
    np.testing.assert_allclose(pooled.daily_returns, [0.01, 0.025, -0.005, 0.005])
    assert list(pooled.return_times) == list(times)
    assert pool_tickers([a]) is a


def test_pooling_needs_the_bars_each_return_was_realised_on() -> None:
    a = _evaluation([0.01], pd.bdate_range("2024-01-01", periods=1, tz="UTC"))
    bare = Evaluation(a.policy, {}, np.array([0.01]), 252.0)
    with pytest.raises(ValueError, match="return_times"):
        pool_tickers([a, bare])


def test_ppo_trades_one_ticker_an_episode_drawn_from_the_resets_seed() -> None:
    envs = [DiscreteTradingEnv(_bars("2024-01-01", 40), ticker=t, start=0, end=39) for t in "ABC"]
    rotation = TickerRotationEnv(envs)
    drawn = []
    for seed in range(30):
        rotation.reset(seed=seed)
        drawn.append(rotation.current_state().ticker)
    assert set(drawn) == {"A", "B", "C"}
    again = []
    for seed in range(30):
        rotation.reset(seed=seed)
        again.append(rotation.current_state().ticker)
    assert again == drawn, "the same seed must draw the same ticker (a resumed run)"


def test_a_peer_whose_features_start_later_counts_against_the_nominal_training_window() -> None:
    """An expanding window reaches back to the plan's first bar with news; a peer whose
    features only start 30 bars later still has a full training window's worth (20 bars)."""
    plan = _plan(_bars("2024-01-01", 80))
    plan = CyclePlan(**{**plan.__dict__, "train_start": 0})
    numeric = pd.DataFrame({"vol": [np.nan] * 30 + [1.0] * 50}, index=plan.times)
    late = BarFeatures(
        numeric=numeric,
        sentiment=pd.Series(np.nan, index=plan.times),
        summaries=pd.Series("", index=plan.times),
    )
    assert align_peer(plan, "LATE", plan.prices, late) is None  # 29 of 59 bars
    peer = align_peer(plan, "LATE", plan.prices, late, train_bars=20)
    assert peer is not None and peer.train_start == 30

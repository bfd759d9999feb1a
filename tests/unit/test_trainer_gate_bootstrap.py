"""The gate's statistics: a paired block bootstrap of the held-out days refuses an identical or a
lucky student and accepts a planted edge; the walk-forward split purges and embargoes; the
evaluation returns the daily returns the bootstrap resamples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.market_state import Decision, MarketState
from services.market.performance import sharpe
from services.market.walk_forward import folds, minimum_bars, split, walk_forward_folds
from services.trainer.gate import GateConfig, GateDecision, HeldOutReturns, decide

PPY = 252.0


def metrics(returns: np.ndarray) -> dict[str, float]:
    """Guard-passing held-out metrics whose Sharpe is the returns' own (as evaluate() reports)."""
    return {
        "sharpe": sharpe(returns, PPY),
        "max_drawdown": 0.05,
        "cumulative_return": float(np.prod(1 + returns) - 1),
        "policy_entropy": 0.9,
        "prediction_accuracy": 0.5,
    }


def gate(student: np.ndarray, teacher: np.ndarray, config: GateConfig) -> GateDecision:
    return decide(
        metrics(student),
        metrics(teacher),
        config,
        returns=HeldOutReturns(student, teacher, PPY),
    )


def noise(seed: int, bars: int = 80) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0003, 0.01, bars)


# ---------------------------------------------------------------------------------------------
# The bootstrap decision
# ---------------------------------------------------------------------------------------------


def test_refuses_a_student_identical_to_the_teacher() -> None:
    teacher = noise(1)
    verdict = gate(teacher.copy(), teacher, GateConfig())
    assert not verdict.promoted
    assert verdict.sharpe_diff == verdict.sharpe_diff_low == verdict.sharpe_diff_high == 0.0
    assert verdict.p_value == 1.0 and verdict.holdout_bars == 80


def test_pure_noise_edges_rarely_promote() -> None:
    # Independent noise with the same law: the point test alone promotes about half of the
    # students (18 of these 40); the interval's lower bound promotes few (4). Nominally 5% (one
    # tail of a 90% interval); the short-sample block bootstrap runs a little narrow, about 8%
    # over 800 draws of 60 bars, so the bound is 5 in 40. Fixed seeds: the count is exact.
    config = GateConfig(resamples=500)
    verdicts = [gate(noise(100 + s), noise(200 + s), config) for s in range(40)]
    point_wins = sum(v.sharpe_diff is not None and v.sharpe_diff > 0 for v in verdicts)
    promoted = sum(v.promoted for v in verdicts)
    assert point_wins >= 15, "the seeds no longer give lucky students; the test proves nothing"
    assert promoted <= 5, [v.reason for v in verdicts if v.promoted]
    for v in verdicts:
        assert v.sharpe_diff_low is not None and v.sharpe_diff_high is not None
        assert v.sharpe_diff_low < v.sharpe_diff < v.sharpe_diff_high  # type: ignore[operator]


def test_accepts_a_planted_edge() -> None:
    teacher = noise(3)
    rng = np.random.default_rng(4)
    student = teacher + 0.002 + rng.normal(0.0, 0.003, len(teacher))  # ~+3 Sharpe, own noise
    verdict = gate(student, teacher, GateConfig())
    assert verdict.promoted, verdict.reason
    assert verdict.sharpe_diff_low is not None and verdict.sharpe_diff_low > 0
    assert verdict.p_value is not None and verdict.p_value < 0.05
    assert verdict.sharpe_diff == pytest.approx(sharpe(student, PPY) - sharpe(teacher, PPY))
    assert verdict.confidence == 0.90 and "interval" in verdict.reason


def test_the_same_seed_gives_the_same_interval() -> None:
    student, teacher = noise(5), noise(6)
    config = GateConfig(resamples=500)
    a, b = gate(student, teacher, config), gate(student, teacher, config)
    c = gate(student, teacher, GateConfig(resamples=500, seed=1))
    assert (a.sharpe_diff_low, a.sharpe_diff_high) == (b.sharpe_diff_low, b.sharpe_diff_high)
    assert a.sharpe_diff_low != c.sharpe_diff_low


def test_refuses_fewer_than_the_minimum_held_out_bars() -> None:
    teacher = noise(3, bars=59)
    verdict = gate(teacher + 0.01, teacher, GateConfig(min_holdout_bars=60))
    assert not verdict.promoted and "59 held-out bars" in verdict.reason and "60" in verdict.reason
    assert verdict.sharpe_diff is None and verdict.holdout_bars == 59


def test_refuses_without_returns_instead_of_passing() -> None:
    better = {**metrics(noise(3)), "sharpe": 5.0}
    verdict = decide(better, metrics(noise(3)), GateConfig())
    assert not verdict.promoted and "no held-out daily returns" in verdict.reason


def test_guards_still_refuse_a_planted_edge_and_the_interval_is_reported() -> None:
    teacher = noise(3)
    student = teacher + 0.002
    verdict = decide(
        {**metrics(student), "policy_entropy": 0.001},
        metrics(teacher),
        GateConfig(),
        returns=HeldOutReturns(student, teacher, PPY),
    )
    assert not verdict.promoted and verdict.failed_guards == ["entropy"]
    assert verdict.sharpe_diff_low is not None and verdict.sharpe_diff_low > 0


def test_non_finite_returns_fail_the_nan_guard() -> None:
    student = noise(3)
    student[10] = math.nan
    verdict = gate(student, noise(4), GateConfig())
    assert not verdict.promoted and verdict.failed_guards == ["nan"]
    assert verdict.sharpe_diff is None


def test_unpaired_returns_are_an_error() -> None:
    with pytest.raises(ValueError, match="same held-out bars"):
        HeldOutReturns(noise(1, bars=60), noise(2, bars=61))


# ---------------------------------------------------------------------------------------------
# The walk-forward split
# ---------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    holdout=st.integers(1, 90),
    embargo=st.integers(0, 10),
    min_train=st.integers(1, 50),
    horizon=st.integers(1, 3),
    spare=st.integers(0, 100),
    max_train=st.one_of(st.none(), st.integers(50, 120)),
)
def test_split_is_ordered_purged_and_embargoed(
    holdout: int, embargo: int, min_train: int, horizon: int, spare: int, max_train: int | None
) -> None:
    n_bars = minimum_bars(holdout, embargo, min_train, horizon) + spare
    s = split(n_bars, holdout, embargo, min_train, max_train=max_train, horizon=horizon)
    # Ordered and disjoint: train | purge | embargo | holdout, then the last outcome bar.
    assert s.train.stop == s.purge.start and s.purge.stop == s.embargo.start
    assert s.embargo.stop == s.holdout.start and s.holdout.stop + horizon == n_bars
    assert (len(s.purge), len(s.embargo), len(s.holdout)) == (horizon, embargo, holdout)
    assert min_train <= len(s.train) <= (max_train or n_bars) and s.train.start >= 0
    # No training outcome lands in the embargo or the held-out block (nor anything after it).
    assert s.train[-1] + horizon < s.embargo.start <= s.holdout.start
    assert s.train[-1] + horizon + embargo < s.holdout.start


def test_split_of_a_live_cycle_ends_at_the_last_bar() -> None:
    s = split(300, holdout=60, embargo=5, min_train=100)
    assert s.holdout == range(239, 299)  # decisions 239..298, the last scored on bar 299
    assert s.embargo == range(234, 239) and s.purge == range(233, 234)
    assert s.train == range(0, 233)


def test_too_few_bars_names_the_minimum() -> None:
    needed = minimum_bars(holdout=60, embargo=5, min_train=100)
    assert needed == 167
    split(needed, 60, 5, 100)
    with pytest.raises(ValueError, match=r"at least 167 bars.*have 166"):
        split(needed - 1, 60, 5, 100)


def test_folds_cover_the_holdout_block_in_order() -> None:
    pieces = folds(range(239, 299), 4)
    assert [len(p) for p in pieces] == [15, 15, 15, 15]
    assert [b for p in pieces for b in p] == list(range(239, 299))
    assert [len(p) for p in folds(range(0, 10), 3)] == [4, 3, 3]


@settings(max_examples=100, deadline=None)
@given(
    holdout=st.integers(2, 90),
    n_folds=st.integers(1, 6),
    embargo=st.integers(0, 5),
    min_train=st.integers(1, 40),
    spare=st.integers(0, 60),
)
def test_walk_forward_folds_hold_out_every_bar_once_each_out_of_sample(
    holdout: int, n_folds: int, embargo: int, min_train: int, spare: int
) -> None:
    n_folds = min(n_folds, holdout)
    n_bars = minimum_bars(holdout, embargo, min_train) + spare
    splits = walk_forward_folds(n_bars, holdout, embargo, min_train, n_folds)
    # Together the folds hold out exactly the one-block split's bars, in order...
    held = [bar for s in splits for bar in s.holdout]
    assert held == list(split(n_bars, holdout, embargo, min_train).holdout)
    assert splits[-1] == split(n_bars, len(splits[-1].holdout), embargo, min_train)
    for s in splits:
        # ...and each fold's student learnt only from outcomes known before its embargo.
        assert s.train[-1] + 1 < s.embargo.start <= s.holdout.start
        assert s.train[-1] + 1 + embargo < s.holdout.start
        assert len(s.train) >= min_train
    # Later folds train on more: an expanding walk-forward.
    assert [s.train.stop for s in splits] == sorted(s.train.stop for s in splits)


def test_walk_forward_folds_of_a_demo_warm_up() -> None:
    # 300 bars, 200 held out in 4 folds, embargo 2: the first fold's student learns from the
    # 95 bars before it, the last fold's from 245; the gate sees 200 out-of-sample decisions.
    splits = walk_forward_folds(300, 200, 2, 40, 4)
    assert [s.holdout for s in splits] == [range(99 + 50 * k, 149 + 50 * k) for k in range(4)]
    assert [len(s.train) for s in splits] == [96, 146, 196, 246]
    with pytest.raises(ValueError, match=r"at least 244 bars"):
        walk_forward_folds(243, 200, 2, 40, 4)


# ---------------------------------------------------------------------------------------------
# The evaluation hands the gate its daily returns
# ---------------------------------------------------------------------------------------------


class AlwaysBuy:
    model_version = "always-buy"

    def decide(self, states: list[MarketState]) -> list[Decision]:
        return [
            Decision(
                action="buy",
                probabilities={"buy": 0.6, "hold": 0.2, "sell": 0.2},
                model_version=self.model_version,
            )
            for _ in states
        ]


def test_evaluation_returns_one_daily_return_per_held_out_decision() -> None:
    from services.market.regime_market import generate_market, load_params
    from services.trainer.evaluate import evaluate, held_out_returns

    prices, _ = generate_market(load_params("default"), 120, seed=4)
    s = split(len(prices), holdout=60, embargo=5, min_train=20)
    result = evaluate(AlwaysBuy(), prices, s.holdout.start, s.holdout.stop, ticker="X", seed=0)
    assert result.daily_returns.shape == (60,)
    assert result.periods_per_year == prices.attrs["periods_per_year"]
    assert sharpe(result.daily_returns, result.periods_per_year) == pytest.approx(
        result.policy["sharpe"]
    )
    paired = held_out_returns(result, result)
    assert paired.bars == 60 and paired.periods_per_year == result.periods_per_year


def test_pooled_folds_carry_every_daily_return_and_their_metrics() -> None:
    from services.market.performance import max_drawdown
    from services.market.regime_market import generate_market, load_params
    from services.trainer.evaluate import evaluate, pool_folds

    prices, _ = generate_market(load_params("default"), 160, seed=4)
    splits = walk_forward_folds(len(prices), 90, 2, 20, 3)
    parts = [
        evaluate(AlwaysBuy(), prices, s.holdout.start, s.holdout.stop, ticker="X", seed=0)
        for s in splits
    ]
    pooled = pool_folds(parts)
    assert pooled.daily_returns.shape == (90,)
    assert np.array_equal(pooled.daily_returns, np.concatenate([p.daily_returns for p in parts]))
    ppy = pooled.periods_per_year
    assert pooled.policy["sharpe"] == pytest.approx(sharpe(pooled.daily_returns, ppy))
    assert pooled.buy_and_hold["sharpe"] == pytest.approx(
        sharpe(np.concatenate([p.buy_and_hold_returns for p in parts]), ppy)
    )
    equity = np.cumprod(np.concatenate([[1.0], 1 + pooled.daily_returns]))
    assert pooled.policy["cumulative_return"] == pytest.approx(equity[-1] - 1)
    assert pooled.policy["max_drawdown"] == pytest.approx(max_drawdown(equity))
    # An always-buy policy: every fold buys on every decision, so the pooled shares say so too.
    assert pooled.policy["share_buy"] == pytest.approx(1.0)
    assert pooled.policy["action_entropy"] == pytest.approx(0.0)
    assert pool_folds(parts[:1]) is parts[0]

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
from services.trainer.gate import (
    BLOCK_LENGTH_BOUNDS,
    GateConfig,
    GateDecision,
    HeldOutReturns,
    data_block_length,
    decide,
    decide_with_shadow,
    sharpe_difference,
    stationary_indices,
)

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
    verdict = gate(teacher.copy(), teacher, GateConfig(benchmark="teacher"))
    assert not verdict.promoted
    assert verdict.sharpe_diff == verdict.sharpe_diff_low == verdict.sharpe_diff_high == 0.0
    assert verdict.p_value == 1.0 and verdict.holdout_bars == 80
    # Against the better of teacher and cash the copy can only lose: where the teacher's
    # (resampled) Sharpe is below 0 the benchmark is cash's 0 and the copy falls short of it.
    verdict = gate(teacher.copy(), teacher, GateConfig())
    assert not verdict.promoted and verdict.p_value == 1.0
    assert verdict.sharpe_diff_high == 0.0 and verdict.sharpe_diff_low < 0.0  # type: ignore[operator]


def test_pure_noise_edges_rarely_promote() -> None:
    # Independent noise with the same law: the point test alone promotes about half of the
    # students (16 of these 40 beat the better of teacher and cash); the interval's lower bound
    # promotes 1 (5% one-sided, and the student's own Sharpe must clear 0 too). Against the
    # teacher alone it promoted 4: the short-sample bootstrap runs narrow
    # (bench/gate_calibration.py). Fixed seeds: the counts are exact.
    config = GateConfig(resamples=500)
    verdicts = [gate(noise(100 + s), noise(200 + s), config) for s in range(40)]
    point_wins = sum(v.sharpe_diff is not None and v.sharpe_diff > 0 for v in verdicts)
    promoted = sum(v.promoted for v in verdicts)
    assert point_wins >= 15, "the seeds no longer give lucky students; the test proves nothing"
    assert promoted <= 2, [v.reason for v in verdicts if v.promoted]
    for v in verdicts:
        assert v.sharpe_diff_low is not None and v.sharpe_diff_high is not None
        assert v.sharpe_diff_low < v.sharpe_diff < v.sharpe_diff_high  # type: ignore[operator]


def test_accepts_a_planted_edge() -> None:
    teacher = noise(3)
    rng = np.random.default_rng(4)
    student = teacher + 0.004 + rng.normal(0.0, 0.003, len(teacher))  # ~+6 Sharpe, own noise
    verdict = gate(student, teacher, GateConfig())
    assert verdict.promoted, verdict.reason
    assert verdict.sharpe_diff_low is not None and verdict.sharpe_diff_low > 0
    assert verdict.p_value is not None and verdict.p_value < 0.05
    # The teacher lost money on these days: the benchmark is cash, the student's own Sharpe.
    assert sharpe(teacher, PPY) < 0
    assert verdict.sharpe_diff == pytest.approx(sharpe(student, PPY))
    assert verdict.confidence == GateConfig().confidence and "interval" in verdict.reason


def test_beating_a_losing_teacher_is_not_enough_without_beating_cash() -> None:
    # A paired edge of 0.2% a day over a teacher that lost money: clear against the teacher
    # alone, but the student's own Sharpe over 80 days could be luck, and cash is free.
    teacher = noise(3)
    rng = np.random.default_rng(4)
    student = teacher + 0.002 + rng.normal(0.0, 0.003, len(teacher))
    assert gate(student, teacher, GateConfig(benchmark="teacher")).promoted
    verdict = gate(student, teacher, GateConfig())
    assert not verdict.promoted and "could be luck" in verdict.reason
    assert verdict.sharpe_diff == pytest.approx(sharpe(student, PPY))  # against cash's 0


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
    student = teacher + 0.004
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
# The block length and the segment-wise bootstrap
# ---------------------------------------------------------------------------------------------


def ar1(seed: int, phi: float, bars: int = 250) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(bars)
    for t in range(1, bars):
        out[t] = phi * out[t - 1] + rng.normal(0.0, 0.01)
    return out


def test_block_length_from_the_data_follows_the_dependence_and_is_clipped() -> None:
    # AR(1) returns: none, moderate and strong persistence (the estimate is noisy on one
    # draw, so these are fixed seeds, not a law).
    low, high = BLOCK_LENGTH_BOUNDS
    iid, moderate, persistent = (
        HeldOutReturns(ar1(0, phi), ar1(10, phi)) for phi in (0.0, 0.5, 0.9)
    )
    assert data_block_length([iid]) == low  # no dependence: the floor
    assert low < data_block_length([moderate]) < high
    assert data_block_length([persistent]) == high  # strong dependence: the ceiling
    assert sharpe_difference(persistent, GateConfig(resamples=200)).block_length == high
    fixed = GateConfig(resamples=200, block_length=3)
    assert sharpe_difference(persistent, fixed).block_length == 3


def test_stationary_indices_stay_within_each_segment_and_keep_blocks() -> None:
    index = stationary_indices([60, 20], 5.0, 4000, np.random.default_rng(0))
    assert index.shape == (4000, 80)
    assert index[:, :60].min() == 0 and index[:, :60].max() == 59
    assert index[:, 60:].min() == 60 and index[:, 60:].max() == 79
    # Inside a segment a block continues to the next bar (wrapping at its own end) except where
    # a new block starts, with probability 1 / 5 a bar.
    back = index[:, :60]
    continues = back[:, 1:] == (back[:, :-1] + 1) % 60
    assert 0.79 < continues.mean() < 0.82
    shadow = index[:, 60:] - 60
    wraps = shadow[:, 1:] == (shadow[:, :-1] + 1) % 20
    assert 0.79 < wraps.mean() < 0.82


# ---------------------------------------------------------------------------------------------
# Pooled evidence: the backtest's held-out bars and the shadow account's
# ---------------------------------------------------------------------------------------------


def paired(seed: int, bars: int, edge: float, drift: float = 0.0005) -> HeldOutReturns:
    """A teacher earning `drift` a day and a student earning `edge` more, with its own noise."""
    rng = np.random.default_rng(seed)
    teacher = rng.normal(drift, 0.01, bars)
    return HeldOutReturns(teacher + edge + rng.normal(0.0, 0.004, bars), teacher, PPY)


def test_a_strongly_better_shadow_passes_and_reports_its_own_test() -> None:
    backtest, shadow = paired(1, 60, 0.003), paired(2, 40, 0.006)
    verdict = decide_with_shadow(backtest, shadow, GateConfig())
    assert verdict.promoted, verdict.reason
    assert verdict.holdout_bars == 100 and "shadow stretch agrees" in verdict.reason
    assert verdict.shadow is not None and verdict.shadow.bars == 40
    assert verdict.shadow.point == pytest.approx(
        sharpe(shadow.student, PPY) - sharpe(shadow.teacher, PPY)
    )
    pooled_student = np.concatenate([backtest.student, shadow.student])
    pooled_teacher = np.concatenate([backtest.teacher, shadow.teacher])
    assert verdict.sharpe_diff == pytest.approx(
        sharpe(pooled_student, PPY) - max(sharpe(pooled_teacher, PPY), 0.0)
    )


def test_no_skill_shadow_evidence_is_refused_at_the_calibrated_rate() -> None:
    # Student and teacher with the same law on 60 backtest and 20 shadow bars: 14 of these 40
    # beat the benchmark on the point, the calibrated gate promotes none (at most 2, 5%, may);
    # against the teacher alone the same decision promoted 3.
    config = GateConfig(resamples=500)
    verdicts = [
        decide_with_shadow(paired(100 + s, 60, 0.0), paired(200 + s, 20, 0.0), config)
        for s in range(40)
    ]
    point_wins = sum(v.sharpe_diff is not None and v.sharpe_diff > 0 for v in verdicts)
    assert point_wins >= 12, "the seeds no longer give lucky students; the test proves nothing"
    assert sum(v.promoted for v in verdicts) <= 2, [v.reason for v in verdicts if v.promoted]


def test_a_shadow_that_disagrees_refuses_a_backtest_that_alone_would_pass() -> None:
    backtest, shadow = paired(1, 60, 0.006), paired(2, 20, -0.002)
    assert sharpe_difference(backtest, GateConfig()).low > 0
    verdict = decide_with_shadow(backtest, shadow, GateConfig())
    assert verdict.sharpe_diff_low is not None and verdict.sharpe_diff_low > 0  # pooled passes
    assert verdict.shadow is not None and verdict.shadow.point < 0
    assert not verdict.promoted and "does not agree" in verdict.reason


def test_the_segments_are_resampled_apart() -> None:
    # The shadow's student copies its teacher: every resample of the shadow alone has the same
    # days for both, so its own interval is exactly 0. A bootstrap that joined the backtest's
    # bars (where the student differs) into the shadow's resamples would widen it.
    backtest = paired(1, 60, 0.004)
    teacher = np.random.default_rng(3).normal(0.0005, 0.01, 20)
    shadow = HeldOutReturns(teacher.copy(), teacher, PPY)
    verdict = decide_with_shadow(backtest, shadow, GateConfig(benchmark="teacher"))
    assert verdict.shadow is not None
    assert verdict.shadow.point == verdict.shadow.low == verdict.shadow.high == 0.0
    assert verdict.sharpe_diff_low != verdict.sharpe_diff_high  # the pooled one is not
    assert not verdict.promoted and "does not agree" in verdict.reason


def test_the_pooled_gate_refuses_short_shadows_guards_and_non_finite_returns() -> None:
    backtest, shadow = paired(1, 60, 0.006), paired(2, 40, 0.006)
    assert decide_with_shadow(backtest, shadow, GateConfig()).promoted
    short = decide_with_shadow(backtest, paired(2, 19, 0.006), GateConfig())
    assert not short.promoted and "19 shadow bars" in short.reason and short.sharpe_diff is None
    guarded = decide_with_shadow(backtest, shadow, GateConfig(), failed_guards=["entropy"])
    assert not guarded.promoted and guarded.failed_guards == ["entropy"]
    student = shadow.student.copy()
    student[3] = math.nan
    broken = decide_with_shadow(backtest, HeldOutReturns(student, shadow.teacher), GateConfig())
    assert not broken.promoted and broken.failed_guards == ["nan"]
    with pytest.raises(ValueError, match="sampled differently"):
        decide_with_shadow(
            backtest, HeldOutReturns(shadow.student, shadow.teacher, 52.0), GateConfig()
        )


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


# ---------------------------------------------------------------------------------------------
# The calibration bench trades as the env does
# ---------------------------------------------------------------------------------------------


def test_the_calibration_bench_accounts_as_the_discrete_env_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bench/gate_calibration.py computes its students' returns in numpy, without the env: they
    must be the env's (next-open fills, 10 bp, all in or all out), or its rates are another
    market's."""
    import importlib.util
    import sys
    from pathlib import Path

    from services.market.envs import DiscreteTradingEnv

    path = Path(__file__).resolve().parents[2] / "bench" / "gate_calibration.py"
    spec = importlib.util.spec_from_file_location("gate_calibration", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look themselves up
    spec.loader.exec_module(bench)

    frame, _ = bench.generate_market(bench.pinned("bear"), 80, 3)
    positions = bench.random_timing(60, np.random.default_rng(0))
    assert 0 < positions.sum() < 60 and np.any(np.diff(positions) != 0)
    env = DiscreteTradingEnv(frame, start=5, end=65)
    env.reset()
    worth = [env.net_worth]
    for long in positions:
        worth.append(env.step_action("buy" if long else "sell")[4]["net_worth"])
    expected = np.diff(worth) / np.array(worth[:-1])
    mine = bench.account_returns(positions, frame["open"].to_numpy(), frame["close"].to_numpy(), 5)
    np.testing.assert_allclose(mine, expected, rtol=0, atol=1e-12)

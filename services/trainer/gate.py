"""The promotion gate: the student must pass every guard, beat the benchmark (the better of the
teacher and cash) by a margin, and beat it by more than luck: a paired stationary bootstrap of
the held-out days must put the whole interval of the Sharpe difference above 0.

The defaults are calibrated against no-skill students (random long/flat timing against an
always-long teacher in bull, flat and bear markets): bench/gate_calibration.py, docs/gate.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from arch.bootstrap import optimal_block_length

from services.market.performance import sharpe

BLOCK_LENGTH_BOUNDS = (2.0, 10.0)
"""Clip of the data-driven mean block length: below 2 the bootstrap is the iid one and ignores
any dependence the short sample hid from the estimator; above 10 a 60-bar sample has only ~6
blocks and the interval becomes erratic (docs/gate.md, "Block length")."""


@dataclass(frozen=True)
class GateConfig:
    metric: str = "sharpe"
    """Held-out metric the student must beat the benchmark on."""
    margin: float = 0.0
    """Required improvement: student > benchmark + margin (the point test)."""
    max_drawdown_worsening: float = 0.05
    """Guard: student max drawdown may exceed the teacher's by at most this (fraction)."""
    entropy_floor: float = 0.05
    """Guard: mean policy entropy (nats) over held-out decisions; below it the policy collapsed."""

    # The bootstrap test on the held-out daily returns (a lucky month must not promote)
    benchmark: Literal["teacher", "teacher_or_cash"] = "teacher_or_cash"
    """What the student must beat. teacher_or_cash: the better of the teacher and staying in
    cash (Sharpe 0; the point test takes the larger). Against a teacher that loses money (an
    always-long teacher in a bear market) a student that merely holds less of the market, at
    random, has a Sharpe nearer 0 and "beats" it without any skill; cash is a benchmark any
    student can match for free, so beating a losing teacher alone is not evidence of skill.
    The bootstrap then tests both legs, each at the one-sided level (an intersection-union
    test, _summary): the student's own Sharpe must be above 0 by more than luck too."""
    confidence: float = 0.90
    """Two-sided level of the reported interval of the Sharpe difference; the gate promotes
    only when its lower bound is above 0, a one-sided test at (1 - confidence) / 2 (0.05).
    Calibrated by bench/gate_calibration.py (docs/gate.md): with the cash leg, 0.90 keeps
    random-timing students under 1.5% in bull, flat and bear markets at 60, 250 and 60+20/40
    bars; against the teacher alone it let 8% through in a bear market and needed 0.98."""
    resamples: int = 2000
    """Bootstrap resamples of the held-out days."""
    block_length: float | None = None
    """Mean block length (bars) of the stationary bootstrap. None: from the held-out returns
    themselves (arch's optimal_block_length, Politis-White), clipped to BLOCK_LENGTH_BOUNDS."""
    seed: int = 0
    """Seed of the bootstrap, so a decision can be reproduced."""
    min_holdout_bars: int = 60
    """Fewer held-out daily returns than this and the gate refuses: too short to tell luck."""
    min_shadow_bars: int = 20
    """decide_with_shadow: fewer shadow bars than this and it refuses (the fresh evidence is
    what makes pooling safe; a few bars of it say nothing)."""
    bootstrap: bool = True
    """Off, the margin test decides alone (the interval is still computed and reported): for a
    test of the promotion path, never for a loop that trades."""


@dataclass(frozen=True)
class HeldOutReturns:
    """Student's and teacher's daily returns on the same held-out bars, paired by position."""

    student: np.ndarray
    teacher: np.ndarray
    periods_per_year: float = 252.0
    """Annualises the Sharpe difference as services/market/performance.py does."""

    def __post_init__(self) -> None:
        if np.ndim(self.student) != 1 or np.shape(self.student) != np.shape(self.teacher):
            raise ValueError(
                "student and teacher returns must be 1-D and cover the same held-out bars, got "
                f"shapes {np.shape(self.student)} and {np.shape(self.teacher)}"
            )

    @property
    def bars(self) -> int:
        return len(self.student)

    def finite(self) -> bool:
        return bool(np.all(np.isfinite(self.student)) and np.all(np.isfinite(self.teacher)))


@dataclass(frozen=True)
class SharpeDifference:
    """Sharpe(student) - Sharpe(benchmark) on the held-out days, with its bootstrap interval."""

    point: float
    low: float
    high: float
    p_value: float
    """One-sided: the share of resamples whose difference is <= 0."""
    bars: int
    confidence: float
    block_length: float = 0.0
    """The stationary bootstrap's mean block length this interval used."""


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reason: str
    failed_guards: list[str] = field(default_factory=list)
    # The bootstrap test, published with models.promotions.v1; None when it was not run.
    sharpe_diff: float | None = None
    sharpe_diff_low: float | None = None
    sharpe_diff_high: float | None = None
    p_value: float | None = None
    confidence: float | None = None
    holdout_bars: int = 0
    shadow: SharpeDifference | None = None
    """decide_with_shadow: the shadow stretch's own test (the pooled one is above)."""


def comparable(value: float) -> float:
    """Sharpe is NaN for a flat equity curve (never traded): count that as 0 when comparing."""
    return 0.0 if math.isnan(value) else value


def benchmark_value(teacher: float, config: GateConfig) -> float:
    """The value the student must beat: the teacher's, or cash's 0 when that is better (cash
    has a Sharpe, return and any return ratio of 0)."""
    teacher = comparable(teacher)
    return max(teacher, 0.0) if config.benchmark == "teacher_or_cash" else teacher


# ---------------------------------------------------------------------------------------------
# The paired stationary bootstrap, segment by segment
# ---------------------------------------------------------------------------------------------


def data_block_length(segments: Sequence[HeldOutReturns]) -> float:
    """Politis-White's optimal mean block length of the stationary bootstrap (arch), the longest
    over the student's and teacher's returns and their squares (a Sharpe ratio's error depends
    on the volatility's persistence as much as on the returns'), clipped to
    BLOCK_LENGTH_BOUNDS. Estimated on the segments end to end: one seam moves it little."""
    student = np.concatenate([s.student for s in segments])
    teacher = np.concatenate([s.teacher for s in segments])
    columns = np.column_stack([student, teacher, student**2, teacher**2])
    columns = columns[:, np.std(columns, axis=0) > 0]  # cash (all 0) has no dependence to see
    if columns.shape[1] == 0 or len(student) < 8:
        return BLOCK_LENGTH_BOUNDS[0]
    with np.errstate(divide="ignore", invalid="ignore"):  # a short column's zero variance
        estimate = float(np.nanmax(optimal_block_length(columns)["stationary"].to_numpy()))
    low, high = BLOCK_LENGTH_BOUNDS
    return float(np.clip(estimate, low, high)) if math.isfinite(estimate) else low


def stationary_indices(
    lengths: Sequence[int], block_length: float, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """(resamples, sum(lengths)) positions into the segments laid end to end. Each segment's
    columns are a stationary bootstrap (Politis and Romano) of that segment alone: blocks of
    geometric length (mean `block_length`) wrap around within it, never across a seam, so
    bars far apart in time (a backtest and a later shadow stretch) are never joined."""
    parts, offset = [], 0
    for n in lengths:
        new_block = rng.random((resamples, n)) < 1.0 / block_length
        new_block[:, 0] = True
        starts = rng.integers(0, n, size=(resamples, n))
        steps = np.arange(n)
        # The bar each position's block began at, and the start that block drew there.
        began = np.maximum.accumulate(np.where(new_block, steps, 0), axis=1)
        first = np.take_along_axis(starts, began, axis=1)
        parts.append(offset + (first + steps - began) % n)
        offset += n
    return np.concatenate(parts, axis=1)


def _row_sharpes(returns: np.ndarray, periods_per_year: float) -> np.ndarray:
    """performance.sharpe of each row, with comparable's 0 where it is undefined."""
    std = returns.std(axis=1, ddof=1)
    mean = returns.mean(axis=1)
    safe = np.where(std > 0, std, 1.0)
    return np.where(std > 0, mean / safe * math.sqrt(periods_per_year), 0.0)


def _difference(student: float, teacher: float, config: GateConfig) -> float:
    return comparable(student) - benchmark_value(teacher, config)


def _summary(
    point: float, legs: Sequence[np.ndarray], bars: int, config: GateConfig, block: float
) -> SharpeDifference:
    """The interval of the smallest of the legs' differences (student - teacher, student -
    cash): each leg's percentile bounds, the smallest of each. The test is the intersection-
    union test of "no better than the teacher or no better than cash": the lower bound is above
    0 only when every leg's is, each a one-sided test at (1 - confidence) / 2, and that is the
    test's level without a correction for the two legs (Berger 1982)."""
    tail = (1.0 - config.confidence) / 2.0
    bounds = np.array([np.quantile(diffs, [tail, 1.0 - tail]) for diffs in legs])
    low, high = bounds.min(axis=0)
    return SharpeDifference(
        point=point,
        low=float(low),
        high=float(high),
        p_value=max(float(np.mean(diffs <= 0.0)) for diffs in legs),
        bars=bars,
        confidence=config.confidence,
        block_length=block,
    )


def segmented_difference(
    segments: Sequence[HeldOutReturns], config: GateConfig
) -> tuple[SharpeDifference, list[SharpeDifference]]:
    """The Sharpe difference (student - benchmark) of the segments pooled end to end, and of
    each segment alone, with percentile intervals from one paired stationary bootstrap that
    resamples within each segment: the same days for student and teacher, so the days'
    autocorrelation and the pair's correlation are both kept. Each segment's own interval
    reads its columns of the same resamples."""
    ppy = segments[0].periods_per_year
    if any(s.periods_per_year != ppy for s in segments):
        raise ValueError("segments are sampled differently: their Sharpes do not pool")
    block = config.block_length or data_block_length(segments)
    lengths = [s.bars for s in segments]
    rng = np.random.default_rng(config.seed)
    index = stationary_indices(lengths, block, config.resamples, rng)
    student = np.concatenate([s.student for s in segments])[index]
    teacher = np.concatenate([s.teacher for s in segments])[index]
    whole = _test(student, teacher, segments, config, block)
    own, start = [], 0
    for segment in segments:
        cols = slice(start, start + segment.bars)
        own.append(_test(student[:, cols], teacher[:, cols], [segment], config, block))
        start += segment.bars
    return whole, own


def _test(
    student: np.ndarray,
    teacher: np.ndarray,
    segments: Sequence[HeldOutReturns],
    config: GateConfig,
    block: float,
) -> SharpeDifference:
    """The point difference of `segments` end to end and its interval from the resampled rows
    `student` and `teacher` (the same resamples of those segments)."""
    ppy = segments[0].periods_per_year
    s_point = sharpe(np.concatenate([s.student for s in segments]), ppy)
    t_point = sharpe(np.concatenate([s.teacher for s in segments]), ppy)
    s_rows = _row_sharpes(student, ppy)
    legs = [s_rows - _row_sharpes(teacher, ppy)]  # paired: the same days for both
    if config.benchmark == "teacher_or_cash":
        legs.append(s_rows)  # cash's Sharpe is 0 on every resample
    point = _difference(s_point, t_point, config)
    return _summary(point, legs, student.shape[1], config, block)


def sharpe_difference(returns: HeldOutReturns, config: GateConfig) -> SharpeDifference:
    """Percentile interval of the Sharpe difference (student - benchmark) from a paired
    stationary bootstrap of the held-out days (one segment)."""
    return segmented_difference([returns], config)[0]


# ---------------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------------


def _failed_guards(
    student: dict[str, float],
    teacher: dict[str, float],
    config: GateConfig,
    manifest_error: str | None,
    training_finite: bool,
    returns: HeldOutReturns | None,
) -> list[str]:
    failed = []
    must_be_finite = ("cumulative_return", "max_drawdown", "policy_entropy", "prediction_accuracy")
    if (
        not training_finite
        or any(not math.isfinite(student.get(k, math.nan)) for k in must_be_finite)
        or (returns is not None and not returns.finite())
    ):
        failed.append("nan")
    if (
        student.get("max_drawdown", math.inf) - teacher.get("max_drawdown", 0.0)
        > config.max_drawdown_worsening
    ):
        failed.append("drawdown")
    if not student.get("policy_entropy", 0.0) >= config.entropy_floor:
        failed.append("entropy")
    if manifest_error is not None:
        failed.append("manifest")
    return failed


def _interval_words(test: SharpeDifference, config: GateConfig) -> str:
    against = "the better of teacher and cash" if config.benchmark == "teacher_or_cash" else ""
    return (
        f"Sharpe difference {test.point:.3f}"
        + (f" against {against}" if against else "")
        + f", {test.confidence:.0%} interval [{test.low:.3f}, {test.high:.3f}], "
        f"p={test.p_value:.3f} over {test.bars} held-out bars (blocks of {test.block_length:.1f})"
    )


def _verdict(
    student: dict[str, float],
    teacher: dict[str, float],
    config: GateConfig,
    returns: HeldOutReturns | None,
    test: SharpeDifference | None,
) -> tuple[bool, str]:
    """The margin test, then the bootstrap test; the guards have passed."""
    if returns is None and config.bootstrap:
        # A caller that has no held-out returns gets a refusal, never today's point test alone.
        return False, "no held-out daily returns given: the bootstrap gate cannot decide"
    if test is None and config.bootstrap:
        assert returns is not None
        return False, (
            f"{returns.bars} held-out bars, the gate needs at least {config.min_holdout_bars}"
        )
    s = comparable(student.get(config.metric, math.nan))
    t = benchmark_value(teacher.get(config.metric, math.nan), config)
    named = "benchmark" if config.benchmark == "teacher_or_cash" else "teacher"
    if not config.bootstrap and s > t + config.margin:
        return True, f"student {config.metric} {s:.4f} > {named} {t:.4f} + margin (no bootstrap)"
    if not s > t + config.margin:
        return False, (
            f"student {config.metric} {s:.4f} does not beat {named} {t:.4f} "
            f"+ margin {config.margin}"
        )
    assert test is not None  # the bootstrap is on and the returns allowed it
    interval = _interval_words(test, config)
    if test.low <= 0.0:
        return False, f"{interval}: the lower bound is not above 0 (could be luck)"
    return True, (
        f"student {config.metric} {s:.4f} > {named} {t:.4f} + margin {config.margin}; "
        f"{interval}: above 0"
    )


def decide(
    student: dict[str, float],
    teacher: dict[str, float],
    config: GateConfig,
    manifest_error: str | None = None,
    training_finite: bool = True,
    *,
    returns: HeldOutReturns | None = None,
) -> GateDecision:
    """Guards first (any failure refuses), then the margin test on `config.metric`, then the
    bootstrap test on `returns` (refused without them or with fewer than `min_holdout_bars`).
    The interval is computed whenever the returns allow, so a refusal still reports it."""
    failed = _failed_guards(student, teacher, config, manifest_error, training_finite, returns)
    test = None
    if returns is not None and returns.finite() and returns.bars >= config.min_holdout_bars:
        test = sharpe_difference(returns, config)
    if failed:
        promoted, reason = (
            False,
            f"guards failed: {', '.join(failed)}"
            + (f" ({manifest_error})" if manifest_error else ""),
        )
    else:
        promoted, reason = _verdict(student, teacher, config, returns, test)
    return _decision(promoted, reason, failed, test, 0 if returns is None else returns.bars)


def _decision(
    promoted: bool,
    reason: str,
    failed: list[str],
    test: SharpeDifference | None,
    bars: int,
    shadow: SharpeDifference | None = None,
) -> GateDecision:
    return GateDecision(
        promoted,
        reason,
        failed,
        sharpe_diff=None if test is None else test.point,
        sharpe_diff_low=None if test is None else test.low,
        sharpe_diff_high=None if test is None else test.high,
        p_value=None if test is None else test.p_value,
        confidence=None if test is None else test.confidence,
        holdout_bars=bars,
        shadow=shadow,
    )


# ---------------------------------------------------------------------------------------------
# Pooled evidence: the backtest's held-out bars and the candidate's shadow account
# ---------------------------------------------------------------------------------------------


def _shadow_verdict(
    pooled: SharpeDifference, shadow: SharpeDifference, config: GateConfig
) -> tuple[bool, str]:
    """Pooled margin and interval tests, then the shadow stretch's own sign."""
    words = f"pooled {_interval_words(pooled, config)}; shadow alone {shadow.point:.3f}"
    if not pooled.point > config.margin:
        return False, f"{words}: the pooled difference does not beat margin {config.margin}"
    if pooled.low <= 0.0:
        return False, f"{words}: the pooled lower bound is not above 0 (could be luck)"
    if not shadow.point > 0.0:
        # The shadow bars are the only ones no one chose the candidate on: when they disagree,
        # the backtest's edge is the likelier luck (or selection) and the candidate waits.
        return False, f"{words}: the shadow stretch does not agree (its difference is not > 0)"
    return True, f"{words}: above 0, and the shadow stretch agrees"


def decide_with_shadow(
    backtest: HeldOutReturns,
    shadow: HeldOutReturns,
    config: GateConfig,
    *,
    failed_guards: Sequence[str] = (),
) -> GateDecision:
    """Decide on a candidate's backtest held-out returns pooled with its shadow returns: the
    candidate traded live in a shadow account, beside the teacher's live returns on the same
    bars, on bars it was never trained or selected on. The bootstrap resamples each segment on
    its own (stationary_indices), never across the seam, and the Sharpe difference is that of
    the two segments end to end. Promotes when no guard failed (`failed_guards`: those decide()
    found on the backtest; non-finite returns add "nan"), the pooled difference beats the
    margin, its lower bound is above 0, and the shadow stretch's own difference is above 0.

    Decide once, at the shadow length planned before the shadow started: every further look at
    a growing shadow stretch is another chance for luck (docs/gate.md, "Pooled evidence")."""
    if shadow.periods_per_year != backtest.periods_per_year:
        raise ValueError("backtest and shadow returns are sampled differently")
    failed = list(failed_guards)
    if not (backtest.finite() and shadow.finite()) and "nan" not in failed:
        failed.append("nan")
    bars = backtest.bars + shadow.bars
    short = bars < config.min_holdout_bars or shadow.bars < config.min_shadow_bars
    if failed or short:
        return _decision(False, _refusal(failed, backtest, shadow, config), failed, None, bars)
    pooled, (_, own) = segmented_difference([backtest, shadow], config)
    if config.bootstrap:
        promoted, reason = _shadow_verdict(pooled, own, config)
    else:
        promoted = pooled.point > config.margin
        reason = (
            f"pooled Sharpe difference {pooled.point:.3f} vs margin {config.margin} (no bootstrap)"
        )
    return _decision(promoted, reason, failed, pooled, bars, shadow=own)


def _refusal(
    failed: list[str], backtest: HeldOutReturns, shadow: HeldOutReturns, config: GateConfig
) -> str:
    if failed:
        return f"guards failed: {', '.join(failed)}"
    return (
        f"{backtest.bars} backtest and {shadow.bars} shadow bars: the pooled gate needs at least "
        f"{config.min_holdout_bars} in all and {config.min_shadow_bars} in the shadow"
    )

"""The promotion gate: the student must pass every guard, beat the teacher by a margin, and beat
it by more than luck: a paired block bootstrap of the held-out days must put the whole interval of
the Sharpe difference above 0."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from arch.bootstrap import StationaryBootstrap

from services.market.performance import sharpe


@dataclass(frozen=True)
class GateConfig:
    metric: str = "sharpe"
    """Held-out metric the student must beat the teacher on."""
    margin: float = 0.0
    """Required improvement: student > teacher + margin."""
    max_drawdown_worsening: float = 0.05
    """Guard: student max drawdown may exceed the teacher's by at most this (fraction)."""
    entropy_floor: float = 0.05
    """Guard: mean policy entropy (nats) over held-out decisions; below it the policy collapsed."""

    # The bootstrap test on the held-out daily returns (a lucky month must not promote)
    confidence: float = 0.90
    """Two-sided level of the interval; promote only when its lower bound of the Sharpe
    difference (student - teacher) is above 0."""
    resamples: int = 2000
    """Bootstrap resamples of the held-out days."""
    block_length: int = 5
    """Mean block length (bars) of the stationary bootstrap: daily returns are autocorrelated."""
    seed: int = 0
    """Seed of the bootstrap, so a decision can be reproduced."""
    min_holdout_bars: int = 60
    """Fewer held-out daily returns than this and the gate refuses: too short to tell luck."""
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
    """Sharpe(student) - Sharpe(teacher) on the held-out days, with its bootstrap interval."""

    point: float
    low: float
    high: float
    p_value: float
    """One-sided: the share of resamples whose difference is <= 0."""
    bars: int
    confidence: float


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


def comparable(value: float) -> float:
    """Sharpe is NaN for a flat equity curve (never traded): count that as 0 when comparing."""
    return 0.0 if math.isnan(value) else value


def _sharpe_diff(student: np.ndarray, teacher: np.ndarray, periods_per_year: float) -> np.ndarray:
    return np.array(
        [
            comparable(sharpe(student, periods_per_year))
            - comparable(sharpe(teacher, periods_per_year))
        ]
    )


def sharpe_difference(returns: HeldOutReturns, config: GateConfig) -> SharpeDifference:
    """Percentile interval of the Sharpe difference from a stationary bootstrap (Politis and
    Romano) that resamples the held-out days in blocks, the same days for student and teacher,
    so the days' autocorrelation and the pair's correlation are both kept."""
    ppy = {"periods_per_year": returns.periods_per_year}
    bootstrap = StationaryBootstrap(
        config.block_length, returns.student, returns.teacher, seed=config.seed
    )
    diffs = bootstrap.apply(_sharpe_diff, config.resamples, extra_kwargs=ppy)[:, 0]
    tail = (1.0 - config.confidence) / 2.0
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return SharpeDifference(
        point=float(_sharpe_diff(returns.student, returns.teacher, **ppy)[0]),
        low=float(low),
        high=float(high),
        p_value=float(np.mean(diffs <= 0.0)),
        bars=returns.bars,
        confidence=config.confidence,
    )


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
    t = comparable(teacher.get(config.metric, math.nan))
    if not config.bootstrap and s > t + config.margin:
        return True, f"student {config.metric} {s:.4f} > teacher {t:.4f} + margin (no bootstrap)"
    if not s > t + config.margin:
        return False, (
            f"student {config.metric} {s:.4f} does not beat teacher {t:.4f} "
            f"+ margin {config.margin}"
        )
    assert test is not None  # the bootstrap is on and the returns allowed it
    interval = (
        f"Sharpe difference {test.point:.3f}, {test.confidence:.0%} interval "
        f"[{test.low:.3f}, {test.high:.3f}], p={test.p_value:.3f} over {test.bars} held-out bars"
    )
    if test.low <= 0.0:
        return False, f"{interval}: the lower bound is not above 0 (could be luck)"
    return True, (
        f"student {config.metric} {s:.4f} > teacher {t:.4f} + margin {config.margin}; "
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
    return GateDecision(
        promoted,
        reason,
        failed,
        sharpe_diff=None if test is None else test.point,
        sharpe_diff_low=None if test is None else test.low,
        sharpe_diff_high=None if test is None else test.high,
        p_value=None if test is None else test.p_value,
        confidence=None if test is None else test.confidence,
        holdout_bars=0 if returns is None else returns.bars,
    )

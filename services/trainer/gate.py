"""The promotion gate: the student must beat the teacher by a margin and pass every guard."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


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
    block_length: float = 5.0
    """Mean block length (bars) of the stationary bootstrap: daily returns are autocorrelated."""
    seed: int = 0
    """Seed of the bootstrap, so a decision can be reproduced."""
    min_holdout_bars: int = 60
    """Fewer held-out daily returns than this and the gate refuses: too short to tell luck."""


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reason: str
    failed_guards: list[str] = field(default_factory=list)


def comparable(value: float) -> float:
    """Sharpe is NaN for a flat equity curve (never traded): count that as 0 when comparing."""
    return 0.0 if math.isnan(value) else value


def decide(
    student: dict[str, float],
    teacher: dict[str, float],
    config: GateConfig,
    manifest_error: str | None = None,
    training_finite: bool = True,
) -> GateDecision:
    """Guards first (any failure refuses), then the margin test on `config.metric`."""
    failed = []
    must_be_finite = ("cumulative_return", "max_drawdown", "policy_entropy", "prediction_accuracy")
    if not training_finite or any(
        not math.isfinite(student.get(k, math.nan)) for k in must_be_finite
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
    s, t = (
        comparable(student.get(config.metric, math.nan)),
        comparable(teacher.get(config.metric, math.nan)),
    )
    if failed:
        return GateDecision(
            False,
            f"guards failed: {', '.join(failed)}"
            + (f" ({manifest_error})" if manifest_error else ""),
            failed,
        )
    if s > t + config.margin:
        return GateDecision(
            True, f"student {config.metric} {s:.4f} > teacher {t:.4f} + margin {config.margin}"
        )
    return GateDecision(
        False,
        f"student {config.metric} {s:.4f} does not beat teacher {t:.4f} + margin {config.margin}",
    )

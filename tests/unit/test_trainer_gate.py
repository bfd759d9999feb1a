"""The promotion gate refuses a worse student, accepts a better one, and every guard can refuse.
The bootstrap test itself is in test_trainer_gate_bootstrap.py; here it is given returns with a
clear edge, so the margin test and the guards decide."""

from __future__ import annotations

import math

import numpy as np

from services.trainer.gate import GateConfig, GateDecision, HeldOutReturns
from services.trainer.gate import decide as gate_decide

_TEACHER_DAYS = np.random.default_rng(0).normal(0.0, 0.01, 80)
EDGE = HeldOutReturns(_TEACHER_DAYS + 0.003, _TEACHER_DAYS)


def decide(
    student: dict[str, float],
    teacher: dict[str, float],
    config: GateConfig,
    manifest_error: str | None = None,
    training_finite: bool = True,
) -> GateDecision:
    return gate_decide(student, teacher, config, manifest_error, training_finite, returns=EDGE)


TEACHER = {
    "sharpe": 0.8,
    "max_drawdown": 0.10,
    "cumulative_return": 0.04,
    "policy_entropy": 0.9,
    "prediction_accuracy": 0.5,
}


def student(**changes: float) -> dict[str, float]:
    return {**TEACHER, **changes}


def test_refuses_a_worse_student() -> None:
    verdict = decide(student(sharpe=0.5), TEACHER, GateConfig())
    assert not verdict.promoted and verdict.failed_guards == []
    assert "does not beat" in verdict.reason


def test_accepts_a_better_student() -> None:
    verdict = decide(student(sharpe=1.2), TEACHER, GateConfig(margin=0.1))
    assert verdict.promoted, verdict.reason


def test_margin_is_required() -> None:
    assert not decide(student(sharpe=0.85), TEACHER, GateConfig(margin=0.1)).promoted


def test_drawdown_guard() -> None:
    verdict = decide(
        student(sharpe=2.0, max_drawdown=0.20), TEACHER, GateConfig(max_drawdown_worsening=0.05)
    )
    assert not verdict.promoted and verdict.failed_guards == ["drawdown"]


def test_collapsed_policy_is_refused_even_when_it_earns_more() -> None:
    verdict = decide(
        student(sharpe=2.0, policy_entropy=0.001), TEACHER, GateConfig(entropy_floor=0.05)
    )
    assert not verdict.promoted and verdict.failed_guards == ["entropy"]


def test_nan_and_manifest_guards() -> None:
    assert decide(
        student(sharpe=2.0, cumulative_return=math.nan), TEACHER, GateConfig()
    ).failed_guards == ["nan"]
    assert decide(
        student(sharpe=2.0), TEACHER, GateConfig(), training_finite=False
    ).failed_guards == ["nan"]
    verdict = decide(
        student(sharpe=2.0), TEACHER, GateConfig(), manifest_error="file x does not match"
    )
    assert verdict.failed_guards == ["manifest"] and "file x" in verdict.reason


def test_undefined_sharpe_of_a_flat_curve_counts_as_zero() -> None:
    assert decide(student(sharpe=0.1), {**TEACHER, "sharpe": math.nan}, GateConfig()).promoted
    assert not decide(student(sharpe=math.nan), {**TEACHER, "sharpe": 0.1}, GateConfig()).promoted


def test_without_held_out_returns_nothing_is_promoted() -> None:
    verdict = gate_decide(student(sharpe=2.0), TEACHER, GateConfig())
    assert not verdict.promoted and verdict.failed_guards == []
    assert "no held-out daily returns" in verdict.reason

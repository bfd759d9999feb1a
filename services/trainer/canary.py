"""The canary stage of a cluster promotion: its settings, and the judgement of the canary's live
figures against the teacher's over the watch window (promote, or roll back and say why).

The canary is an operational check: does the new version answer as cleanly and as fast as the
teacher on the cluster's own requests (error rate, p99 latency)? Whether it trades better is not
asked here: P&L is judged before, by the backtest gate and shadow trading on the live stream
(services/trainer/shadow.py, gate.decide_with_shadow), on far more bars than a canary window
holds (a few decisions a day, a tenth of them to the canary)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, Field


class CanaryConfig(BaseModel):
    """Env RLMF_TRAINER_CANARY__<FIELD> (nested in TrainerSettings)."""

    traffic_percent: int = Field(default=10, ge=1, le=100)
    """Share of the policy's requests the student serves as canary (KServe
    canaryTrafficPercent) while it is watched."""
    window_s: float = Field(default=1800.0, ge=0)
    """How long the canary serves before its live figures are judged; also the range of the
    Prometheus queries."""
    prometheus_url: str = ""
    """Where the live figures are read (http://<prometheus>:9090). Empty: cluster promotion
    refuses to run, since a canary that is never judged would be promoted blind."""
    max_error_rate_increase: float = Field(default=0.01, ge=0)
    """The canary's share of 5xx answers may exceed the teacher's by at most this much."""
    max_latency_ratio: float = Field(default=1.5, gt=0)
    """The canary's p99 latency may be at most this multiple of the teacher's."""
    min_requests: int = Field(default=1, ge=1)
    """Fewest requests the canary must have answered in the window; fewer is a failed check
    (no evidence is not good evidence)."""


@dataclass(frozen=True)
class Figures:
    """One model version's live figures over the window; None where Prometheus had no data."""

    error_rate: float | None
    latency_p99_s: float | None
    requests: float = 0.0


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    detail: str


def _known(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def judge(canary: Figures, teacher: Figures, config: CanaryConfig) -> Verdict:
    """Healthy when every figure of the canary is within its bound of the teacher's; the
    detail names each figure either way."""
    problems: list[str] = []
    notes: list[str] = []
    if not (_known(canary.error_rate) and _known(teacher.error_rate)):
        problems.append("no request figures for both revisions")
    else:
        assert canary.error_rate is not None and teacher.error_rate is not None
        notes.append(f"error rate {canary.error_rate:.4f} vs {teacher.error_rate:.4f}")
        if canary.error_rate > teacher.error_rate + config.max_error_rate_increase:
            problems.append("error rate above the teacher's")
    if _known(canary.latency_p99_s) and _known(teacher.latency_p99_s):
        assert canary.latency_p99_s is not None and teacher.latency_p99_s is not None
        notes.append(f"p99 {canary.latency_p99_s:.3f}s vs {teacher.latency_p99_s:.3f}s")
        if canary.latency_p99_s > teacher.latency_p99_s * config.max_latency_ratio:
            problems.append("p99 latency above the teacher's")
    else:
        problems.append("no latency figures for both revisions")
    if canary.requests < config.min_requests:
        problems.append(f"{canary.requests:.0f} canary requests (fewer than {config.min_requests})")
    summary = "; ".join(notes) or "no figures"
    if problems:
        return Verdict(False, f"live check failed ({', '.join(problems)}): {summary}")
    return Verdict(True, f"live check passed: {summary}")

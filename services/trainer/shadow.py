"""A candidate's life in shadow, trainer side.

A student that passes the backtest gate is not promoted at once (with RLMF_TRAINER_SHADOW_BARS
> 0): it is staged on the policy server as the candidate, and work_dir/candidate.json keeps
what it was chosen on (its held-out returns beside the teacher's). The simulator trades it in a
shadow account on every live bar and publishes trading.shadow.v1. Once `needed` distinct bar
times are in, the trainer decides once (gate.decide_with_shadow: the backtest's held-out bars
pooled with the shadow bars, and the shadow bars' own difference above 0), then promotes the
candidate or retires it, and publishes the verdict on models.promotions.v1 with both parts of
the evidence. While a candidate is in shadow no new cycle starts: one candidate at a time.

Several tickers: per bar time, the accounts' returns are averaged over the tickers traded at
that time (an equal-weight portfolio of the loop's accounts), one evidence series.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel

from services.common.envelope import derived_id, set_time, to_datetime
from services.common.metrics import PROMOTIONS
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.topics import MODELS_PROMOTIONS
from services.trainer.gate import GateConfig, GateDecision, HeldOutReturns, decide_with_shadow
from services.trainer.promotion_outcome import PromotionOutcome

log = logging.getLogger(__name__)

ShadowBars = dict[tuple[str, str], tuple[float, float]]
"""(ticker, bar time) -> (the shadow account's return, the live account's) on that bar."""


class ShadowPromoter(Protocol):
    """What shadow trading needs of a promoter: stage a candidate, promote, retire."""

    def stage(self, folder: Path, version: str) -> PromotionOutcome: ...

    def promote(self, folder: Path, version: str) -> PromotionOutcome: ...

    def retire(self) -> None: ...


class Candidate(BaseModel):
    """work_dir/candidate.json: the student in shadow and the evidence it was chosen on."""

    version: str
    folder: str
    teacher_version: str
    needed: int
    """Shadow bar times the verdict waits for, fixed when the candidate was staged."""
    staged_at: str
    backtest_student: list[float]
    backtest_teacher: list[float]
    periods_per_year: float
    backtest_p_value: float | None = None

    def backtest(self) -> HeldOutReturns:
        return HeldOutReturns(
            np.asarray(self.backtest_student),
            np.asarray(self.backtest_teacher),
            self.periods_per_year,
        )


@dataclass(frozen=True)
class ShadowFiles:
    """Where the candidate and its shadow bars live under the trainer's work dir."""

    root: Path

    @property
    def candidate(self) -> Path:
        return self.root / "candidate.json"

    def bars(self, version: str) -> Path:
        return self.root / "shadow" / f"{version}.jsonl"

    def verdict(self, version: str) -> Path:
        return self.root / "shadow" / f"{version}.verdict.json"

    def read_candidate(self) -> Candidate | None:
        if not self.candidate.is_file():
            return None
        return Candidate.model_validate_json(self.candidate.read_text())

    def write_candidate(self, candidate: Candidate) -> None:
        _write_atomically(self.candidate, candidate.model_dump_json(indent=2))

    def in_shadow_on(self, day: date) -> bool:
        """Whether a candidate was in shadow on `day`: one is staged now, or a verdict's
        stretch ended on or after it. Read from event times, so a cycle due while a candidate
        traded in shadow is skipped the same way whether its feedback or the verdict came
        first (the demo's pacer applies the same rule)."""
        if self.candidate.is_file():
            return True
        ends = [
            json.loads(path.read_text())["last_bar"]
            for path in (self.root / "shadow").glob("*.verdict.json")
        ]
        return any(datetime.fromisoformat(end).date() >= day for end in ends)

    def shadow_bars(self, version: str) -> ShadowBars:
        """(ticker, bar time) -> (shadow return, live return), re-deliveries kept once."""
        path = self.bars(version)
        if not path.is_file():
            return {}
        bars = {}
        for line in path.read_text().splitlines():
            row = json.loads(line)
            bars[(row["ticker"], row["time"])] = (row["shadow_return"], row["live_return"])
        return bars


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def stage_candidate(
    files: ShadowFiles,
    promoter: ShadowPromoter,
    *,
    folder: Path,
    version: str,
    teacher_version: str,
    returns: HeldOutReturns,
    needed: int,
    p_value: float | None,
) -> PromotionOutcome:
    """Stage a student the backtest gate passed as the candidate; its evidence is saved first,
    so a trainer killed after staging still judges it."""
    files.write_candidate(
        Candidate(
            version=version,
            folder=str(folder),
            teacher_version=teacher_version,
            needed=needed,
            staged_at=datetime.now(UTC).isoformat(timespec="seconds"),
            backtest_student=[float(x) for x in returns.student],
            backtest_teacher=[float(x) for x in returns.teacher],
            periods_per_year=returns.periods_per_year,
            backtest_p_value=p_value,
        )
    )
    staged = promoter.stage(folder, version)
    if not staged.promoted:
        files.candidate.unlink(missing_ok=True)
    return staged


def shadow_series(
    bars: ShadowBars,
) -> tuple[list[str], HeldOutReturns]:
    """Per bar time, the mean over tickers of the shadow and the live returns."""
    by_time: dict[str, list[tuple[float, float]]] = {}
    for (_, when), pair in bars.items():
        by_time.setdefault(when, []).append(pair)
    times = sorted(by_time)
    shadow = np.array([np.mean([p[0] for p in by_time[t]]) for t in times])
    live = np.array([np.mean([p[1] for p in by_time[t]]) for t in times])
    return times, HeldOutReturns(shadow, live)


@dataclass(frozen=True)
class Verdict:
    candidate: Candidate
    decision: GateDecision
    outcome: str
    """promoted, retired (the pooled gate refused) or failed (it passed; the swap did not)."""
    detail: str
    shadow_bars: int
    first_bar: str
    last_bar: str

    def to_dict(self) -> dict[str, Any]:
        shadow = self.decision.shadow
        return {
            "version": self.candidate.version,
            "teacher_version": self.candidate.teacher_version,
            "outcome": self.outcome,
            "detail": self.detail,
            "shadow_bars": self.shadow_bars,
            "first_bar": self.first_bar,
            "last_bar": self.last_bar,
            "pooled_sharpe_diff": self.decision.sharpe_diff,
            "pooled_p_value": self.decision.p_value,
            "shadow_sharpe_diff": None if shadow is None else shadow.point,
            "shadow_p_value": None if shadow is None else shadow.p_value,
            "backtest_bars": len(self.candidate.backtest_student),
            "backtest_p_value": self.candidate.backtest_p_value,
            "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


class ShadowJudge:
    """Collects the candidate's shadow bars from trading.shadow.v1 and, once it has the bars it
    waits for, decides, promotes or retires, and reports."""

    def __init__(
        self,
        files: ShadowFiles,
        gate: GateConfig,
        promoter: ShadowPromoter,
        on_promoted: Callable[[Path], None],
        producer: Any = None,
        approve: Callable[[Path, GateDecision], None] | None = None,
        withdraw: Callable[[Path], None] | None = None,
    ) -> None:
        self.files, self.gate, self.promoter = files, gate, promoter
        self.on_promoted = on_promoted
        self.approve, self.withdraw = approve, withdraw
        """Write the candidate's approval before the swap (the policy server serves only an
        approved version) and withdraw it when the swap does not take."""
        self.producer = producer

    def add(self, message: pb.ShadowDecision, ticker: str) -> Verdict | None:
        """Keep one shadow bar of the candidate; decide when it completes the stretch. A bar
        of another version (a candidate already judged, a re-delivery) is ignored."""
        if not self.record(message, ticker):
            return None
        return self.decide_if_complete()

    def record(self, message: pb.ShadowDecision, ticker: str) -> bool:
        """Keep one shadow bar of the staged candidate; False for another version's."""
        candidate = self.files.read_candidate()
        if candidate is None or message.decision.model_version != candidate.version:
            return False
        when = to_datetime(message.decision.decision_time).isoformat()
        path = self.files.bars(candidate.version)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            row = {"ticker": ticker, "time": when, "shadow_return": message.shadow_return,
                   "live_return": message.live_return}  # fmt: skip
            handle.write(json.dumps(row) + "\n")
        return True

    def decide_if_complete(self) -> Verdict | None:
        """Decide on the staged candidate once it has the bar times it waits for."""
        candidate = self.files.read_candidate()
        if candidate is None:
            return None
        bars = self.files.shadow_bars(candidate.version)
        times, _ = shadow_series(bars)
        if len(times) < candidate.needed:
            return None
        return self.decide(candidate, bars)

    def decide(self, candidate: Candidate, bars: ShadowBars) -> Verdict:
        times, series = shadow_series(bars)
        times, series = times[: candidate.needed], _first(series, candidate.needed)
        shadow = HeldOutReturns(series.student, series.teacher, candidate.periods_per_year)
        decision = decide_with_shadow(candidate.backtest(), shadow, self.gate)
        outcome, detail = self._act(candidate, decision)
        verdict = Verdict(candidate, decision, outcome, detail, len(times), times[0], times[-1])
        _write_atomically(self.files.verdict(candidate.version), json.dumps(verdict.to_dict()))
        self.files.candidate.unlink(missing_ok=True)
        PROMOTIONS.labels(outcome).inc()
        log.info("shadow verdict on %s: %s (%s)", candidate.version, outcome, detail)
        if self.producer is not None:
            publish_verdict(self.producer, verdict)
        return verdict

    def _act(self, candidate: Candidate, decision: GateDecision) -> tuple[str, str]:
        if not decision.promoted:
            self.promoter.retire()
            return "retired", decision.reason
        folder = Path(candidate.folder)
        if self.approve is not None:
            try:
                self.approve(folder, decision)
            except RuntimeError as exc:  # CycleError: the record could not be written
                self.promoter.retire()
                return "failed", f"{decision.reason}; {exc}"
        swapped = self.promoter.promote(folder, candidate.version)
        self.promoter.retire()
        if not swapped.promoted:
            if self.withdraw is not None:
                self.withdraw(folder)
            return "failed", f"{decision.reason}; {swapped.detail}"
        self.on_promoted(folder)
        return "promoted", f"{decision.reason}; {swapped.detail}"


def _first(series: HeldOutReturns, n: int) -> HeldOutReturns:
    return HeldOutReturns(series.student[:n], series.teacher[:n], series.periods_per_year)


def publish_verdict(producer: Any, verdict: Verdict) -> None:
    """models.promotions.v1 with stage "shadow": the pooled test, the shadow bars' own."""
    decision, shadow = verdict.decision, verdict.decision.shadow
    message = pb.ModelPromotion(
        student_version=verdict.candidate.version,
        teacher_version=verdict.candidate.teacher_version,
        promoted=verdict.outcome == "promoted",
        reason=verdict.detail,
        artifact_path=verdict.candidate.folder,
        outcome=verdict.outcome,
        stage="shadow",
        shadow_bars=verdict.shadow_bars,
        holdout_bars=decision.holdout_bars,
    )
    for name in ("sharpe_diff", "sharpe_diff_low", "sharpe_diff_high", "p_value", "confidence"):
        value = getattr(decision, name)
        if value is not None:
            setattr(message, name, float(value))
    if shadow is not None:
        message.shadow_sharpe_diff, message.shadow_p_value = shadow.point, shadow.p_value
    last = datetime.fromisoformat(verdict.last_bar)
    set_time(message.window_start, datetime.fromisoformat(verdict.first_bar))
    set_time(message.window_end, last)
    producer.publish(
        MODELS_PROMOTIONS,
        message,
        id=derived_id(verdict.candidate.version, verdict.outcome, "shadow-verdict"),
        key=verdict.candidate.version,
        event_time=last if last.tzinfo else last.replace(tzinfo=UTC),
    )
    producer.flush()

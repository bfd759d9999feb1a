"""Replay pacing: predict the trainer's cycles from the feedback and hold the market meanwhile.

The prediction is the trainer's own rule (services/common/cycle_schedule.py) applied to the
feedback the demo reads back from the bus, so the market pauses exactly when a cycle starts.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

from services.common import envelope as envelopes
from services.common import topics
from services.common.bus_reader import Tally, TopicRecord
from services.common.cycle_schedule import cycle_due
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.demo.config import status


class TrainingPacer:
    """Follows the feedback days and says when the trainer's next cycle comes due; follows the
    candidate in shadow and says when its stretch is complete (the trainer then decides)."""

    def __init__(self, every_days: int, shadow_bars: int = 0) -> None:
        self.every_days = every_days
        self.shadow_bars = shadow_bars
        self.days: list[date] = []
        self.last_cycle_day: date | None = None
        self.log_offset = 0
        """Bytes of trainer.log already searched for a failed cycle."""
        self.candidate: str | None = None
        """The student in shadow, from its cycle's decision until its verdict."""
        self.shadow_times: set[str] = set()
        self.stretch_ends: list[date] = []

    def due(self, records: list[TopicRecord]) -> bool:
        """Whether any of these feedback records made a cycle due. A cycle due while a
        candidate is in shadow is skipped, by the trainer's own rule (ShadowFiles.in_shadow_on)."""
        hit = False
        for rec in records:
            feedback = envelopes.decode(rec.value, pb.MarketFeedback).payload
            self.days.append(feedback.decision_time.ToDatetime().date())
            while (day := cycle_due(self.days, self.last_cycle_day, self.every_days)) and (
                self.in_shadow_on(day)
            ):
                self.last_cycle_day = day
            if day is not None:
                self.last_cycle_day, hit = day, True
        return hit

    def in_shadow_on(self, day: date) -> bool:
        return self.candidate is not None or any(end >= day for end in self.stretch_ends)

    def note_promotions(self, records: list[TopicRecord]) -> None:
        """A cycle's decision that staged a candidate, or a candidate's verdict."""
        for rec in records:
            message = envelopes.decode(rec.value, pb.ModelPromotion).payload
            if message.outcome == "candidate":
                self.candidate, self.shadow_times = message.student_version, set()
            elif message.stage == "shadow":
                self.candidate = None
                self.stretch_ends.append(message.window_end.ToDatetime().date())

    def stretch_complete(self, records: list[TopicRecord]) -> bool:
        """Whether these trading.shadow.v1 records complete the candidate's stretch."""
        if self.candidate is None or not self.shadow_bars:
            return False
        before = len(self.shadow_times)
        for rec in records:
            shadow = envelopes.decode(rec.value, pb.ShadowDecision).payload
            if shadow.decision.model_version == self.candidate:
                self.shadow_times.add(shadow.decision.decision_time.ToJsonString())
        return before < self.shadow_bars <= len(self.shadow_times)


def pause_for_verdict(
    simulator: subprocess.Popen[bytes],
    bootstrap: str,
    candidate: str,
    timeout_s: float,
    check_alive: Callable[[], None],
) -> str | None:
    """Hold the market once the candidate's shadow stretch is complete until the trainer's
    verdict is out, so the bars after it are decided by whoever the verdict leaves serving.
    Returns a note for the report when no verdict came."""
    promotions = Tally(bootstrap, topics.MODELS_PROMOTIONS)
    simulator.send_signal(signal.SIGSTOP)
    status(f"shadow: {candidate}'s stretch is complete; market paused for the verdict")
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for rec in promotions.poll():
                message = envelopes.decode(rec.value, pb.ModelPromotion).payload
                if message.stage == "shadow" and message.student_version == candidate:
                    status(f"shadow: {candidate} {message.outcome}; market resumed")
                    return None
            check_alive()
            time.sleep(0.5)
        return f"no shadow verdict on {candidate} within {timeout_s:.0f}s"
    finally:
        promotions.close()
        simulator.send_signal(signal.SIGCONT)


def pause_for_cycle(
    simulator: subprocess.Popen[bytes],
    bootstrap: str,
    pacer: TrainingPacer,
    trainer_log: Path,
    timeout_s: float,
    check_alive: Callable[[], None],
) -> str | None:
    """Hold the market (SIGSTOP the replay) while the trainer runs the cycle that just came
    due, so the next bars are decided by whatever that cycle promotes, as in a market that
    waits for its nightly training; resume (SIGCONT) when its promotion decision is out.

    Returns a note for the report when the cycle published no promotion decision."""
    promotions = Tally(bootstrap, topics.MODELS_PROMOTIONS)
    while promotions.poll():  # what earlier cycles published
        pass
    due = pacer.last_cycle_day
    simulator.send_signal(signal.SIGSTOP)
    status(f"training: cycle due at {due}; market paused while the trainer trains")
    deadline = time.monotonic() + timeout_s
    try:
        while not any(_is_decision_of(rec, due) for rec in promotions.poll()):
            if time.monotonic() > deadline or _log_says(
                trainer_log, "cycle failed", pacer.log_offset
            ):
                status(
                    "training: no promotion decision from this cycle; resuming (see trainer.log)"
                )
                return (
                    f"the cycle due at {due} published no promotion "
                    f"decision (failed or over {timeout_s:.0f}s)"
                )
            check_alive()
            time.sleep(1.0)
        status("training: promotion decision published; market resumed")
        return None
    finally:
        promotions.close()
        pacer.log_offset = _log_size(trainer_log)
        simulator.send_signal(signal.SIGCONT)


def _is_decision_of(record: TopicRecord, due: date | None) -> bool:
    """Whether a models.promotions.v1 record is the decision of the cycle due on `due`: a
    cycle trains on the bars known by its due day, so its held-out block (the message's event
    time) ends on that day. A late decision of an earlier cycle is logged and not taken."""
    message = envelopes.decode(record.value, pb.ModelPromotion)
    decided_for = message.event_time.date()
    if decided_for == due:
        return True
    status(
        f"training: a decision for the cycle of {decided_for} ({message.payload.student_version})"
        f" arrived while waiting for the cycle of {due}; not taken as this cycle's"
    )
    return False


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _log_says(path: Path, text: str, offset: int) -> bool:
    if not path.exists():
        return False
    with open(path, "rb") as f:
        f.seek(offset)
        return text.encode() in f.read()

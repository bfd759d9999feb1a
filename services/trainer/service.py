"""The embedded trainer: consumes market.feedback.v1 and runs a cycle every N simulated days.

Feedback is validated (bad messages go to market.feedback.v1.dlq with the reason) and kept in a
JSONL log. When the newest feedback day is `cycle_every_days` past the last cycle, a cycle runs
on a worker thread over the bars known up to that day only, so the consumer keeps polling.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import date

import pandas as pd

from services.common.bus import ConsumerLoop, Incoming, Outgoing, Producer
from services.common.cycle_schedule import cycle_due
from services.common.http_server import HealthApp
from services.common.service import run_consumer_service
from services.common.settings import BusSettings
from services.common.topics import MARKET_FEEDBACK, MODELS_PROMOTIONS
from services.trainer.cycle import CycleInterrupted, CycleResult, load_prices, run_cycle
from services.trainer.datasets import FeedbackLog, record_from_incoming
from services.trainer.market_source import known_by
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

SERVICE = "trainer"


class Scheduler:
    """Decides when a cycle is due and runs it off the consumer's thread, one at a time."""

    def __init__(
        self,
        settings: TrainerSettings,
        feedback: FeedbackLog,
        prices: pd.DataFrame,
        producer: Producer | None,
        run: Callable[..., CycleResult] = run_cycle,
    ) -> None:
        self.settings, self.feedback, self.prices, self.producer = (
            settings,
            feedback,
            prices,
            producer,
        )
        self._run = run
        # The last finished cycle's day survives a restart (the work dir is the trainer's own
        # volume), so a restarted trainer neither repeats that cycle nor waits for a day past it.
        self._schedule_file = settings.work_dir / "schedule.json"
        self.last_cycle_day: date | None = self._saved_last_cycle_day()
        self.results: list[CycleResult] = []
        self._worker: threading.Thread | None = None
        self._starting = threading.Lock()
        self._stopping = threading.Event()

    def due(self) -> date | None:
        days = self.feedback.days()
        busy = self._worker is not None and self._worker.is_alive()
        if not days or (busy and self._worker is not threading.current_thread()):
            return None
        return cycle_due(days, self.last_cycle_day, self.settings.cycle_every_days)

    def maybe_start(self) -> None:
        # The consumer's thread calls this on every record, and a finishing cycle once more.
        with self._starting:
            day = self.due()
            if day is None or self._stopping.is_set():
                return
            self.last_cycle_day = day
            # Only bars known by the newest feedback day: no look-ahead into the replay's future.
            known = known_by(self.prices, day)
            self._worker = threading.Thread(
                target=self._cycle, args=(known, day), name="cycle", daemon=True
            )
            self._worker.start()

    def _cycle(self, prices: pd.DataFrame, day: date) -> None:
        try:
            self._run_one(prices, day)
        finally:
            # Feedback that arrived while this cycle ran may already make the next one due; no
            # new record may come to say so (a paced replay waits for that very decision, as
            # after a restart that re-ran the cycle it had already done), so look now.
            self.maybe_start()

    def _saved_last_cycle_day(self) -> date | None:
        if not self._schedule_file.exists():
            return None
        return date.fromisoformat(json.loads(self._schedule_file.read_text())["last_cycle_day"])

    def _save_last_cycle_day(self, day: date) -> None:
        self._schedule_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self._schedule_file.with_suffix(".tmp")
        partial.write_text(json.dumps({"last_cycle_day": day.isoformat()}))
        partial.replace(self._schedule_file)  # atomic: a kill leaves the old day or the new

    def _run_one(self, prices: pd.DataFrame, day: date) -> None:
        try:
            self.results.append(
                self._run(
                    self.settings,
                    prices=prices,
                    feedback=self.feedback,
                    producer=self.producer,
                    stop_requested=self._stopping.is_set,
                )
            )
            self._save_last_cycle_day(day)
        except CycleInterrupted as exc:  # SIGTERM: checkpointed, the next start resumes it
            log.info("cycle interrupted: %s", exc)
        except Exception:  # a failed cycle leaves the teacher serving; log it, try next time
            log.exception("cycle failed; the teacher keeps serving")

    def join(self, timeout: float | None = None) -> None:
        """Wait for the running cycle and any it started on finishing (see `_cycle`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (worker := self._worker) is not None and worker.is_alive():
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if deadline is not None and time.monotonic() >= deadline:
                return

    def stop(self) -> None:
        """Once the consumer has stopped (SIGTERM): ask the cycle in hand to stop, which it does
        after its PPO iteration, checkpointed (the next start resumes it); a cycle already
        past PPO (evaluating, promoting, publishing) finishes. Then close the producer."""
        self._stopping.set()
        if self._worker is not None and self._worker.is_alive():
            log.info("asking the running cycle to checkpoint and stop before exiting")
        self.join()
        if self.producer is not None:
            self.producer.close()


def build(
    settings: TrainerSettings, bus: BusSettings | None = None, group_id: str | None = None
) -> tuple[ConsumerLoop, Scheduler]:
    bus = bus or BusSettings()
    feedback = FeedbackLog(settings.work_dir / "feedback.jsonl")
    producer = Producer(bus, SERVICE) if settings.publish else None
    scheduler = Scheduler(settings, feedback, load_prices(settings), producer)

    def handle(incoming: Incoming) -> list[Outgoing]:
        record = record_from_incoming(incoming)  # ValidationFailed -> .dlq, with the reason
        if record.ticker != settings.ticker:
            return []  # valid, but another ticker's: this trainer's env trades settings.ticker
        feedback.add(record)
        scheduler.maybe_start()
        return []

    loop = ConsumerLoop(
        service=SERVICE,
        topics=[MARKET_FEEDBACK],
        settings=bus,
        handle=handle,
        create_topics=[MODELS_PROMOTIONS],
        group_id=group_id,
    )
    return loop, scheduler


def main() -> int:
    """The trainer process: `python -m services.trainer`; returns the exit code."""
    settings = TrainerSettings()
    health = HealthApp(SERVICE)
    schedulers: list[Scheduler] = []

    def build_loop() -> ConsumerLoop:
        loop, scheduler = build(settings)
        schedulers.append(scheduler)
        return loop

    code = run_consumer_service(SERVICE, build_loop, health)
    # The cycle thread is a daemon: without this join, exiting would kill a cycle mid-promotion.
    for scheduler in schedulers:
        scheduler.stop()
    return code

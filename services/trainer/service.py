"""The embedded trainer: consumes market.feedback.v1 and runs a cycle every N simulated days.

Feedback is validated (bad messages go to market.feedback.v1.dlq with the reason) and kept in a
JSONL log. When the newest feedback day is `cycle_every_days` past the last cycle, a cycle runs
on a worker thread over the bars known up to that day only, so the consumer keeps polling.

With data_source kafka (what `rlmf up` runs) it also consumes market.bars.v1 into the store the
cluster's CronJob reads (kafka_history.StreamHistory): the cycle trains on the bars the user
streamed, once the ticker has enough of them for a walk-forward split. Every cycle, run or
failed, is one line of work_dir/cycles.jsonl (what `rlmf status` reads).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import pandas as pd

from services.common.bar_messages import is_history
from services.common.bus import ConsumerLoop, Incoming, Outgoing, Producer, one_by_one
from services.common.cycle_schedule import cycle_due
from services.common.http_server import HealthApp
from services.common.service import run_consumer_service
from services.common.settings import BusSettings
from services.common.topics import MARKET_BARS, MARKET_FEEDBACK, MODELS_PROMOTIONS, TRADING_SHADOW
from services.market.walk_forward import minimum_bars
from services.policy.approval import withdraw_approval
from services.trainer import market_source
from services.trainer.approvals import approve_promotion, gate_evidence
from services.trainer.cycle import CycleInterrupted, CycleResult, run_cycle, set_current
from services.trainer.cycle_log import CycleLog, CycleRecord
from services.trainer.datasets import FeedbackLog, FeedbackRecord, record_from_incoming
from services.trainer.kafka_history import NoMarketData, StreamHistory
from services.trainer.market_source import known_by
from services.trainer.promotion import EmbeddedPromoter
from services.trainer.settings import TrainerSettings
from services.trainer.shadow import ShadowFiles, ShadowJudge

log = logging.getLogger(__name__)

SERVICE = "trainer"


def bars_needed(settings: TrainerSettings) -> int:
    """Bars a ticker needs before its first cycle: one walk-forward split of the settings'
    windows (the teacher serves until then)."""
    return minimum_bars(settings.eval_days, settings.embargo_days, settings.train_days)


@dataclass(frozen=True)
class CycleInputs:
    """What one cycle runs on: its settings (the training ticker named), that ticker's bars
    known by its day, the day, and streaming, the other tickers' bars known by it."""

    settings: TrainerSettings
    prices: pd.DataFrame
    day: date
    peers: dict[str, pd.DataFrame] = field(default_factory=dict)
    warm_up: bool = False
    """The warm-up cycle on a ticker's history (services/trainer/warm_up.py)."""


class Scheduler:
    """Decides when a cycle is due and runs it off the consumer's thread, one at a time.

    `prices` is a fixed frame (a CSV, the synthetic market) or, streaming, a StreamHistory the
    consumer fills: each cycle then trains on the bars that arrived by its day."""

    def __init__(
        self,
        settings: TrainerSettings,
        feedback: FeedbackLog,
        prices: pd.DataFrame | StreamHistory,
        producer: Producer | None,
        run: Callable[..., CycleResult] = run_cycle,
    ) -> None:
        self.settings, self.feedback, self.prices, self.producer = (
            settings,
            feedback,
            prices,
            producer,
        )
        self.cycle_log = CycleLog(settings.work_dir / "cycles.jsonl")
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
        shadow = ShadowFiles(self.settings.work_dir)
        while (day := cycle_due(days, self.last_cycle_day, self.settings.cycle_every_days)) and (
            shadow.in_shadow_on(day)
        ):
            # One candidate at a time: a cycle that comes due while one trades in shadow is
            # skipped, and the next is due `cycle_every_days` after it.
            log.info("cycle due at %s skipped: a candidate is in shadow", day)
            self.last_cycle_day = day
            self._save_last_cycle_day(day)
        return day

    def maybe_start(self) -> None:
        # The consumer's thread calls this on every record, and a finishing cycle once more.
        with self._starting:
            day = self.due()
            if day is None or self._stopping.is_set():
                return
            inputs = self._inputs(day)
            if inputs is None:
                return  # too few bars yet: the teacher serves, the next record looks again
            self._start(inputs)

    def maybe_warm_up(self, ticker: str) -> None:
        """A live bar of `ticker` came after its history (`rlmf market publish --history`):
        before any cycle ran, the warm-up cycle trains as of the history's last bar, as the
        demo's does, so a student can be in shadow from the first live bars."""
        if not isinstance(self.prices, StreamHistory) or self.last_cycle_day is not None:
            return
        end = self.prices.history_end.get(ticker)
        busy = self._worker is not None and self._worker.is_alive()
        if end is None or busy or ShadowFiles(self.settings.work_dir).candidate.is_file():
            return
        with self._starting:
            day = datetime.fromisoformat(end).date()
            inputs = self._inputs(day, ticker=ticker, exact_day=True)
            if inputs is not None and not self._stopping.is_set():
                log.info("warm-up cycle on the history of %s up to %s", ticker, day)
                self._start(dataclasses.replace(inputs, warm_up=True))

    def _start(self, inputs: CycleInputs) -> None:
        self.last_cycle_day = inputs.day
        self._worker = threading.Thread(
            target=self._cycle, args=(inputs,), name="cycle", daemon=True
        )
        self._worker.start()

    def _inputs(
        self, day: date, ticker: str | None = None, exact_day: bool = False
    ) -> CycleInputs | None:
        """The cycle's settings, the bars known by its day (no look-ahead into the replay's
        future) and that day. Streaming, a cycle due before the training ticker had a split's
        bars runs as of the newest feedback day instead, once that day has them; None until.
        Streaming, the other tickers' bars known by the same day come along (peers)."""
        if not isinstance(self.prices, StreamHistory):
            return CycleInputs(self.settings, known_by(self.prices, day), day)
        preferred = self.settings.ticker if "ticker" in self.settings.model_fields_set else None
        ticker = ticker or self.prices.training_ticker(preferred)
        if ticker is None:
            return None
        try:
            bars = self.prices.prices(ticker)
        except NoMarketData as exc:  # never raised to the consumer: it would dead-letter feedback
            log.info("no cycle yet: %s", exc)
            return None
        if len(known_by(bars, day)) < bars_needed(self.settings) and not exact_day:
            day = self.feedback.days()[-1]
        known = known_by(bars, day)
        if len(known) < bars_needed(self.settings):
            log.info(
                "no cycle yet: %s has %d bars by %s, a cycle needs %d",
                ticker, len(known), day, bars_needed(self.settings),
            )  # fmt: skip
            return None
        settings = self.settings.model_copy(update={"ticker": ticker})
        return CycleInputs(settings, known, day, self._peers(ticker, day))

    def _peers(self, ticker: str, day: date) -> dict[str, pd.DataFrame]:
        """Every other streamed ticker's bars known by `day` (none with pool_tickers off)."""
        assert isinstance(self.prices, StreamHistory)
        if not self.settings.pool_tickers:
            return {}
        others = (t for t in self.prices.bar_counts() if t != ticker)
        return {t: known_by(self.prices.prices(t), day) for t in others}

    def _cycle(self, inputs: CycleInputs) -> None:
        try:
            self._run_one(inputs)
        finally:
            # Feedback that arrived while this cycle ran may already make the next one due; no
            # new record may come to say so (a paced replay waits for that very decision, as
            # after a restart that re-ran the cycle it had already done), so look now.
            self.maybe_start()

    def _feedback_of(self, tickers: list[str]) -> FeedbackLog | list[FeedbackRecord]:
        """The feedback a cycle on `tickers` learns from: streaming, the log holds every
        ticker's."""
        if not isinstance(self.prices, StreamHistory):
            return self.feedback  # it only ever kept settings.ticker's
        return [r for r in self.feedback.records() if r.ticker in tickers]

    def _source(self) -> str:
        """Where the cycle's bars came from, for its record."""
        if isinstance(self.prices, StreamHistory):
            return "kafka"
        try:
            return market_source.resolve(self.settings)
        except NoMarketData:
            return "given"  # a caller handed the bars over (tests, benches)

    def _saved_last_cycle_day(self) -> date | None:
        if not self._schedule_file.exists():
            return None
        return date.fromisoformat(json.loads(self._schedule_file.read_text())["last_cycle_day"])

    def _save_last_cycle_day(self, day: date) -> None:
        self._schedule_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self._schedule_file.with_suffix(".tmp")
        partial.write_text(json.dumps({"last_cycle_day": day.isoformat()}))
        partial.replace(self._schedule_file)  # atomic: a kill leaves the old day or the new

    def _run_one(self, inputs: CycleInputs) -> None:
        settings, prices = inputs.settings, inputs.prices
        tickers = [settings.ticker, *sorted(inputs.peers)]
        record = CycleRecord.starting(inputs.day, self._source(), tickers, prices)
        try:
            result = self._run(
                settings,
                prices=prices,
                feedback=self._feedback_of(tickers),
                producer=self.producer,
                stop_requested=self._stopping.is_set,
                **({"peers": inputs.peers} if inputs.peers else {}),
                **({"warm_up": True} if inputs.warm_up else {}),
            )
            self.results.append(result)
            self._save_last_cycle_day(inputs.day)
            self.cycle_log.add(record.finished(result))
        except CycleInterrupted as exc:  # SIGTERM: checkpointed, the next start resumes it
            log.info("cycle interrupted: %s", exc)
        except Exception as exc:  # a failed cycle leaves the teacher serving; log it, try next time
            log.exception("cycle failed; the teacher keeps serving")
            self.cycle_log.add(record.failed(exc))

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
    judge = _shadow_judge(settings, producer)
    streaming = market_source.resolve(settings) == "kafka"
    history = StreamHistory(settings.work_dir) if streaming else None
    prices = history if history is not None else market_source.load_prices(settings)
    scheduler = Scheduler(settings, feedback, prices, producer)

    def handle(incoming: Incoming) -> list[Outgoing]:
        if incoming.topic == TRADING_SHADOW:
            assert judge is not None  # only a trainer with shadow trading subscribes
            verdict = judge.add(incoming.payload, incoming.payload.decision.ticker)
            if verdict is not None:
                scheduler.cycle_log.add_verdict(verdict.to_dict())
                scheduler.maybe_start()  # cycles waited for this verdict
            return []
        if incoming.topic == MARKET_BARS:
            assert history is not None  # only a streaming trainer subscribes to the bars
            history.add(incoming)  # ValidationFailed -> .dlq, with the reason
            if not is_history(incoming.envelope.source):
                scheduler.maybe_warm_up(incoming.payload.ticker)
            return []
        record = record_from_incoming(incoming)  # ValidationFailed -> .dlq, with the reason
        if not streaming and record.ticker != settings.ticker:
            return []  # valid, but another ticker's: this trainer's env trades settings.ticker
        feedback.add(record)
        scheduler.maybe_start()
        return []

    each = one_by_one(handle)

    def handle_batch(batch: Sequence[Incoming]) -> list[list[Outgoing] | Exception]:
        answers = list(
            each(batch)
        )  # a failure is an answer: the loop dead-letters it, with its text
        if history is not None:
            history.save()  # on disk before the loop commits this batch's offsets
        return answers

    loop = ConsumerLoop(
        service=SERVICE,
        topics=[
            *([MARKET_BARS] if streaming else []),
            MARKET_FEEDBACK,
            *([TRADING_SHADOW] if judge is not None else []),
        ],
        settings=bus,
        handle_batch=handle_batch,
        create_topics=[MODELS_PROMOTIONS],
        group_id=group_id,
    )
    return loop, scheduler


def _shadow_judge(settings: TrainerSettings, producer: Producer | None) -> ShadowJudge | None:
    """The candidate's judge when students trade in shadow before they serve."""
    if not settings.shadow_bars or settings.promotion != "embedded":
        return None
    return ShadowJudge(
        ShadowFiles(settings.work_dir),
        settings.gate,
        EmbeddedPromoter(settings.policy_url),
        on_promoted=lambda folder: set_current(settings.models_dir, folder),
        producer=producer,
        approve=lambda folder, decision: approve_promotion(
            settings, folder, gate_evidence(decision)
        ),
        withdraw=withdraw_approval,
    )


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

"""The embedded trainer service on the real broker: feedback in, bad feedback to the .dlq with
its reason, and a cycle scheduled every N simulated days that sees no bar after the newest
feedback day (the cycle itself is recorded here; tests/integration/test_trainer_cycle.py runs
it)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from kafka import KafkaConsumer

from services.common.broker import EmbeddedBroker, free_port
from services.common.bus import Producer
from services.common.envelope import set_time
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.common.topics import MARKET_BARS, MARKET_FEEDBACK, dlq
from services.trainer.cycle import CycleResult
from services.trainer.cycle_log import CycleLog
from services.trainer.kafka_history import BarStore, StreamHistory
from services.trainer.service import Scheduler, build
from services.trainer.service import bars_needed as service_bars_needed
from services.trainer.settings import TrainerSettings

START = datetime(2020, 1, 1, 21, tzinfo=UTC)


def _feedback(ticker: str, day: int, action: str = "buy") -> pb.MarketFeedback:
    msg = pb.MarketFeedback(
        ticker=ticker,
        state=f"state of day {day}",
        action=action,
        reward=0.0,
        realised_return=0.01,
        model_version="v0",
    )
    set_time(msg.decision_time, START + timedelta(days=day))
    set_time(msg.realised_time, START + timedelta(days=day + 1))
    return msg


@pytest.mark.slow  # over 2.5 s of processes and broker round trips
def test_feedback_is_consumed_bad_feedback_dead_lettered_and_cycles_scheduled(
    bus_settings: BusSettings, unique: str, tmp_path: Path, broker: str
) -> None:
    ticker = "T" + "".join(chr(65 + int(c, 16) % 26) for c in unique[:6])
    settings = TrainerSettings(
        ticker=ticker, work_dir=tmp_path, cycle_every_days=5, market_days=40, publish=False
    )
    loop, scheduler = build(settings, bus_settings, group_id=f"trainer-test-{unique}")
    calls: list[dict[str, Any]] = []

    def record_cycle(_settings: TrainerSettings, **kwargs: Any) -> Any:
        calls.append(kwargs)

    scheduler._run = record_cycle  # type: ignore[assignment]  # the cycle runs in test_trainer_cycle
    producer = Producer(bus_settings, "test")
    for day in range(12):
        producer.publish(
            MARKET_FEEDBACK,
            _feedback(ticker, day),
            key=ticker,
            event_time=START + timedelta(days=day + 1),
        )
    producer.publish(
        MARKET_FEEDBACK, _feedback(ticker, 3, action="short"), key=ticker, event_time=START
    )
    producer.publish(
        MARKET_FEEDBACK, _feedback("OTHER" + ticker[:4], 20), key="X", event_time=START
    )
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 60
    while len(scheduler.feedback) < 12 and time.monotonic() < deadline:
        loop.poll_once()
        scheduler.join(5)
    loop.close()

    assert len(scheduler.feedback) == 12  # the other ticker's valid feedback is not trained on
    assert len(calls) >= 1
    for call in calls:
        prices = call["prices"]
        newest = max(r.decision_time for r in scheduler.feedback.records()).date()
        assert prices.index[-1].date() <= newest, "a cycle saw a bar after the newest feedback day"
    assert (tmp_path / "feedback.jsonl").is_file()

    consumer = KafkaConsumer(
        dlq(MARKET_FEEDBACK),
        bootstrap_servers=broker,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
        group_id=None,
    )
    try:
        errors = [
            dict(r.headers).get("rlmf-error", b"").decode()
            for r in consumer
            if r.key == ticker.encode()
        ]
    finally:
        consumer.close()
    assert any("'short' is not one of" in e for e in errors), errors


class _LoopStoppedMidCycle:
    """A consumer loop whose feedback starts a cycle and which then gets SIGTERM, as a pod
    being replaced does."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.stop_requested = threading.Event()
        self.stats = SimpleNamespace()

    def broker_connected(self) -> bool:
        return True

    def request_stop(self) -> None:
        self.stop_requested.set()

    def run(self) -> None:
        self.scheduler.maybe_start()
        os.kill(os.getpid(), signal.SIGTERM)
        assert self.stop_requested.wait(10), "SIGTERM did not reach the loop"


def _service_sigterm_mid_cycle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run: Any) -> int:
    """The trainer service's main() with a cycle due at once, run by `run`, and a SIGTERM
    that arrives while that cycle runs; returns main's exit code."""
    from services.common.broker import free_port
    from services.trainer import service

    days = [START.date(), (START + timedelta(days=40)).date()]
    prices = pd.DataFrame({"close": [1.0, 1.0]}, index=pd.DatetimeIndex([START, START]))
    feedback = SimpleNamespace(days=lambda: days)
    settings = TrainerSettings(work_dir=tmp_path, cycle_every_days=5, publish=False)
    scheduler = Scheduler(settings, feedback, prices, None, run=run)  # type: ignore[arg-type]
    monkeypatch.setattr(service, "build", lambda _s: (_LoopStoppedMidCycle(scheduler), scheduler))
    monkeypatch.setenv("RLMF_HTTP_HOST", "127.0.0.1")
    monkeypatch.setenv("RLMF_HTTP_PORT", str(free_port()))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return service.main()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def test_sigterm_during_a_cycle_waits_for_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A cycle past PPO (evaluating, promoting) ignores the stop request: main waits for it."""
    finished: list[str] = []

    def slow_cycle(_settings: TrainerSettings, **_kwargs: Any) -> Any:
        time.sleep(0.5)  # still running when SIGTERM arrives
        finished.append("cycle")

    assert _service_sigterm_mid_cycle(monkeypatch, tmp_path, slow_cycle) == 0
    assert finished == ["cycle"], "main returned before the running cycle finished"


def test_sigterm_during_ppo_checkpoints_the_cycle_and_exits_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A cycle still in PPO is asked to stop: it checkpoints after its iteration and raises
    CycleInterrupted (run_cycle's contract, tested with the real cycle in
    test_trainer_cycle.py); the service logs it and exits 0 without waiting the cycle out."""
    from services.trainer.cycle import CycleInterrupted

    seen: list[str] = []

    def ppo_cycle(_settings: TrainerSettings, **kwargs: Any) -> Any:
        stop_requested = kwargs["stop_requested"]
        deadline = time.monotonic() + 30  # a long cycle, unless asked to stop
        while time.monotonic() < deadline:
            if stop_requested():
                seen.append("stop")
                raise CycleInterrupted("checkpointed after PPO iteration 3; resumes")
            time.sleep(0.05)
        seen.append("finished")

    started = time.monotonic()
    assert _service_sigterm_mid_cycle(monkeypatch, tmp_path, ppo_cycle) == 0
    assert seen == ["stop"]
    assert time.monotonic() - started < 20, "the service waited the cycle out"


def test_a_cycle_due_when_the_previous_one_ends_starts_without_a_new_record(
    tmp_path: Path,
) -> None:
    """Feedback that arrived while a cycle ran can make the next cycle due at once. A paced
    replay then sends nothing more until it sees that decision (after a restart that re-ran the
    cycle already done, say), so the scheduler must look again when a cycle ends."""
    days = [(START + timedelta(days=d)).date() for d in range(6)]
    ran: list[int] = []

    def cycle(_settings: TrainerSettings, *, prices: pd.DataFrame, **_kwargs: Any) -> Any:
        ran.append(len(prices))
        if len(ran) == 1:  # feedback for 6 more days reaches the log while the cycle runs
            days.extend((START + timedelta(days=d)).date() for d in range(6, 12))

    index = pd.DatetimeIndex([START + timedelta(days=d) for d in range(12)])
    prices = pd.DataFrame({"close": [1.0] * 12}, index=index)
    feedback = SimpleNamespace(days=lambda: days)
    settings = TrainerSettings(work_dir=tmp_path, cycle_every_days=5, publish=False)
    scheduler = Scheduler(settings, feedback, prices, None, run=cycle)  # type: ignore[arg-type]

    scheduler.maybe_start()  # the one record that made the first cycle due
    scheduler.join(timeout=10)

    # each cycle on the first day its period is over: day 5, then day 10 (not the newest, 11)
    assert ran == [6, 11], "the second cycle, due when the first ended, did not start"
    assert scheduler.last_cycle_day == days[10]
    # a restarted trainer knows the last finished cycle: nothing is due until day 15
    restarted = Scheduler(settings, feedback, prices, None, run=cycle)  # type: ignore[arg-type]
    assert restarted.last_cycle_day == days[10] and restarted.due() is None


def _result(prices: pd.DataFrame) -> CycleResult:
    first, last = prices.index[0].to_pydatetime(), prices.index[-1].to_pydatetime()
    return CycleResult(
        student_version="s1", teacher_version="v0", promoted=False, reason="refused",
        failed_guards=[], student_metrics={}, teacher_metrics={}, buy_and_hold_metrics={},
        artifact_path="", window_start=first, window_end=last, eval_start=last, eval_end=last,
        outcome="rejected",
    )  # fmt: skip


def _bar(ticker: str, day: int, close: float) -> pb.Bar:
    msg = pb.Bar(ticker=ticker, open=close, high=close * 1.01, low=close * 0.99, close=close)
    msg.volume = 1000.0
    set_time(msg.end, START + timedelta(days=day))
    return msg


@pytest.fixture
def own_bus(tmp_path: Path) -> Iterator[BusSettings]:
    """A broker of the test's own (the streaming trainer reads every ticker on the topics)."""
    with EmbeddedBroker(port=free_port(), log_path=tmp_path / "tansu.log") as embedded:
        yield BusSettings(bootstrap=embedded.bootstrap, group_protocol="manual")


@pytest.mark.slow  # broker round trips
def test_a_streaming_trainer_learns_from_the_bars_on_the_bus(
    own_bus: BusSettings, unique: str, tmp_path: Path
) -> None:
    """data_source kafka (what `rlmf up` runs): the bars of every ticker are kept as they arrive;
    no cycle before the ticker has a walk-forward split's bars; then the cycle trains on the
    streamed bars known by its day only, and is recorded. On a broker of its own: a streaming
    trainer keeps every ticker's bars and feedback, and the session's broker carries other
    tests' tickers."""
    name = "".join(chr(65 + int(c, 16) % 26) for c in unique[:5])
    big, small = f"B{name}", f"S{name}"
    settings = TrainerSettings(
        data_source="kafka", work_dir=tmp_path, cycle_every_days=5, publish=False,
        train_days=10, eval_days=5, embargo_days=0, gate={"min_holdout_bars": 5},
    )  # fmt: skip
    needed = service_bars_needed(settings)
    loop, scheduler = build(settings, own_bus, group_id=f"trainer-stream-{unique}")
    calls: list[tuple[TrainerSettings, pd.DataFrame]] = []
    peers: list[dict[str, pd.DataFrame]] = []

    def record_cycle(cycle_settings: TrainerSettings, **kwargs: Any) -> CycleResult:
        calls.append((cycle_settings, kwargs["prices"]))
        peers.append(kwargs.get("peers", {}))
        return _result(kwargs["prices"])

    scheduler._run = record_cycle  # type: ignore[assignment]  # the cycle runs in test_trainer_cycle
    producer = Producer(own_bus, "test")

    def publish(bars: range, feedback_days: range) -> None:
        for day in bars:
            when = START + timedelta(days=day)
            producer.publish(MARKET_BARS, _bar(big, day, 100 + day), key=big, event_time=when)
            if day < 8:
                bar = _bar(small, day, 50 + day)
                producer.publish(MARKET_BARS, bar, key=small, event_time=when)
        for day in feedback_days:
            when = START + timedelta(days=day + 1)
            producer.publish(MARKET_FEEDBACK, _feedback(big, day), key=big, event_time=when)
        producer.flush()

    def consume_until(done: Any) -> None:
        deadline = time.monotonic() + 60
        while not done() and time.monotonic() < deadline:
            loop.poll_once()
            scheduler.join(5)

    # Feedback makes a cycle due on day 5, but 10 bars are not a split yet: the teacher serves.
    publish(range(10), range(8))
    consume_until(lambda: len(scheduler.feedback) >= 8)
    assert calls == [] and scheduler.last_cycle_day is None
    publish(range(10, needed + 10), range(8, needed + 9))
    malformed = _bar(big, 999, -1.0)  # to the .dlq
    producer.publish(MARKET_BARS, malformed, key=big, event_time=START)
    producer.flush()
    consume_until(lambda: bool(calls))
    loop.close()
    producer.close()

    assert StreamHistory(tmp_path).bar_counts() == {big: needed + 10, small: 8}
    assert calls, "no cycle ran on the streamed bars"
    cycle_settings, prices = calls[0]
    assert cycle_settings.ticker == big, "the ticker with the most bars"
    assert prices.index[0] == pd.Timestamp(START) and len(prices) >= needed
    newest = max(r.decision_time for r in scheduler.feedback.records()).date()
    assert all(p.index[-1].date() <= newest for _, p in calls), "a bar after the cycle's day"
    # the other ticker comes along for the one student (the cycle leaves it out if it has
    # too few bars in the stretch: test_trainer_cycle), known by the same day only
    assert list(peers[0]) == [small] and len(peers[0][small]) == 8
    records = CycleLog(tmp_path / "cycles.jsonl").records()
    assert records and records[0]["data_source"] == "kafka"
    assert records[0]["tickers"] == [big, small], "the fake cycle names none: the planned ones"
    assert loop.stats.dead_lettered >= 1


def test_the_training_ticker_is_the_one_with_the_most_bars(tmp_path: Path) -> None:
    """Without RLMF_TRAINER_TICKER a streaming trainer trains on the ticker with the most bars
    (the first by name on a tie); a named one wins; none before any bar."""
    history = StreamHistory(tmp_path)
    assert history.training_ticker(None) is None
    for ticker, bars in (("AAA", 3), ("BBB", 5), ("CCC", 5)):
        store = history.stores.setdefault(ticker, BarStore(tmp_path / f"{ticker}.csv"))
        for day in range(bars):
            store.add(START + timedelta(days=day), (1.0, 1.0, 1.0, 1.0, 1.0))
    assert history.training_ticker(None) == "BBB"
    assert history.training_ticker("AAA") == "AAA"

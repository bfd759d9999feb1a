"""The simulator service over the real broker: feedback timing, watermark waits, fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from services.common import envelope as envelopes
from services.common import topics
from services.common.broker import free_port
from services.common.bus import Producer, ensure_topics
from services.common.envelope import set_time
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.simulator.service import Replay, live_loop
from services.simulator.settings import SimulatorSettings
from tests.helpers import wait_until


class TopicReader:
    """Reads one topic from the beginning and keeps the decoded envelopes keyed by `key`."""

    def __init__(self, bus: BusSettings, topic: str, key: str) -> None:
        ensure_topics(bus, [topic], "test")
        self.topic, self.key = topic, key
        self.consumer = KafkaConsumer(bootstrap_servers=bus.bootstrap, enable_auto_commit=False)
        parts = sorted(self.consumer.partitions_for_topic(topic) or [])
        tps = [TopicPartition(topic, p) for p in parts]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.items: list[envelopes.Envelope] = []
        self.headers: list[dict[str, bytes]] = []

    def poll(self) -> list[envelopes.Envelope]:
        for records in self.consumer.poll(timeout_ms=100).values():
            for r in records:
                # The session broker is shared: other tests put their own (sometimes malformed on
                # purpose) messages on the same topics, under other keys.
                if r.key != self.key.encode():
                    continue
                # A .dlq twin carries the original bytes of its source topic's payload type.
                env = envelopes.decode(
                    r.value, topics.payload_type(self.topic.removesuffix(topics.DLQ_SUFFIX))
                )
                if env.key == self.key:
                    self.headers.append(dict(r.headers or []))
                    self.items.append(env)
        return self.items

    def wait_for(
        self, predicate: Callable[[list[envelopes.Envelope]], bool], timeout_s: float = 20.0
    ) -> list[envelopes.Envelope]:
        # poll() blocks up to 100 ms itself, so no pause between tries.
        wait_until(
            lambda: predicate(self.poll()), timeout_s, f"{self.topic} for {self.key}", interval_s=0
        )
        return self.items

    def close(self) -> None:
        self.consumer.close()


def _bar(ticker: str, day: int, close: float) -> pb.Bar:
    start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=day)
    bar = pb.Bar(
        ticker=ticker,
        open=close * 0.99,
        high=close * 1.01,
        low=close * 0.98,
        close=close,
        volume=1000,
    )
    set_time(bar.start, start)
    set_time(bar.end, start + timedelta(days=1))
    return bar


def _ts(env: envelopes.Envelope, field: str) -> datetime:
    return envelopes.to_datetime(getattr(env.payload, field))


def test_feedback_for_t_appears_only_after_t_plus_1s_bar(
    bus_settings: BusSettings, unique: str
) -> None:
    ticker = f"T{unique.upper()}"
    settings = SimulatorSettings(
        mode="live",
        tickers=[ticker],
        wait_for_features=False,
        group_id=f"sim-{unique}",
        baseline_policy="random",
        seed=3,
    )
    loop = live_loop(settings, bus_settings)
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    producer = Producer(bus_settings, "test")
    decisions = TopicReader(bus_settings, topics.TRADING_DECISIONS, ticker)
    feedback = TopicReader(bus_settings, topics.MARKET_FEEDBACK, ticker)
    closes = [100.0, 103.0, 101.0, 104.0]
    try:
        for day, close in enumerate(closes):
            bar = _bar(ticker, day, close)
            producer.publish(topics.MARKET_BARS, bar, key=ticker, event_time=_ts_of(bar))
            producer.flush()
            decisions.wait_for(lambda items, n=day + 1: len(items) >= n)
            # The feedback for day-1 was flushed with bar day's decision; wait until this
            # reader has fetched it (a fixed sleep was flaky on a loaded machine), then give a
            # wrongly early feedback for `day` itself time to show up too.
            feedback.wait_for(lambda items, n=day: len(items) >= n)
            time.sleep(0.3)
            got = feedback.poll()
            # After bar `day`, feedback exists exactly for days 0..day-1: never for `day` itself.
            assert [_ts(f, "decision_time").day for f in got] == [1 + d for d in range(day)]
            if day:
                last = got[-1].payload
                assert _ts(got[-1], "realised_time") == _ts_of(bar)
                assert last.realised_return == pytest.approx(close / closes[day - 1] - 1.0)
                assert last.action in ("sell", "hold", "buy") and ticker in last.state
        # An out-of-order bar is dead-lettered with its reason, and the loop keeps going.
        dlq = TopicReader(bus_settings, topics.dlq(topics.MARKET_BARS), ticker)
        stale = _bar(ticker, 1, 99.0)
        producer.publish(topics.MARKET_BARS, stale, key=ticker, event_time=_ts_of(stale))
        producer.flush()
        dlq.wait_for(lambda items: len(items) >= 1)
        assert b"is not after the previous bar" in dlq.headers[0]["rlmf-error"]
        time.sleep(0.3)
        assert len(dlq.poll()) == 1  # only the stale bar of this ticker
        dlq.close()
    finally:
        loop.request_stop()
        runner.join(timeout=20)
        producer.close()
        decisions.close()
        feedback.close()
    # The session broker's market.bars.v1 also carries other tests' bars (some malformed on
    # purpose), so the loop's own totals are checked for reconciliation, not exact counts.
    s = loop.stats
    assert s.dead_lettered >= 1 and s.consumed == s.handled + s.duplicates + s.dead_lettered


def _ts_of(bar: pb.Bar) -> datetime:
    return envelopes.to_datetime(bar.start)


def _csv(tmp_path: Path, name: str, closes: list[float]) -> Path:
    rows = ["date,open,high,low,close,volume"]
    for i, c in enumerate(closes):
        rows.append(f"2024-01-{i + 1:02d},{c * 0.995},{c * 1.01},{c * 0.99},{c},100")
    path = tmp_path / f"{name}.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _features_service(bus: BusSettings, ticker: str, stop: threading.Event, delay_s: float) -> None:
    """Stands in for nothing: a real consumer/producer pair that marks each bar's features ready."""
    bars = TopicReader(bus, topics.MARKET_BARS, ticker)
    producer = Producer(bus, "features-test")
    seen = 0
    try:
        while not stop.is_set():
            items = bars.poll()
            for env in items[seen:]:
                time.sleep(delay_s)
                msg = pb.FeaturesReady(ticker=ticker, feature_service="test")
                msg.watermark.CopyFrom(env.payload.end)  # as the features service stamps it
                producer.publish(
                    topics.FEATURES_READY,
                    msg,
                    key=ticker,
                    event_time=envelopes.to_datetime(env.payload.start),
                )
                producer.flush()
            seen = len(items)
    finally:
        producer.close()
        bars.close()


@pytest.mark.slow  # over 2.5 s of processes and broker round trips
def test_replay_waits_for_each_watermark_and_publishes_everything(
    bus_settings: BusSettings, unique: str, tmp_path: Path
) -> None:
    ticker = f"R{unique.upper()}"
    closes = [50.0, 51.0, 49.5, 52.0, 53.0, 52.5]
    settings = SimulatorSettings(
        mode="replay",
        prices_csv=_csv(tmp_path, ticker, closes),
        ticker=ticker,
        wait_for_features=True,
        features_timeout_s=20,
        baseline_policy="buy-and-hold",
    )
    stop = threading.Event()
    features = threading.Thread(
        target=_features_service, args=(bus_settings, ticker, stop, 0.2), daemon=True
    )
    features.start()
    try:
        assert Replay(settings, bus_settings).run() == len(closes)
    finally:
        stop.set()
        features.join(timeout=10)
    readers = {
        t: TopicReader(bus_settings, t, ticker)
        for t in (*SERVICE_OUTPUTS, topics.FEATURES_READY, topics.MARKET_BARS)
    }
    n = len(closes)
    got = {
        t: r.wait_for(lambda items, t=t: len(items) >= EXPECTED[t](n)) for t, r in readers.items()
    }
    for r in readers.values():
        r.close()
    assert len(got[topics.MARKET_BARS]) == n and len(got[topics.MARKET_FEEDBACK]) == n - 1
    ready_at = {_ts(e, "watermark"): e.produce_time for e in got[topics.FEATURES_READY]}
    end_of = {_ts(e, "start"): _ts(e, "end") for e in got[topics.MARKET_BARS]}
    for d in got[topics.TRADING_DECISIONS]:
        # Each decision was made only after its bar's features were marked ready.
        assert d.produce_time >= ready_at[end_of[_ts(d, "decision_time")]]
    bar_at = {_ts(e, "start"): e.produce_time for e in got[topics.MARKET_BARS]}
    for f in got[topics.MARKET_FEEDBACK]:
        assert f.produce_time >= bar_at[_ts(f, "realised_time")] > bar_at[_ts(f, "decision_time")]
    fills = got[topics.TRADING_FILLS]
    assert len(fills) == 1 and fills[0].payload.price == pytest.approx(
        closes[1] * 0.995
    )  # B&H: next open
    last = got[topics.PORTFOLIO_SNAPSHOTS][-1].payload
    assert last.net_worth == pytest.approx(last.cash + last.positions[0].quantity * closes[-1])


SERVICE_OUTPUTS = (
    topics.TRADING_DECISIONS,
    topics.TRADING_FILLS,
    topics.PORTFOLIO_SNAPSHOTS,
    topics.MARKET_FEEDBACK,
)
EXPECTED: dict[str, Callable[[int], int]] = {
    topics.TRADING_DECISIONS: lambda n: n,
    topics.TRADING_FILLS: lambda n: 1,
    topics.PORTFOLIO_SNAPSHOTS: lambda n: n,
    topics.MARKET_FEEDBACK: lambda n: n - 1,
    topics.FEATURES_READY: lambda n: n,
    topics.MARKET_BARS: lambda n: n,
}


def test_unreachable_policy_server_holds_and_the_replay_finishes(
    bus_settings: BusSettings, unique: str, tmp_path: Path
) -> None:
    ticker = f"P{unique.upper()}"
    settings = SimulatorSettings(
        mode="replay",
        prices_csv=_csv(tmp_path, ticker, [10.0, 11.0, 12.0, 11.5]),
        ticker=ticker,
        wait_for_features=False,
        policy_url=f"http://127.0.0.1:{free_port()}",
        policy_timeout_s=1,
    )
    assert Replay(settings, bus_settings).run() == 4
    reader = TopicReader(bus_settings, topics.TRADING_DECISIONS, ticker)
    decisions = reader.wait_for(lambda items: len(items) >= 4)
    reader.close()
    assert {d.payload.action for d in decisions} == {"hold"}
    assert all(d.payload.fallback_reason.startswith("http_error") for d in decisions)


def test_entrypoint_replays_the_generator_and_exits_cleanly(
    bus_settings: BusSettings, unique: str
) -> None:
    ticker = f"G{unique.upper()}"
    env = {
        **os.environ,
        "RLMF_SIMULATOR_DAYS": "20",
        "RLMF_SIMULATOR_SCENARIO": "regime-shift",
        "RLMF_SIMULATOR_TICKER": ticker,
        "RLMF_SIMULATOR_WAIT_FOR_FEATURES": "false",
        "RLMF_HTTP_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.simulator"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reader = TopicReader(bus_settings, topics.TRADING_DECISIONS, ticker)
    decisions = reader.wait_for(lambda items: len(items) >= 20)
    reader.close()
    assert len(decisions) == 20 and "replay finished after 20 bars" in done.stdout + done.stderr


def test_market_publish_sends_every_bar(
    bus_settings: BusSettings, unique: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from services.simulator.market_cli import app

    ticker = f"M{unique.upper()}"
    csv = _csv(tmp_path, ticker, [5.0, 5.5, 6.0])
    result = CliRunner().invoke(
        app,
        [
            "publish",
            "--prices",
            str(csv),
            "--as-fast-as-possible",
            "--bootstrap",
            bus_settings.bootstrap,
        ],
    )
    assert result.exit_code == 0, result.output
    reader = TopicReader(bus_settings, topics.MARKET_BARS, ticker)
    bars = reader.wait_for(lambda items: len(items) >= 3)
    reader.close()
    assert [b.payload.close for b in bars] == [5.0, 5.5, 6.0]
    assert all(_ts(b, "end") - _ts(b, "start") == timedelta(days=1) for b in bars)

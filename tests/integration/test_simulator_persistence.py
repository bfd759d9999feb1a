"""Live mode keeps its account across a restart: a SIGKILLed simulator resumes exactly.

Each test compares what the simulator published (read back from the real broker, de-duplicated
on envelope id) with the outputs of one uninterrupted in-process run over the same bars."""

from __future__ import annotations

import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from prometheus_client import REGISTRY

from services.common import envelope as envelopes
from services.common import topics
from services.common.broker import free_port
from services.common.bus import LoopStats, Producer, ensure_topics
from services.common.envelope import set_time
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.simulator.service import OUTPUT_TOPICS, Trader, bar_from_pb, build_policy, live_loop
from services.simulator.settings import SimulatorSettings
from services.simulator.state_store import StateFile, StateFileError
from tests.helpers import read_topic, spawn_service, stop_process, wait_until


def _bars(ticker: str, n: int, seed: int = 5) -> list[pb.Bar]:
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, 0.02, n)))
    out = []
    for day, close in enumerate(closes):
        start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=day)
        bar = pb.Bar(
            ticker=ticker,
            open=float(close) * 0.995,
            high=float(close) * 1.01,
            low=float(close) * 0.98,
            close=float(close),
            volume=1000,
        )
        set_time(bar.start, start)
        set_time(bar.end, start + timedelta(days=1))
        out.append(bar)
    return out


def _publish(bus: BusSettings, bars: list[pb.Bar]) -> None:
    producer = Producer(bus, "test")
    for bar in bars:
        producer.publish(
            topics.MARKET_BARS, bar, key=bar.ticker, event_time=bar.start.ToDatetime(UTC)
        )
    producer.close()


def _settings(ticker: str, unique: str, state_file: Path) -> SimulatorSettings:
    # The random baseline: its generator is state too, so a restart that forgot it would
    # decide differently from the uninterrupted run.
    return SimulatorSettings(
        mode="live",
        tickers=[ticker],
        wait_for_features=False,
        group_id=f"sim-{unique}",
        baseline_policy="random",
        seed=3,
        state_file=state_file,
    )


def _reference(settings: SimulatorSettings, bars: list[pb.Bar]) -> dict[str, Any]:
    """id -> payload of every output of one uninterrupted run (no bus, no restart)."""
    trader = Trader(settings, build_policy(settings), None)
    outputs = [o for bar in bars for o in trader.on_bar(bar_from_pb(bar))]
    ids = [o.id for o in outputs if o.id is not None]
    assert len(ids) == len(outputs), "every output of a bar carries its derived id"
    return dict(zip(ids, (o.payload for o in outputs), strict=True))


def _published(bus: BusSettings, ticker: str) -> tuple[dict[str, Any], int]:
    """id -> payload of the ticker's outputs on the broker, and how many records they were."""
    unique, records = {}, 0
    for topic in OUTPUT_TOPICS:
        for r in read_topic(bus.bootstrap, topic):
            if r.key == ticker.encode():
                env = envelopes.decode(r.value, topics.payload_type(topic))
                unique[env.id] = env.payload
                records += 1
    return unique, records


def _decisions(bus: BusSettings, ticker: str) -> int:
    records = read_topic(bus.bootstrap, topics.TRADING_DECISIONS)
    return len({r.value for r in records if r.key == ticker.encode()})


def _assert_same_run(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want), "the outputs' ids differ from the uninterrupted run's"
    differing = [i for i in want if got[i] != want[i]]
    assert not differing, f"{len(differing)} outputs differ, e.g. {got[differing[0]]}"


def _spawn(
    settings: SimulatorSettings, bus: BusSettings, state_file: Path, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        "RLMF_BUS_BOOTSTRAP": bus.bootstrap,
        "RLMF_BUS_GROUP_PROTOCOL": "manual",
        "RLMF_BUS_POLL_TIMEOUT_MS": "100",
        # One bar per batch: each is flushed, saved and committed on its own, so the restart
        # starts from a committed offset past the first bars, not from the beginning.
        "RLMF_BUS_MAX_RECORDS": "1",
        "RLMF_HTTP_PORT": str(free_port()),
        "RLMF_SIMULATOR_MODE": "live",
        "RLMF_SIMULATOR_TICKERS": f'["{settings.tickers[0]}"]',
        "RLMF_SIMULATOR_WAIT_FOR_FEATURES": "false",
        "RLMF_SIMULATOR_GROUP_ID": settings.group_id,
        "RLMF_SIMULATOR_BASELINE_POLICY": settings.baseline_policy,
        "RLMF_SIMULATOR_SEED": str(settings.seed),
        "RLMF_SIMULATOR_STATE_FILE": str(state_file),
    }
    # Appended: the restarted process's lines follow the killed one's.
    return spawn_service("services.simulator", env, log, append=True)


@pytest.mark.slow  # two simulator processes: about 15 s
def test_sigkilled_live_simulator_resumes_its_account_exactly(
    bus_settings: BusSettings, unique: str, tmp_path: Path
) -> None:
    ticker = f"P{unique.upper()}"
    state_file = tmp_path / "simulator-state.json"
    settings = _settings(ticker, unique, state_file)
    ensure_topics(bus_settings, [topics.MARKET_BARS, *OUTPUT_TOPICS])
    bars = _bars(ticker, 40)
    # The first process sees 15 bars only, so the kill lands after its 15th decision however
    # fast it runs; the restart then gets the other 25.
    _publish(bus_settings, bars[:15])
    log = tmp_path / "simulator.log"
    first = _spawn(settings, bus_settings, state_file, log)
    try:
        wait_until(
            lambda: _decisions(bus_settings, ticker) >= 15,
            60,
            "15 decisions before the kill",
            process=first,
            log=log,
        )
    finally:
        first.send_signal(signal.SIGKILL)  # no chance to save or commit anything more
        first.wait()
    _publish(bus_settings, bars[15:])
    second = _spawn(settings, bus_settings, state_file, log)
    try:
        wait_until(
            lambda: _decisions(bus_settings, ticker) >= 40,
            60,
            "all 40 decisions after the restart",
            process=second,
            log=log,
        )
    finally:
        assert stop_process(second) == 0
    got, _ = _published(bus_settings, ticker)
    # Cash, position, price history, the pending feedback and the policy's generator all
    # carried over: every output equals the uninterrupted run's, snapshots included.
    _assert_same_run(got, _reference(settings, bars))
    assert not _dead_letters(bus_settings, ticker)


def _dead_letters(bus: BusSettings, ticker: str) -> list[Any]:
    dead = read_topic(bus.bootstrap, topics.dlq(topics.MARKET_BARS))
    return [r for r in dead if r.key == ticker.encode()]


def _rewind_group(bus: BusSettings, group: str) -> None:
    """Commit offset 0 on every partition of market.bars.v1 for `group`: what a SIGKILL after
    the outputs' flush and before the offset commit leaves behind."""
    consumer = KafkaConsumer(
        bootstrap_servers=bus.bootstrap, group_id=group, enable_auto_commit=False
    )
    try:
        parts = consumer.partitions_for_topic(topics.MARKET_BARS) or set()
        tps = [TopicPartition(topics.MARKET_BARS, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in tps})
    finally:
        consumer.close()


def _malformed(bar: pb.Bar) -> pb.Bar:
    """A copy of `bar` with a negative close: no session can trade it."""
    bad = pb.Bar()
    bad.CopyFrom(bar)
    bad.close = -1.0
    return bad


def _publish_foreign_records(bus: BusSettings, key: str) -> None:
    """What other tests leave on the session broker's market.bars.v1, which every live
    simulator reads from its start: a record that is no envelope, and a bar sent twice under
    one envelope id."""
    producer = Producer(bus, "test")
    try:
        producer.send_raw(topics.MARKET_BARS, b"\x00not an envelope", key=key, headers=[])
        bar = _bars(key, 1)[0]
        when = bar.start.ToDatetime(UTC)
        bar_id = producer.publish(topics.MARKET_BARS, bar, key=key, event_time=when)
        producer.publish(topics.MARKET_BARS, bar, key=key, event_time=when, id=bar_id)
    finally:
        producer.close()


def _already_traded() -> float:
    return REGISTRY.get_sample_value("rlmf_simulator_bars_already_traded_total") or 0.0


def _totals(stats: LoopStats) -> tuple[int, int, int, int]:
    return stats.consumed, stats.handled, stats.duplicates, stats.dead_lettered


def test_bars_redelivered_after_a_lost_commit_are_not_traded_twice(
    bus_settings: BusSettings, unique: str, tmp_path: Path
) -> None:
    ticker, foreign = f"R{unique.upper()}", f"F{unique.upper()}"
    settings = _settings(ticker, unique, tmp_path / "simulator-state.json")
    bars = _bars(ticker, 30, seed=8)
    _publish_foreign_records(bus_settings, foreign)
    _publish(bus_settings, [*bars[:10], _malformed(bars[10]), *bars[10:20]])
    first = live_loop(settings, bus_settings)
    first.run(idle_timeout_s=1.0)
    _rewind_group(bus_settings, settings.group_id)
    _publish(bus_settings, bars[20:])
    skipped_before = _already_traded()
    second = live_loop(settings, bus_settings)
    second.run(idle_timeout_s=1.0)

    got, records = _published(bus_settings, ticker)
    _assert_same_run(got, _reference(settings, bars))
    assert records == len(got), "a re-delivered bar was traded again"
    # The 20 good re-delivered bars were recognised from the saved offsets and dropped...
    assert _already_traded() - skipped_before == 20
    # ... and none was dead-lettered as "not after the previous bar": this ticker's dead
    # letters are the malformed bar's, once per delivery, as the foreign undecodable record's.
    reasons = [r.headers["rlmf-error"].decode() for r in _dead_letters(bus_settings, ticker)]
    assert len(reasons) == 2 and all("is not a positive price" in r for r in reasons), reasons
    assert len(_dead_letters(bus_settings, foreign)) == 2
    for stats in (first.stats, second.stats):
        assert stats.consumed == stats.handled + stats.duplicates + stats.dead_lettered, stats
    # The second run re-read all the first read, plus the 10 new bars (nothing else publishes
    # to market.bars.v1 meanwhile): each re-delivery got its first delivery's answer, so the
    # only new work is those 10 bars, handled.
    grown = [b - a for a, b in zip(_totals(first.stats), _totals(second.stats), strict=True)]
    assert grown == [10, 10, 0, 0], (first.stats, second.stats)


def test_a_state_file_that_cannot_be_read_stops_the_start(
    bus_settings: BusSettings, unique: str, tmp_path: Path
) -> None:
    state = tmp_path / "simulator-state.json"
    state.write_text('{"version": 1, "sessions": ')  # what a torn write would leave
    with pytest.raises(StateFileError, match="unreadable simulator state"):
        live_loop(_settings(f"S{unique.upper()}", unique, state), bus_settings)
    state.write_text('{"version": 99}')
    with pytest.raises(StateFileError, match="state format 99"):
        StateFile(state).load()

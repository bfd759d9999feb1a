"""The bus against the real embedded broker: round trip, crashes, dead letters, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common import envelope as envelopes
from services.common.bus import ConsumerLoop, Outgoing, Producer, ValidationFailed, ensure_topics
from services.common.pb.rlmf.v1 import envelope_pb2
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from tests.helpers import read_topic, wait_until

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 1, 2, 21, 0, tzinfo=UTC)


def news(i: int, headline: str = "steady") -> pb.NewsItem:
    return pb.NewsItem(item_id=f"n{i}", ticker="MSFT", headline=headline)


def publish_news(settings: BusSettings, topic: str, count: int, start: int = 0) -> list[str]:
    producer = Producer(settings, "test")
    ids = [
        producer.publish(topic, news(i), key="MSFT", event_time=NOW)
        for i in range(start, start + count)
    ]
    producer.close()
    return ids


def decoded(bootstrap: str, topic: str, payload_type: type) -> list[envelopes.Envelope]:
    return [envelopes.decode(r.value, payload_type) for r in read_topic(bootstrap, topic)]


def start_echo(
    settings: BusSettings,
    in_topic: str,
    out_topic: str,
    delay_s: float = 0.0,
    max_records: int = 100,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RLMF_BUS_BOOTSTRAP": settings.bootstrap,
        "RLMF_BUS_GROUP_PROTOCOL": "manual",
        "RLMF_BUS_MAX_RECORDS": str(max_records),
        "RLMF_BUS_POLL_TIMEOUT_MS": "100",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.bus_echo_service",
            in_topic,
            out_topic,
            str(delay_s),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def echo_loop(settings: BusSettings, in_topic: str, out_topic: str) -> ConsumerLoop:
    def handle(message):  # type: ignore[no-untyped-def]
        item = message.payload
        if item.headline == "boom":
            raise RuntimeError("the handler blew up on purpose")
        if item.headline == "invalid":
            raise ValidationFailed("headline 'invalid' is not accepted")
        out = pb.EnrichedNews(item=item, summary=item.headline)
        return [Outgoing(out_topic, out, message.envelope.key, message.envelope.event_time)]

    return ConsumerLoop(
        service="echo-inproc",
        topics=[in_topic],
        settings=settings,
        handle=handle,
        group_id=f"g-{in_topic}",
        create_topics=[out_topic],
        payload_types={in_topic: pb.NewsItem},
    )


def test_round_trip_carries_payload_key_time_and_trace(
    bus_settings: BusSettings, unique: str
) -> None:
    in_topic, out_topic = f"t.in.{unique}", f"t.out.{unique}"
    loop = echo_loop(bus_settings, in_topic, out_topic)
    ids = publish_news(bus_settings, in_topic, 5)
    loop.run(idle_timeout_s=1.5)

    inputs = {e.id: e for e in decoded(bus_settings.bootstrap, in_topic, pb.NewsItem)}
    outputs = decoded(bus_settings.bootstrap, out_topic, pb.EnrichedNews)
    assert set(inputs) == set(ids)
    assert len(outputs) == 5
    for out in outputs:
        assert out.key == "MSFT" and out.event_time == NOW and out.source == "echo-inproc"
        source = next(e for e in inputs.values() if e.payload.item_id == out.payload.item.item_id)
        assert out.trace_id == source.trace_id  # one trace id follows the item end to end
        assert out.id == envelopes.derived_id(source.id, out_topic, 0)
    assert loop.stats.consumed == loop.stats.handled == 5


def test_each_bad_message_is_dead_lettered_with_its_error(
    bus_settings: BusSettings, unique: str
) -> None:
    in_topic, out_topic = f"t.in.{unique}", f"t.out.{unique}"
    loop = echo_loop(bus_settings, in_topic, out_topic)
    producer = Producer(bus_settings, "test")
    producer.publish(in_topic, news(0), key="MSFT", event_time=NOW)
    bad: dict[str, bytes] = {
        "not protobuf": b"\xff\xfe this is not an envelope",
        "unknown schema": _envelope_bytes(schema_version=99),
        "wrong payload": envelopes.encode(
            envelopes.wrap(pb.Bar(ticker="MSFT"), key="MSFT", event_time=NOW, source="t")
        ),
        "no event time": _envelope_bytes(drop_event_time=True),
    }
    for name, raw in bad.items():
        producer.send_raw(in_topic, raw, key="MSFT", headers=[("case", name.encode())])
    producer.publish(
        in_topic, news(1, "boom"), key="MSFT", event_time=NOW, headers=[("case", b"raises")]
    )
    producer.publish(
        in_topic, news(2, "invalid"), key="MSFT", event_time=NOW, headers=[("case", b"invalid")]
    )
    producer.publish(in_topic, news(3), key="MSFT", event_time=NOW)
    producer.close()
    loop.run(idle_timeout_s=1.5)

    dead = {
        r.headers["case"].decode(): r for r in read_topic(bus_settings.bootstrap, in_topic + ".dlq")
    }
    expected_errors = {
        "not protobuf": "not a protobuf rlmf.v1.Envelope",
        "unknown schema": "unknown schema_version 99",
        "wrong payload": "expected rlmf.v1.NewsItem",
        "no event time": "no event_time",
        "raises": "the handler blew up on purpose",
        "invalid": "headline 'invalid' is not accepted",
    }
    assert set(dead) == set(expected_errors)
    for case, text in expected_errors.items():
        assert text in dead[case].headers["rlmf-error"].decode(), case
        assert dead[case].headers["rlmf-source-topic"] == in_topic.encode()
    for case, raw in bad.items():
        assert dead[case].value == raw  # the original bytes, untouched
    good = decoded(bus_settings.bootstrap, out_topic, pb.EnrichedNews)
    assert sorted(e.payload.item.item_id for e in good) == ["n0", "n3"]
    s = loop.stats
    assert s.consumed == 8 == s.handled + s.dead_lettered + s.duplicates
    assert s.dead_lettered == 6


def _envelope_bytes(schema_version: int = 1, drop_event_time: bool = False) -> bytes:
    env = envelopes.wrap(news(9), key="MSFT", event_time=NOW, source="t")
    env.schema_version = schema_version
    if drop_event_time:
        env.ClearField("event_time")
    return env.SerializeToString()


def test_redelivered_envelope_ids_are_dropped(bus_settings: BusSettings, unique: str) -> None:
    in_topic, out_topic = f"t.in.{unique}", f"t.out.{unique}"
    loop = echo_loop(bus_settings, in_topic, out_topic)
    env = envelopes.wrap(news(0), key="MSFT", event_time=NOW, source="t")
    producer = Producer(bus_settings, "test")
    for _ in range(3):  # a producer that re-sent after a timeout
        producer.send_raw(in_topic, envelopes.encode(env), key="MSFT", headers=[])
    producer.close()
    loop.run(idle_timeout_s=1.5)
    assert (loop.stats.handled, loop.stats.duplicates) == (1, 2)
    assert len(read_topic(bus_settings.bootstrap, out_topic)) == 1


@pytest.mark.slow  # over 2.5 s of processes and broker round trips
def test_sigkill_mid_batch_then_restart_loses_nothing(
    bus_settings: BusSettings, unique: str
) -> None:
    in_topic, out_topic = f"t.in.{unique}", f"t.out.{unique}"
    ensure_topics(bus_settings, [in_topic, out_topic])
    ids = publish_news(bus_settings, in_topic, 300)
    worker = start_echo(bus_settings, in_topic, out_topic, delay_s=0.01, max_records=40)
    try:
        wait_until(lambda: len(read_topic(bus_settings.bootstrap, out_topic)) >= 60, what="outputs")
    finally:
        worker.send_signal(signal.SIGKILL)  # mid-batch: some outputs flushed, their offsets not
        worker.wait()
    worker = start_echo(bus_settings, in_topic, out_topic)
    try:

        def all_arrived() -> bool:
            outs = decoded(bus_settings.bootstrap, out_topic, pb.EnrichedNews)
            return len({e.id for e in outs}) >= 300

        wait_until(all_arrived, timeout_s=60, what="all 300 outputs after restart")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    outputs = decoded(bus_settings.bootstrap, out_topic, pb.EnrichedNews)
    unique_outputs = {e.id: e for e in outputs}
    # Every input appears; after de-duplication on envelope id, exactly once.
    assert sorted(envelopes.derived_id(i, out_topic, 0) for i in ids) == sorted(unique_outputs)
    assert sorted(e.payload.item.item_id for e in unique_outputs.values()) == sorted(
        f"n{i}" for i in range(300)
    )


@pytest.mark.slow  # over 2.5 s of processes and broker round trips
def test_sigterm_finishes_batch_commits_and_exits_zero(
    bus_settings: BusSettings, unique: str
) -> None:
    in_topic, out_topic = f"t.in.{unique}", f"t.out.{unique}"
    ensure_topics(bus_settings, [in_topic, out_topic])
    ids = publish_news(bus_settings, in_topic, 200)
    worker = start_echo(bus_settings, in_topic, out_topic, delay_s=0.01, max_records=20)
    try:
        wait_until(lambda: len(read_topic(bus_settings.bootstrap, out_topic)) >= 20, what="outputs")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    first_run = {e.id for e in decoded(bus_settings.bootstrap, out_topic, pb.EnrichedNews)}
    assert 0 < len(first_run) < 200

    # The offsets of everything the first run published were committed: a restart re-processes
    # nothing it already did (no duplicate output ids), and finishes the rest.
    worker = start_echo(bus_settings, in_topic, out_topic)
    try:
        wait_until(lambda: len(read_topic(bus_settings.bootstrap, out_topic)) >= 200, what="rest")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    records = read_topic(bus_settings.bootstrap, out_topic)
    assert len(records) == 200  # no duplicates at all: the commit happened before exit
    assert {envelopes.derived_id(i, out_topic, 0) for i in ids} == {
        envelopes.decode(r.value, pb.EnrichedNews).id for r in records
    }


def test_counts_reconcile_over_a_mixed_stream(bus_settings: BusSettings, unique: str) -> None:
    in_topic, out_topic = f"t.in.{unique}", f"t.out.{unique}"
    loop = echo_loop(bus_settings, in_topic, out_topic)
    producer = Producer(bus_settings, "test")
    for i in range(50):
        headline = "boom" if i % 7 == 0 else "steady"
        producer.publish(in_topic, news(i, headline), key="MSFT", event_time=NOW)
        if i % 10 == 0:
            producer.send_raw(in_topic, b"junk", key="MSFT", headers=[])
    producer.close()
    loop.run(idle_timeout_s=1.5)
    n_in = len(read_topic(bus_settings.bootstrap, in_topic))
    n_out = len(read_topic(bus_settings.bootstrap, out_topic))
    n_dlq = len(read_topic(bus_settings.bootstrap, in_topic + ".dlq"))
    assert n_in == 55 and n_dlq == 8 + 5
    assert n_in == n_out + n_dlq


def test_unknown_topic_without_a_payload_type_is_refused(bus_settings: BusSettings) -> None:
    with pytest.raises(KeyError, match="unknown topic"):
        ConsumerLoop(
            service="x", topics=["no.such.topic"], settings=bus_settings, handle=lambda m: []
        )


def test_envelope_round_trip_keeps_every_field() -> None:
    item = pb.NewsItem(item_id="a", ticker="MSFT", headline="h", synthetic=True)
    env = envelopes.wrap(item, key="MSFT", event_time=NOW, source="ingest", trace_id="t1", id="e1")
    back = envelopes.decode(envelopes.encode(env), pb.NewsItem)
    assert (back.id, back.key, back.source, back.trace_id, back.schema_version) == (
        "e1",
        "MSFT",
        "ingest",
        "t1",
        1,
    )
    assert back.event_time == NOW and back.payload == item
    assert isinstance(env, envelope_pb2.Envelope)

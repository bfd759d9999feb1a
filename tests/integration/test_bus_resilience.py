"""Transient broker trouble is retried, consumer groups work on the embedded broker, and log
lines written while handling a message carry its trace id."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from datetime import UTC, datetime

import pytest

from services.common import envelope as envelopes
from services.common import json_logging
from services.common.broker import EmbeddedBroker, free_port
from services.common.bus import ConsumerLoop, Outgoing, Producer
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from tests.helpers import read_topic

NOW = datetime(2024, 1, 2, 21, 0, tzinfo=UTC)


@pytest.mark.slow  # over 2.5 s of processes and broker round trips
def test_producer_waits_out_a_broker_that_is_not_up_yet() -> None:
    port = free_port()
    late = EmbeddedBroker(port=port)
    starter = threading.Timer(1.5, late.start)
    starter.start()
    try:
        settings = BusSettings(bootstrap=late.bootstrap, retry_attempts=20, retry_max_wait_s=1.0)
        producer = Producer(settings, "test")  # the first attempts fail: nothing listens yet
        ids = [
            producer.publish("late.topic", pb.NewsItem(item_id=str(i)), key="MSFT", event_time=NOW)
            for i in range(10)
        ]
        producer.close()
        values = [
            envelopes.decode(r.value, pb.NewsItem).id
            for r in read_topic(late.bootstrap, "late.topic")
        ]
        assert sorted(values) == sorted(ids)
    finally:
        starter.join()
        late.stop()


@pytest.mark.slow  # over 2.5 s of processes and broker round trips
def test_consumer_group_protocol_joins_and_commits(bus_settings: BusSettings, unique: str) -> None:
    # Group mode (the cluster default): the embedded broker completes a join only when the
    # rebalance timeout (max_poll_interval_ms) runs out, so it is kept short here.
    settings = bus_settings.model_copy(
        update={"group_protocol": "group", "max_poll_interval_ms": 2000, "session_timeout_ms": 2000}
    )
    in_topic, out_topic = f"g.in.{unique}", f"g.out.{unique}"

    def handle(message):  # type: ignore[no-untyped-def]
        out = pb.EnrichedNews(item=message.payload)
        return [Outgoing(out_topic, out, message.envelope.key, message.envelope.event_time)]

    def loop() -> ConsumerLoop:
        return ConsumerLoop(
            service="group-test",
            topics=[in_topic],
            settings=settings,
            handle=handle,
            create_topics=[out_topic],
            payload_types={in_topic: pb.NewsItem},
        )

    first = loop()
    producer = Producer(settings, "test")
    for i in range(20):
        producer.publish(in_topic, pb.NewsItem(item_id=str(i)), key="MSFT", event_time=NOW)
    producer.close()
    started = time.monotonic()
    first.run(max_messages=20, idle_timeout_s=15)
    assert first.stats.handled == 20, f"joined and handled only {first.stats.handled} in time"
    assert time.monotonic() - started < 15
    second = loop()  # same group: the committed offsets mean nothing is handled again
    second.run(idle_timeout_s=4)
    assert second.stats.consumed == 0
    assert len(read_topic(settings.bootstrap, out_topic)) == 20


def test_log_lines_carry_the_trace_id_of_the_message(
    bus_settings: BusSettings, unique: str
) -> None:
    in_topic, out_topic = f"l.in.{unique}", f"l.out.{unique}"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_logging.JsonFormatter("log-test"))
    logger = logging.getLogger("log-test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def handle(message):  # type: ignore[no-untyped-def]
        logger.info("handling %s", message.payload.item_id)
        return []

    loop = ConsumerLoop(
        service="log-test",
        topics=[in_topic],
        settings=bus_settings,
        handle=handle,
        create_topics=[out_topic],
        payload_types={in_topic: pb.NewsItem},
    )
    producer = Producer(bus_settings, "test")
    producer.publish(
        in_topic, pb.NewsItem(item_id="x"), key="MSFT", event_time=NOW, trace_id="trace-42"
    )
    producer.close()
    loop.run(idle_timeout_s=1.5)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines and lines[0]["msg"] == "handling x"
    assert lines[0]["trace_id"] == "trace-42" and lines[0]["service"] == "log-test"

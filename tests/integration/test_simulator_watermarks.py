"""The simulator's features.ready.v1 follower (services/simulator/service.WatermarkTracker) over
the real broker: a watermark it cannot decode goes to the .dlq twin with its bytes, key and the
reason, and the ticker's next good watermark still releases the wait."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from kafka.errors import KafkaConnectionError

from services.common import topics
from services.common.bus import Producer
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.simulator import service
from services.simulator.service import WatermarkTracker
from tests.helpers import read_topic, wait_until


def test_an_undecodable_watermark_is_dead_lettered_and_the_next_one_counts(
    bus_settings: BusSettings,
) -> None:
    ticker = f"WM{uuid.uuid4().hex[:8].upper()}"
    close = datetime(2024, 3, 4, 21, tzinfo=UTC)
    tracker = WatermarkTracker(bus_settings)
    producer = Producer(bus_settings, "test")
    try:
        garbage = b"\x00not an envelope"
        producer.send_raw(topics.FEATURES_READY, garbage, key=ticker, headers=[("h", b"1")])
        producer.flush()
        assert not tracker.wait(ticker, close, timeout_s=1.0), "garbage must not release a wait"
        mark = pb.FeaturesReady(ticker=ticker, feature_service="test")
        mark.watermark.FromDatetime(close)
        producer.publish(topics.FEATURES_READY, mark, key=ticker, event_time=close)
        producer.flush()
        assert tracker.wait(ticker, close, timeout_s=20.0)

        def dead_letters() -> list:
            return [
                r
                for r in read_topic(bus_settings.bootstrap, topics.dlq(topics.FEATURES_READY))
                if r.key == ticker.encode()
            ]

        wait_until(dead_letters, timeout_s=20.0, what="the garbage on features.ready.v1.dlq")
        (letter,) = dead_letters()
        assert letter.value == garbage and letter.headers["h"] == b"1"
        assert letter.headers["rlmf-source-topic"] == topics.FEATURES_READY.encode()
        assert letter.headers["rlmf-failed-by"] == b"simulator"
        assert letter.headers["rlmf-error"], "the reason travels with the message"
    finally:
        producer.close()
        tracker.close()


def test_a_dead_letter_the_broker_refuses_is_kept_and_sent_later(
    bus_settings: BusSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dead-letter producer's first connect fails (injected: the broker cannot be made to
    refuse one client here). The follower keeps following, and the bad message lands later."""
    real_producer = service.Producer
    refusals: list[str] = []

    def refuse_once(bus: BusSettings, name: str) -> Producer:
        if not refusals:
            refusals.append(name)
            raise KafkaConnectionError("injected: the broker is unreachable")
        return real_producer(bus, name)

    monkeypatch.setattr(service, "Producer", refuse_once)
    monkeypatch.setattr(service, "DEAD_LETTER_RETRY_S", 0.5)
    ticker = f"WM{uuid.uuid4().hex[:8].upper()}"
    close = datetime(2024, 3, 5, 21, tzinfo=UTC)
    tracker = WatermarkTracker(bus_settings)
    producer = real_producer(bus_settings, "test")
    try:
        producer.send_raw(topics.FEATURES_READY, b"\x00bad", key=ticker, headers=[])
        producer.flush()
        wait_until(lambda: refusals, timeout_s=20.0, what="the injected refusal")
        mark = pb.FeaturesReady(ticker=ticker, feature_service="test")
        mark.watermark.FromDatetime(close)
        producer.publish(topics.FEATURES_READY, mark, key=ticker, event_time=close)
        producer.flush()
        assert tracker.wait(ticker, close, timeout_s=20.0), "the follower died with the refusal"

        def dead_letters() -> list:
            return [
                r
                for r in read_topic(bus_settings.bootstrap, topics.dlq(topics.FEATURES_READY))
                if r.key == ticker.encode()
            ]

        wait_until(dead_letters, timeout_s=20.0, what="the held message on the .dlq twin")
        assert [r.value for r in dead_letters()] == [b"\x00bad"]
    finally:
        producer.close()
        tracker.close()


def test_held_dead_letters_are_bounded_and_none_is_lost(
    bus_settings: BusSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the broker refuses the dead-letter producer (injected, as above), the follower
    holds at most DEAD_LETTER_HOLD_MAX bad messages and stops reading; once the broker takes
    them, every bad message lands once, in order, and the watermark behind them counts."""
    real_producer = service.Producer
    broker_down = threading.Event()
    broker_down.set()

    def refuse_while_down(bus: BusSettings, name: str) -> Producer:
        if broker_down.is_set():
            raise KafkaConnectionError("injected: the broker is unreachable")
        return real_producer(bus, name)

    monkeypatch.setattr(service, "Producer", refuse_while_down)
    monkeypatch.setattr(service, "DEAD_LETTER_RETRY_S", 0.2)
    monkeypatch.setattr(service, "DEAD_LETTER_HOLD_MAX", 3)
    ticker = f"WM{uuid.uuid4().hex[:8].upper()}"
    close = datetime(2024, 3, 5, 21, tzinfo=UTC)
    bad = [b"\x00bad-%d" % i for i in range(8)]
    tracker = WatermarkTracker(bus_settings)
    producer = real_producer(bus_settings, "test")
    try:
        for value in bad:
            producer.send_raw(topics.FEATURES_READY, value, key=ticker, headers=[])
        mark = pb.FeaturesReady(ticker=ticker, feature_service="test")
        mark.watermark.FromDatetime(close)
        producer.publish(topics.FEATURES_READY, mark, key=ticker, event_time=close)
        producer.flush()
        wait_until(lambda: tracker.held_dead_letters == 3, timeout_s=20.0, what="3 held letters")
        held_seen = []
        for _ in range(20):  # two seconds of the follower retrying against a refusing broker
            held_seen.append(tracker.held_dead_letters)
            time.sleep(0.1)
        assert max(held_seen) == 3, f"the follower held {max(held_seen)} letters, over its cap"
        assert not tracker.wait(ticker, close, timeout_s=0.5), "it read past its cap"
        broker_down.clear()
        assert tracker.wait(ticker, close, timeout_s=30.0), "the watermark behind them was lost"

        def dead_letters() -> list:
            return [
                r.value
                for r in read_topic(bus_settings.bootstrap, topics.dlq(topics.FEATURES_READY))
                if r.key == ticker.encode()
            ]

        wait_until(lambda: len(dead_letters()) >= len(bad), timeout_s=20.0, what="all 8 letters")
        assert dead_letters() == bad
        assert tracker.held_dead_letters == 0
    finally:
        producer.close()
        tracker.close()

"""`helm test` of a running release: one news item and one bar for RLMF_TEST_TICKER in, the
enriched news and the features.ready event for that ticker out, within RLMF_TEST_TIMEOUT_S
seconds. The features service accepts the test ticker; the simulator does not trade it."""

from __future__ import annotations

import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

from kafka import KafkaConsumer, TopicPartition

from services.common import envelope
from services.common.bus import Producer
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.common.topics import (
    FEATURES_READY,
    MARKET_BARS,
    NEWS_ENRICHED,
    NEWS_RAW,
    payload_type,
)


def security_kwargs() -> dict[str, str]:
    """kafka-python's TLS/SASL arguments from the RLMF_BUS_* variables the chart sets when the
    brokers need a login (the consumer below is kafka-python's own)."""
    env = os.environ
    protocol = env.get("RLMF_BUS_SECURITY_PROTOCOL", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return {}
    return {
        "security_protocol": protocol,
        "sasl_mechanism": env["RLMF_BUS_SASL_MECHANISM"],
        "sasl_plain_username": env["RLMF_BUS_SASL_USERNAME"],
        "sasl_plain_password": env["RLMF_BUS_SASL_PASSWORD"],
        "ssl_cafile": env["RLMF_BUS_SSL_CAFILE"],
    }


def _consumer_at_end(settings: BusSettings) -> KafkaConsumer:
    """Assigned to every partition of the output topics, positioned at their ends, so only
    events produced after this point are read."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap, group_id=None, **security_kwargs()
    )
    parts = [
        TopicPartition(topic, p)
        for topic in (NEWS_ENRICHED, FEATURES_READY)
        for p in sorted(consumer.partitions_for_topic(topic) or [])
    ]
    if not parts:
        raise SystemExit(f"topics {NEWS_ENRICHED} and {FEATURES_READY} do not exist")
    consumer.assign(parts)
    consumer.seek_to_end(*parts)
    for part in parts:
        consumer.position(part)
    return consumer


def _publish(settings: BusSettings, ticker: str, now: datetime) -> None:
    news = pb.NewsItem(
        item_id=uuid.uuid4().hex, ticker=ticker, headline=f"{ticker} beats estimates",
        body="helm test item", source_name="helm-test", synthetic=True,
    )
    envelope.set_time(news.published_at, now - timedelta(hours=1))
    bar = pb.Bar(ticker=ticker, open=100, high=101, low=99, close=100.5, volume=1000)
    envelope.set_time(bar.start, now - timedelta(hours=6, minutes=30))
    envelope.set_time(bar.end, now)
    producer = Producer(settings, "helm-test")
    try:
        producer.publish(NEWS_RAW, news, key=ticker, event_time=now - timedelta(hours=1))
        producer.publish(MARKET_BARS, bar, key=ticker, event_time=now)
        producer.flush()
    finally:
        producer.close()


def main() -> int:
    settings = BusSettings()
    deadline = time.monotonic() + float(os.environ.get("RLMF_TEST_TIMEOUT_S", "120"))
    ticker = os.environ.get("RLMF_TEST_TICKER", "")
    if not ticker:
        print("RLMF_TEST_TICKER is not set: which ticker may the test use?", file=sys.stderr)
        return 2
    consumer = _consumer_at_end(settings)
    _publish(settings, ticker, datetime.now(UTC))
    waiting = {NEWS_ENRICHED, FEATURES_READY}
    while waiting and time.monotonic() < deadline:
        for part, records in consumer.poll(timeout_ms=1000).items():
            for record in records:
                env = envelope.decode(record.value, payload_type(part.topic))
                got = env.payload.item.ticker if part.topic == NEWS_ENRICHED else env.payload.ticker
                if got == ticker:
                    waiting.discard(part.topic)
    consumer.close()
    if waiting:
        print(f"FAIL: no {', '.join(sorted(waiting))} event for {ticker} in time", file=sys.stderr)
        return 1
    print(f"ok: news and bar for {ticker} came out enriched and as features")
    return 0


if __name__ == "__main__":
    sys.exit(main())

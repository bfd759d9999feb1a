"""The envelope's and the bus's fast paths give the same answers as the slow ones they replace."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.common import envelope as envelopes
from services.common.bus import _SeenIds
from services.common.pb.rlmf.v1 import payloads_pb2 as pb


def test_new_ids_are_uuid4_hex_and_distinct() -> None:
    ids = [envelopes.new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:50]:
        parsed = uuid.UUID(hex=text)
        assert len(text) == 32 and parsed.hex == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


@pytest.mark.parametrize(
    "when",
    [
        datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 5),  # naive: taken as UTC; before the epoch
        datetime(2024, 6, 1, 12, tzinfo=timezone(timedelta(hours=-5))),
    ],
)
def test_set_time_matches_the_library_conversion(when: datetime) -> None:
    ours, library = Timestamp(), Timestamp()
    envelopes.set_time(ours, when)
    aware = when if when.tzinfo else when.replace(tzinfo=UTC)
    library.FromDatetime(aware.astimezone(UTC))
    assert ours == library


def test_decoded_envelope_reads_header_fields_on_demand() -> None:
    item = pb.NewsItem(item_id="a", ticker="MSFT")
    when = datetime(2024, 3, 4, 5, 6, 7, 890, tzinfo=UTC)
    before = time.time_ns()
    raw = envelopes.encode(
        envelopes.wrap(item, key="MSFT", event_time=when, source="ingest", trace_id="t")
    )
    back = envelopes.decode(raw, pb.NewsItem)
    assert back.event_time == when
    assert before <= back.produce_time_ns <= time.time_ns()
    assert abs(back.produce_time - datetime.now(UTC)) < timedelta(seconds=5)
    assert (back.key, back.source, back.trace_id, back.payload) == ("MSFT", "ingest", "t", item)
    assert "MSFT" in repr(back)


def test_wrong_payload_type_names_both_types() -> None:
    raw = envelopes.encode(
        envelopes.wrap(pb.Bar(ticker="MSFT"), key="MSFT", event_time=datetime.now(UTC), source="x")
    )
    with pytest.raises(
        envelopes.EnvelopeError, match="payload is rlmf.v1.Bar, expected rlmf.v1.NewsItem"
    ):
        envelopes.decode(raw, pb.NewsItem)


def test_seen_ids_forget_the_oldest_first() -> None:
    seen = _SeenIds(capacity=3)
    seen.add_all(["a", "b"])
    seen.add_all(["c", "d"])
    assert "a" not in seen and all(i in seen for i in "bcd")
    seen.add("e")
    assert "b" not in seen and all(i in seen for i in "cde")


def test_with_retries_rides_out_transient_errors_and_raises_the_rest() -> None:
    from kafka.errors import KafkaConnectionError, UnsupportedVersionError

    from services.common.bus import with_retries
    from services.common.settings import BusSettings

    settings = BusSettings(retry_attempts=3, retry_max_wait_s=0.01)
    failures = [KafkaConnectionError("down"), KafkaConnectionError("still down")]

    def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "sent"

    assert with_retries(settings, "test", "send", flaky) == "sent" and not failures

    def broken() -> str:
        raise UnsupportedVersionError("not transient")

    with pytest.raises(UnsupportedVersionError):
        with_retries(settings, "test", "send", broken)

    def down() -> str:
        raise KafkaConnectionError("never up")

    with pytest.raises(KafkaConnectionError):  # attempts run out: the error reaches the caller
        with_retries(settings, "test", "send", down)

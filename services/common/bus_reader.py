"""Reading the run back from the broker: every record of a topic, and a group's committed offsets.

The report and the accounting are built from what is on the bus, not from what a service says
it did, so a lost or duplicated message shows up in them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.message import Message
from kafka import KafkaConsumer, TopicPartition

from services.common import envelope as envelopes
from services.common.pb.rlmf.v1 import envelope_pb2


@dataclass(frozen=True)
class TopicRecord:
    """One record of a topic; `envelope_id` is empty when the bytes are not an envelope."""

    partition: int
    offset: int
    envelope_id: str
    value: bytes
    headers: dict[str, bytes]


def _partitions(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or set())]


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Per partition, the offset `group` has committed on `topic` (0 where it committed none)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {tp.partition: consumer.committed(tp) or 0 for tp in _partitions(consumer, topic)}
    finally:
        consumer.close()


def read_all(
    bootstrap: str, topic: str, timeout_s: float = 30.0, quiet_polls: int = 3
) -> list[TopicRecord]:
    """Every record in `topic`: from the beginning until the end offsets are passed and
    `quiet_polls` polls in a row bring nothing.

    The embedded broker (tansu) can answer ListOffsets(latest) with the base offset of the last
    batch rather than the offset after it, so the end offsets alone would drop that batch.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = _partitions(consumer, topic)
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[TopicRecord] = []
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while quiet < quiet_polls or any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout_s}s")
            batches = consumer.poll(timeout_ms=300)
            quiet = 0 if batches else quiet + 1
            for tp, batch in batches.items():
                out += [_record(tp.partition, r) for r in batch]
        return out
    finally:
        consumer.close()


class Tally:
    """Follows one topic from its beginning: unique envelope ids so far, and the new records."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        tps = _partitions(self._consumer, topic)
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        self.ids: set[str] = set()

    def poll(self) -> list[TopicRecord]:
        """Records not seen before (by envelope id), in arrival order."""
        new = []
        for tp, batch in self._consumer.poll(timeout_ms=100).items():
            for r in batch:
                rec = _record(tp.partition, r)
                if rec.envelope_id not in self.ids:
                    self.ids.add(rec.envelope_id)
                    new.append(rec)
        return new

    @property
    def count(self) -> int:
        return len(self.ids)

    def close(self) -> None:
        self._consumer.close()


def _record(partition: int, r: object) -> TopicRecord:
    raw = getattr(r, "value", b"") or b""
    env = envelope_pb2.Envelope()
    try:
        env.ParseFromString(raw)
        env_id = env.id
    except Exception:  # noqa: BLE001 - junk bytes (e.g. in a DLQ) are counted, not decoded
        env_id = ""
    headers = dict(getattr(r, "headers", None) or [])
    return TopicRecord(partition, getattr(r, "offset", -1), env_id, raw, headers)


@dataclass(frozen=True)
class Event:
    """A decoded message: envelope id, event time, producing service and payload."""

    id: str
    event_time: datetime
    source: str
    payload: Message


def decode_unique(records: list[TopicRecord], payload_type: type[Message]) -> list[Event]:
    """Decoded envelopes with re-deliveries (same id) dropped, in offset order per partition."""
    seen: set[str] = set()
    events: list[Event] = []
    for rec in records:
        if not rec.envelope_id or rec.envelope_id in seen:
            continue
        seen.add(rec.envelope_id)
        env = envelopes.decode(rec.value, payload_type)
        events.append(Event(env.id, env.event_time, env.source, env.payload))
    return events


def wait_drained(
    bootstrap: str,
    pairs: list[tuple[str, str]],
    timeout_s: float,
    check: Callable[[], None] = lambda: None,
) -> dict[str, int]:
    """Wait until each (topic, group) has committed as many offsets as the topic holds records:
    the group has consumed everything sent so far. `check` runs between polls (e.g. raise when
    a service died). Returns the records per topic; TimeoutError names the one behind."""
    deadline = time.monotonic() + timeout_s
    ends: dict[str, int] = {}
    for topic, group in pairs:
        while True:
            end = len(read_all(bootstrap, topic, quiet_polls=1))
            done = sum(committed_offsets(bootstrap, group, topic).values())
            if done >= end:
                ends[topic] = end
                break
            check()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{group} committed {done} of {end} records on {topic} after {timeout_s:.0f}s"
                )
            time.sleep(1.0)
    return ends

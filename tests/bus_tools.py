"""Test helpers: read a whole topic back, and produce test envelopes onto private topics."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from kafka import KafkaConsumer, TopicPartition


@dataclass
class Record:
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    partition: int
    offset: int


def read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[Record]:
    """Every record currently in `topic`, from the beginning to the end offsets."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list[Record] = []
        deadline = datetime.now(UTC).timestamp() + timeout_s
        # The embedded broker may report a partition's end as the start of its last record
        # batch, so reaching the reported end is not enough: keep polling until a poll after
        # it comes back empty.
        quiet_polls = 0
        while quiet_polls < 2 or any(consumer.position(tp) < end[tp] for tp in tps):
            if datetime.now(UTC).timestamp() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout_s}s")
            fetched = consumer.poll(timeout_ms=100)
            quiet_polls = 0 if fetched else quiet_polls + 1
            for tp, batch in fetched.items():
                for r in batch:
                    records.append(
                        Record(r.key, r.value, dict(r.headers or []), tp.partition, r.offset)
                    )
        return records
    finally:
        consumer.close()

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
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if datetime.now(UTC).timestamp() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout_s}s")
            for tp, batch in consumer.poll(timeout_ms=200).items():
                for r in batch:
                    records.append(
                        Record(r.key, r.value, dict(r.headers or []), tp.partition, r.offset)
                    )
        return records
    finally:
        consumer.close()

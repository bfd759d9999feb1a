"""Bus throughput: raw kafka-python against the project's bus, same broker, same run.

Prints one JSON line. Produce: N small protobuf messages then flush; the raw baseline sends the
bare payload with kafka-python's defaults, the bus wraps it in an envelope (ids, times, trace
id) and tracks delivery. Consume: read and parse N messages with a commit per polled batch (the
raw loop commits synchronously, so both pay for at-least-once); the bus also de-duplicates and
dispatches to a handler. `bus_vs_raw_ratio` (the target's figure) compares against that raw
baseline.

A second raw baseline, "raw_same", moves the bus's own bytes (pre-built envelopes) with the bus's
producer batch size and asynchronous commits: the bus against it isolates the per-message work
the bus does in Python, and raw_same against raw shows what the envelope's extra bytes cost.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from datetime import UTC, datetime

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from services.common import envelope as envelopes
from services.common.broker import EmbeddedBroker, free_port
from services.common.bus import ConsumerLoop, Producer, ensure_topics
from services.common.pb.rlmf.v1 import envelope_pb2
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
ROUNDS = 5
NOW = datetime(2024, 1, 2, tzinfo=UTC)


def item(i: int) -> pb.NewsItem:
    return pb.NewsItem(item_id=str(i), ticker="MSFT", headline="Microsoft beats estimates")


def raw_produce(bootstrap: str, topic: str) -> float:
    """The baseline a hand-written service would be: serialise the payload, send, flush."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    items = [item(i) for i in range(N)]
    start = time.perf_counter()
    for payload in items:
        producer.send(topic, value=payload.SerializeToString(), key=b"MSFT")
    producer.flush()
    elapsed = time.perf_counter() - start
    producer.close()
    return N / elapsed


def raw_same_produce(settings: BusSettings, topic: str) -> float:
    """kafka-python sending the bus's bytes (envelopes built beforehand) with its batch size."""
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap,
        acks="all",
        linger_ms=settings.producer_linger_ms,
        batch_size=settings.producer_batch_bytes,
    )
    values = [
        envelopes.encode(envelopes.wrap(item(i), key="MSFT", event_time=NOW, source="bench"))
        for i in range(N)
    ]
    start = time.perf_counter()
    for value in values:
        producer.send(topic, value=value, key=b"MSFT")
    producer.flush()
    elapsed = time.perf_counter() - start
    producer.close()
    return N / elapsed


def bus_produce(settings: BusSettings, topic: str) -> float:
    producer = Producer(settings, "bench")
    items = [item(i) for i in range(N)]
    start = time.perf_counter()
    for payload in items:
        producer.publish(topic, payload, key="MSFT", event_time=NOW)
    producer.flush()
    elapsed = time.perf_counter() - start
    producer.close()
    return N / elapsed


def raw_consume(bootstrap: str, topic: str, group: str, same_as_bus: bool = False) -> float:
    """Parse every payload, commit each polled batch: synchronously (a hand-written loop), or
    with `same_as_bus` asynchronously, parsing the envelope and its payload as the bus does."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
    )
    consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    seen = 0
    start = time.perf_counter()
    while seen < N:
        batch = consumer.poll(timeout_ms=200, max_records=500)
        for tp, records in batch.items():
            seen += len(records)
            offsets = {tp: OffsetAndMetadata(records[-1].offset + 1, "", -1)}
            if same_as_bus:
                for r in records:
                    pb.NewsItem.FromString(envelope_pb2.Envelope.FromString(r.value).payload.value)
                consumer.commit_async(offsets)
            else:
                for r in records:
                    pb.NewsItem.FromString(r.value)
                consumer.commit(offsets)
    elapsed = time.perf_counter() - start
    consumer.close()
    return N / elapsed


def bus_consume(settings: BusSettings, topic: str, group: str) -> float:
    loop = ConsumerLoop(
        service="bench",
        topics=[topic],
        settings=settings,
        handle=lambda m: [],
        group_id=group,
        payload_types={topic: pb.NewsItem},
    )
    start = time.perf_counter()
    while loop.stats.consumed < N:
        loop.poll_once()
    elapsed = time.perf_counter() - start
    loop.close()
    return N / elapsed


def main() -> None:
    kinds = ("raw_p", "same_p", "bus_p", "raw_c", "same_c", "bus_c")
    results: dict[str, list[float]] = {k: [] for k in kinds}
    with EmbeddedBroker(port=free_port()) as broker:
        settings = BusSettings(
            bootstrap=broker.bootstrap, group_protocol="manual", max_records=500, partitions=1
        )
        for r in range(ROUNDS):  # alternate the two so machine noise hits both alike
            raw_topic, same_topic, bus_topic = (f"bench.{k}.{r}" for k in ("raw", "same", "bus"))
            ensure_topics(settings, [raw_topic, same_topic, bus_topic, bus_topic + ".dlq"])
            results["raw_p"].append(raw_produce(broker.bootstrap, raw_topic))
            results["same_p"].append(raw_same_produce(settings, same_topic))
            results["bus_p"].append(bus_produce(settings, bus_topic))
            results["raw_c"].append(raw_consume(broker.bootstrap, raw_topic, f"raw-{r}"))
            results["same_c"].append(
                raw_consume(broker.bootstrap, same_topic, f"same-{r}", same_as_bus=True)
            )
            results["bus_c"].append(bus_consume(settings, bus_topic, f"bus-{r}"))
            print(
                f"round {r}: " + ", ".join(f"{k}={v[-1]:.0f}/s" for k, v in results.items()),
                file=sys.stderr,
            )
    # Rounds alternate raw and bus back to back; the median of the per-round ratios is robust
    # to another process taking the CPU during one measurement.
    best = {k: statistics.median(v) for k, v in results.items()}

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(results[a], results[b], strict=True))

    produce_ratio, consume_ratio = ratio("bus_p", "raw_p"), ratio("bus_c", "raw_c")
    print(
        json.dumps(
            {
                "bench": "bus",
                "messages": N,
                "rounds": ROUNDS,
                "raw_produce_msgs_per_s": round(best["raw_p"]),
                "bus_produce_msgs_per_s": round(best["bus_p"]),
                "raw_consume_msgs_per_s": round(best["raw_c"]),
                "bus_consume_msgs_per_s": round(best["bus_c"]),
                "produce_ratio": round(produce_ratio, 3),
                "consume_ratio": round(consume_ratio, 3),
                "bus_vs_raw_ratio": round(min(produce_ratio, consume_ratio), 3),
                "target": 0.8,
                "raw_same_produce_msgs_per_s": round(best["same_p"]),
                "raw_same_consume_msgs_per_s": round(best["same_c"]),
                "bus_vs_raw_same_produce_ratio": round(ratio("bus_p", "same_p"), 3),
                "bus_vs_raw_same_consume_ratio": round(ratio("bus_c", "same_c"), 3),
                "raw_same_vs_raw_produce_ratio": round(ratio("same_p", "raw_p"), 3),
                "raw_same_vs_raw_consume_ratio": round(ratio("same_c", "raw_c"), 3),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Prometheus metrics shared by every service: message counts, handler latency, lag."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_CONSUMED = Counter(
    "rlmf_messages_consumed_total", "Messages read from a topic", ["service", "topic"]
)
MESSAGES_PRODUCED = Counter(
    "rlmf_messages_produced_total", "Messages written to a topic", ["service", "topic"]
)
MESSAGES_DEAD_LETTERED = Counter(
    "rlmf_messages_dead_lettered_total",
    "Messages sent to a topic's .dlq twin (labelled with the source topic)",
    ["service", "topic", "reason"],
)
MESSAGES_DUPLICATE = Counter(
    "rlmf_messages_duplicate_total",
    "Re-delivered messages dropped by envelope-id de-duplication",
    ["service", "topic"],
)
HANDLER_LATENCY = Histogram(
    "rlmf_handler_latency_seconds",
    "Time a handler spent on one batch of messages",
    ["service", "topic"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONSUMER_LAG = Gauge(
    "rlmf_consumer_lag", "Messages behind the end of a partition", ["service", "topic", "partition"]
)
BROKER_RETRIES = Counter(
    "rlmf_broker_retries_total", "Transient broker errors retried", ["service", "operation"]
)
READY = Gauge("rlmf_ready", "1 when the service is ready to work", ["service"])
ARTIFACT_HASH_MISMATCH = Counter(
    "rlmf_artifact_hash_mismatch_total",
    "Model folders refused because a file is missing, unlisted or does not match its sha256",
    ["service"],
)
PROMOTIONS = Counter(
    "rlmf_promotions_total",
    "Gate decisions of the trainer (promoted, rejected, failed, rolled_back)",
    ["outcome"],
)

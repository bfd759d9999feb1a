"""The Kafka bus every service uses: a producer and an at-least-once consumer loop.

Delivery contract:
- at-least-once: a consumer commits a message's offset only after the outputs its handler
  produced (and any dead letter) are flushed to the broker, so a crash re-delivers it;
- idempotent handling: consumers drop envelope ids they have already handled, and outputs get
  ids derived from their input's id, so a re-delivered input re-produces the *same* output ids
  and downstream de-duplication removes them;
- nothing is dropped silently: a message that fails to decode, fails validation, carries an
  unknown schema version or makes its handler raise goes to the topic's `.dlq` twin with the
  error text, the original bytes and the original headers; transient broker errors are retried
  with exponential backoff, and when retries run out the service stops *without committing*.

One file on purpose (over the layout's 600 lines): the producer, the consumer loop and the
commit bookkeeping share the delivery contract above, and splitting them would scatter the
one invariant (commit only after outputs are flushed) over several modules.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf.message import Message
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError, RetriableError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from services.common import envelope as envelopes
from services.common import metrics
from services.common.json_logging import current_trace_id
from services.common.settings import BusSettings
from services.common.topics import dlq, payload_type

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Data crossing the handler boundary
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)  # not frozen: see envelope.Envelope (per-message construction cost)
class Incoming:
    """One decoded message handed to a handler (read-only by convention)."""

    topic: str
    partition: int
    offset: int
    envelope: envelopes.Envelope
    raw: bytes
    headers: Headers

    @property
    def payload(self) -> Any:
        return self.envelope.payload


@dataclass(frozen=True)
class Outgoing:
    """A message a handler wants published. `id` defaults to one derived from the input."""

    topic: str
    payload: Message
    key: str
    event_time: datetime
    id: str | None = None


class ValidationFailed(Exception):
    """Raise from a handler for input that is well-formed but invalid; it is dead-lettered."""


MessageHandler = Callable[[Incoming], Iterable[Outgoing]]
# A batch handler answers, for each input in order, its outputs or the exception it caused.
BatchHandler = Callable[[Sequence[Incoming]], Sequence["list[Outgoing] | Exception"]]


# ---------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------


def _is_transient(exc: BaseException) -> bool:
    # kafka-python marks connection losses, timeouts and leader moves as retriable.
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


def retrying(settings: BusSettings, service: str, operation: str) -> Retrying:
    """Exponential backoff for transient broker errors; re-raises when attempts run out."""

    log_before_sleep = before_sleep_log(log, logging.WARNING)

    def count_and_log(state: Any) -> None:
        metrics.BROKER_RETRIES.labels(service, operation).inc()
        log_before_sleep(state)

    return Retrying(
        retry=retry_if_exception(_is_transient),
        stop=stop_after_attempt(settings.retry_attempts),
        wait=wait_exponential(multiplier=0.1, max=settings.retry_max_wait_s),
        before_sleep=count_and_log,
        reraise=True,
    )


def with_retries(settings: BusSettings, service: str, operation: str, call: Callable[[], T]) -> T:
    """`call()`, retried with backoff on transient broker errors (`retrying`). The first try
    builds no retry controller: this wraps every poll, commit and send, and tenacity's
    per-call set-up showed on the consumer's profile (bench/bus.py)."""
    try:
        return call()
    except KafkaError as exc:
        if not _is_transient(exc):
            raise
        log.warning("%s failed (%s); retrying with backoff", operation, exc)
        metrics.BROKER_RETRIES.labels(service, operation).inc()
    for attempt in retrying(settings, service, operation):
        with attempt:
            return call()
    raise AssertionError("unreachable: retrying re-raises when attempts run out")


# ---------------------------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------------------------


def ensure_topics(settings: BusSettings, topics: Iterable[str], service: str = "bus") -> None:
    """Create `topics` (and nothing else) if they do not exist yet."""
    wanted = sorted(set(topics))
    for attempt in retrying(settings, service, "create_topics"):
        with attempt:
            admin = KafkaAdminClient(
                bootstrap_servers=settings.bootstrap,
                client_id=service,
                **settings.client_security(),
            )
            try:
                existing = set(admin.list_topics())
                missing = [t for t in wanted if t not in existing]
                if missing:
                    new = [
                        NewTopic(t, settings.partitions, settings.replication_factor)
                        for t in missing
                    ]
                    # Another service may create one between our list and our create.
                    with contextlib.suppress(TopicAlreadyExistsError):
                        admin.create_topics(new)
            finally:
                admin.close()


# ---------------------------------------------------------------------------------------------
# Producer
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    future: Any = None


class Producer:
    """Publishes envelopes; `flush()` returns only when every send since the last flush landed."""

    def __init__(self, settings: BusSettings, service: str) -> None:
        self.settings = settings
        self.service = service
        self._pending: list[_Pending] = []
        self._lock = threading.Lock()
        self._kafka = self._connect()

    def _connect(self) -> KafkaProducer:
        for attempt in retrying(self.settings, self.service, "connect_producer"):
            with attempt:
                return KafkaProducer(
                    bootstrap_servers=self.settings.bootstrap,
                    client_id=self.service,
                    acks="all",
                    linger_ms=self.settings.producer_linger_ms,
                    batch_size=self.settings.producer_batch_bytes,
                    retries=5,
                    **self.settings.client_security(),
                )
        raise AssertionError("unreachable")

    def connected(self) -> bool:
        """True while the producer has a live connection to at least one broker."""
        return _any_broker_connected(self._kafka._sender._client)

    def publish(
        self,
        topic: str,
        payload: Message,
        *,
        key: str,
        event_time: datetime,
        trace_id: str | None = None,
        id: str | None = None,
        headers: Headers | None = None,
    ) -> str:
        """Wrap `payload` in an envelope and send it; returns the envelope id."""
        env = envelopes.wrap(
            payload,
            key=key,
            event_time=event_time,
            source=self.service,
            trace_id=trace_id or current_trace_id.get() or None,
            id=id,
        )
        self.send_raw(topic, envelopes.encode(env), key=key, headers=headers or [])
        return env.id

    def send_raw(self, topic: str, value: bytes, *, key: str | None, headers: Headers) -> None:
        item = _Pending(topic, key.encode() if key else None, value, list(headers))
        self._send(item)
        with self._lock:
            self._pending.append(item)

    def dead_letter(
        self, topic: str, raw: bytes, *, key: bytes | None, headers: Headers, error: BaseException
    ) -> None:
        """Send the original bytes and headers of a failed message to `topic`'s DLQ twin."""
        reason = type(error).__name__
        extra: Headers = [
            ("rlmf-error", str(error).encode("utf-8", "replace")[:4000]),
            ("rlmf-error-type", reason.encode()),
            ("rlmf-source-topic", topic.encode()),
            ("rlmf-failed-by", self.service.encode()),
        ]
        keep = [(k, v) for k, v in headers if not k.startswith("rlmf-error")]
        item = _Pending(dlq(topic), key, raw, keep + extra)
        self._send(item)
        with self._lock:
            self._pending.append(item)
        metrics.MESSAGES_DEAD_LETTERED.labels(self.service, topic, reason).inc()

    def _send(self, item: _Pending) -> None:
        item.future = with_retries(
            self.settings,
            self.service,
            "send",
            lambda: self._kafka.send(
                item.topic, value=item.value, key=item.key, headers=item.headers
            ),
        )

    def flush(self) -> None:
        """Block until everything sent so far is acknowledged, re-sending failures."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        outstanding = pending
        for attempt in retrying(self.settings, self.service, "flush"):
            with attempt:
                self._kafka.flush()
                failed = [p for p in outstanding if p.future is not None and p.future.failed()]
                for item in failed:
                    log.warning("re-sending to %s after %s", item.topic, item.future.exception)
                    self._send(item)
                if failed:
                    outstanding = failed
                    raise _ResendNeeded(f"{len(failed)} sends failed")
        per_topic: dict[str, int] = {}
        for item in pending:  # every message of this flush, re-sent ones counted once
            if not item.topic.endswith(".dlq"):
                per_topic[item.topic] = per_topic.get(item.topic, 0) + 1
        for topic, count in per_topic.items():
            metrics.MESSAGES_PRODUCED.labels(self.service, topic).inc(count)

    def close(self) -> None:
        self.flush()
        self._kafka.close()


def _any_broker_connected(client: Any) -> bool:
    # kafka-python 3 has no public "is connected" (its bootstrap_connected() is true only while
    # bootstrapping), so readiness asks its network client about the brokers it knows.
    brokers = client.cluster.brokers()
    return any(client.connected(broker.node_id) for broker in brokers)


class _ResendNeeded(RetriableError):
    pass


class _NotReadyYet(RetriableError):
    pass


# ---------------------------------------------------------------------------------------------
# Consumer loop
# ---------------------------------------------------------------------------------------------


class _SeenIds(dict[str, None]):
    """A bounded memory of handled envelope ids (oldest forgotten first). A dict, so that the
    per-message `id in seen` is the dict's own lookup; it keeps insertion order."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def add(self, item: str) -> None:
        self.add_all([item])

    def add_all(self, items: Iterable[str]) -> None:
        self.update(dict.fromkeys(items))
        excess = len(self) - self.capacity
        if excess > 0:
            for old in list(itertools.islice(self, excess)):
                del self[old]


@dataclass
class LoopStats:
    """What a loop has done; `consumed == handled + duplicates + dead_lettered` always."""

    consumed: int = 0
    handled: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    produced: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)


class ConsumerLoop:
    """Consumes `topics`, hands decoded messages to a handler, publishes its outputs, commits.

    Give either `handle` (one message in, outputs out) or `handle_batch` (a micro-batch in,
    per-message outputs or exceptions out). `before_commit`, when given, is called after each
    batch's outputs are flushed and before its offsets are committed: the one point where a
    crash must re-deliver the batch, so tests use it to kill a consumer exactly there.
    """

    def __init__(
        self,
        *,
        service: str,
        topics: Sequence[str],
        settings: BusSettings | None = None,
        handle: MessageHandler | None = None,
        handle_batch: BatchHandler | None = None,
        producer: Producer | None = None,
        group_id: str | None = None,
        create_topics: Sequence[str] = (),
        payload_types: dict[str, type[Message]] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        if (handle is None) == (handle_batch is None):
            raise ValueError("give exactly one of handle or handle_batch")
        self.service = service
        self.topics = list(topics)
        self.settings = settings or BusSettings()
        self.group_id = group_id or f"rlmf-{service}"
        self._handle_batch = handle_batch or one_by_one(handle)  # type: ignore[arg-type]
        # Topic -> payload class; defaults to the registry in topics.py. Tests and tools that
        # use private topic names pass their own.
        self._payload_types = {t: (payload_types or {}).get(t) or payload_type(t) for t in topics}
        self._before_commit = before_commit
        self._stop = threading.Event()
        self._seen = _SeenIds(self.settings.dedup_window)
        # Offsets handed to an asynchronous commit and not yet confirmed (see _commit).
        self._uncommitted: dict[TopicPartition, OffsetAndMetadata] = {}
        self.stats = LoopStats()
        ensure_topics(
            self.settings, [*self.topics, *map(dlq, self.topics), *create_topics], service
        )
        self.producer = producer or Producer(self.settings, service)
        self._consumer = self._connect()
        self.connected = True

    # -- lifecycle --------------------------------------------------------------------------

    def _connect(self) -> KafkaConsumer:
        s = self.settings
        for attempt in retrying(s, self.service, "connect_consumer"):
            with attempt:
                consumer = KafkaConsumer(
                    bootstrap_servers=s.bootstrap,
                    client_id=self.service,
                    group_id=self.group_id,
                    enable_auto_commit=False,
                    auto_offset_reset=s.auto_offset_reset,
                    max_poll_interval_ms=s.max_poll_interval_ms,
                    session_timeout_ms=s.session_timeout_ms,
                    heartbeat_interval_ms=max(100, s.session_timeout_ms // 4),
                    max_poll_records=s.max_records,
                    **s.client_security(),
                )
                if s.group_protocol == "manual":
                    consumer.assign(self._all_partitions(consumer))
                else:
                    consumer.subscribe(self.topics, listener=_CommitOnRevoke(self))
                return consumer
        raise AssertionError("unreachable")

    def _all_partitions(self, consumer: KafkaConsumer) -> list[TopicPartition]:
        partitions = []
        for topic in self.topics:
            ids = consumer.partitions_for_topic(topic)
            if not ids:
                raise _NotReadyYet(f"no partitions known for {topic} yet")
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        return partitions

    def broker_connected(self) -> bool:
        """True while the loop runs and its consumer reaches a broker (readiness)."""
        if not self.connected or self.stopping:
            return False
        return _any_broker_connected(self._consumer._client)

    def request_stop(self) -> None:
        """Finish the batch in hand, commit it and return from `run` (SIGTERM calls this)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, idle_timeout_s: float | None = None, max_messages: int | None = None) -> None:
        """Loop until stopped; optionally also after `idle_timeout_s` without messages or
        after `max_messages` consumed (used by replays and tests)."""
        last_message = time.monotonic()
        try:
            while not self._stop.is_set():
                handled = self.poll_once()
                now = time.monotonic()
                if handled:
                    last_message = now
                elif idle_timeout_s is not None and now - last_message > idle_timeout_s:
                    break
                if max_messages is not None and self.stats.consumed >= max_messages:
                    break
        finally:
            self.close()

    def close(self) -> None:
        if not self.connected:
            return
        self.connected = False
        try:
            self.producer.close()
            # Only offsets of batches whose outputs were flushed are ever pending, so this is
            # safe even when close() runs because the loop failed.
            try:
                self.commit_pending()
            except KafkaError as exc:
                # E.g. the group moved the partitions on: at-least-once still holds, the new
                # owner re-reads those batches and de-duplication drops what was already done.
                log.warning("final offset commit failed (%s); those batches will be re-read", exc)
        finally:
            self._consumer.close(autocommit=False)

    # -- one batch ----------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Poll one batch, handle it, flush outputs, commit. Returns messages consumed."""
        s = self.settings
        batch: dict[TopicPartition, list[Any]] = with_retries(
            s,
            self.service,
            "poll",
            lambda: self._consumer.poll(timeout_ms=s.poll_timeout_ms, max_records=s.max_records),
        )
        records: list[Any] = []
        per_topic: dict[str, int] = {}
        for tp in sorted(batch, key=lambda t: (t.topic, t.partition)):
            records += batch[tp]
            per_topic[tp.topic] = per_topic.get(tp.topic, 0) + len(batch[tp])
        if not records:
            return 0
        self._count_consumed(per_topic)
        self._process(records)
        self.producer.flush()  # outputs and dead letters are on the broker ...
        if self._before_commit is not None:
            self._before_commit()
        self._commit(batch)  # ... and only now is the input marked done: at-least-once.
        self._record_lag(batch)
        return len(records)

    def _process(self, records: list[Any]) -> None:
        """Decode, drop duplicates, hand the rest to the handler. The per-message hot path
        (bench/bus.py): lookups are kept in locals, and nothing is built per message beyond
        the decoded envelope and its Incoming."""
        decode, payload_types = envelopes.decode, self._payload_types
        seen, in_this_batch = self._seen, set()
        valid: list[Incoming] = []
        for record in records:
            value = record.value or b""
            try:
                envelope = decode(value, payload_types[record.topic])
            except envelopes.EnvelopeError as exc:
                self._dead_letter(record.topic, value, record.key, record.headers or [], exc)
                continue
            envelope_id = envelope.id
            if envelope_id in seen or envelope_id in in_this_batch:
                self.stats.duplicates += 1
                metrics.MESSAGES_DUPLICATE.labels(self.service, record.topic).inc()
                continue
            in_this_batch.add(envelope_id)
            valid.append(
                Incoming(
                    record.topic,
                    record.partition,
                    record.offset,
                    envelope,
                    value,
                    record.headers or [],
                )
            )
        if valid:
            self._handle(valid)

    def _count_consumed(self, per_topic: dict[str, int]) -> None:
        for topic, count in per_topic.items():
            self.stats.consumed += count
            self.stats.by_topic[topic] = self.stats.by_topic.get(topic, 0) + count
            metrics.MESSAGES_CONSUMED.labels(self.service, topic).inc(count)

    def _handle(self, valid: list[Incoming]) -> None:
        started = time.perf_counter()
        try:
            results = list(self._handle_batch(valid))
        except Exception as exc:  # the batch handler itself failed: isolate message by message
            log.warning("batch handler failed (%s); retrying one by one", exc)
            results = [self._handle_single(m) for m in valid]
        elapsed = time.perf_counter() - started
        if len(results) != len(valid):
            raise RuntimeError(f"batch handler answered {len(results)} results for {len(valid)}")
        # Latency is labelled per topic so dashboards show what was handled.
        for topic in {m.topic for m in valid}:
            metrics.HANDLER_LATENCY.labels(self.service, topic).observe(elapsed)
        handled = 0
        for incoming, result in zip(valid, results, strict=True):
            if isinstance(result, Exception):
                key = incoming.envelope.key.encode() or None
                self._dead_letter(incoming.topic, incoming.raw, key, incoming.headers, result)
                continue
            if result:  # a filter or a sink answers no outputs
                self._publish_outputs(incoming, result)
            handled += 1
        self.stats.handled += handled
        self._seen.add_all([m.envelope.id for m in valid])

    def _handle_single(self, incoming: Incoming) -> list[Outgoing] | Exception:
        try:
            return list(self._handle_batch([incoming])[0])  # type: ignore[arg-type]
        except Exception as exc:
            return exc

    def _publish_outputs(self, incoming: Incoming, outputs: Iterable[Outgoing]) -> None:
        for index, out in enumerate(outputs):
            self.producer.publish(
                out.topic,
                out.payload,
                key=out.key,
                event_time=out.event_time,
                trace_id=incoming.envelope.trace_id,
                id=out.id or envelopes.derived_id(incoming.envelope.id, out.topic, index),
            )
            self.stats.produced += 1

    def _dead_letter(
        self, topic: str, raw: bytes, key: bytes | None, headers: Headers, exc: BaseException
    ) -> None:
        log.warning("dead-lettering a message from %s: %s", topic, exc)
        self.producer.dead_letter(topic, raw, key=key, headers=headers, error=exc)
        self.stats.dead_lettered += 1

    def _commit(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Commit the batch's offsets without waiting for the broker's answer.

        At-least-once holds because the batch's outputs are already flushed: a commit that gets
        lost only means re-delivery, which de-duplication absorbs. Offsets are cumulative, so
        the next batch's commit covers a lost one, and `commit_pending` (at close and when a
        rebalance takes partitions away) commits synchronously, so a clean stop re-processes
        nothing. Waiting for each commit cost a broker round trip per batch.
        """
        offsets = {
            tp: OffsetAndMetadata(records[-1].offset + 1, "", -1)
            for tp, records in batch.items()
            if records
        }
        self._uncommitted.update(offsets)
        with_retries(
            self.settings,
            self.service,
            "commit",
            lambda: self._consumer.commit_async(offsets, callback=self._on_commit_answer),
        )

    def _on_commit_answer(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], answer: Any
    ) -> None:
        if isinstance(answer, Exception):
            # Not retried here: the next batch's commit, or the final synchronous one, covers it.
            log.warning(
                "an asynchronous offset commit failed (%s); a later commit covers it", answer
            )
            return
        for tp, committed in offsets.items():
            if self._uncommitted.get(tp) == committed:
                del self._uncommitted[tp]

    def commit_pending(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Synchronously commit the handled offsets not yet confirmed (all, or `partitions`')."""
        wanted = self._uncommitted if partitions is None else set(partitions)
        offsets = {tp: o for tp, o in self._uncommitted.items() if tp in wanted}
        if not offsets:
            return
        with_retries(self.settings, self.service, "commit", lambda: self._consumer.commit(offsets))
        for tp in offsets:
            self._uncommitted.pop(tp, None)

    def _record_lag(self, batch: dict[TopicPartition, list[Any]]) -> None:
        for tp in batch:
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            position = self._consumer.position(tp)
            metrics.CONSUMER_LAG.labels(self.service, tp.topic, str(tp.partition)).set(
                max(0, high - position)
            )


class _CommitOnRevoke(AsyncConsumerRebalanceListener):
    """Group mode: before partitions move to another consumer, commit what was handled on them,
    so the new owner does not re-process it.

    Async on purpose: kafka-python 3 calls rebalance listeners on its IO thread, where the
    blocking `commit()` raises RuntimeError, which failed the rebalance and stopped the loop
    at the first one that took partitions with handled, uncommitted offsets
    (tests/integration/test_bus_resilience.py). The commit's future is awaited there instead."""

    def __init__(self, loop: ConsumerLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pending = self.loop._uncommitted
        offsets = {tp: o for tp, o in pending.items() if tp in set(revoked)}
        if not offsets:
            return
        try:
            await self.loop._consumer.commit_async(offsets)
        except KafkaError as exc:
            # At-least-once still holds: the new owner re-reads those batches and
            # de-duplication drops what was already done.
            log.warning("commit before a rebalance failed (%s); those batches will be re-read", exc)
            return
        for tp in offsets:
            pending.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        pass  # positions come from the committed offsets; nothing to prepare


def one_by_one(handle: MessageHandler) -> BatchHandler:
    def handle_batch(batch: Sequence[Incoming]) -> list[list[Outgoing] | Exception]:
        results: list[list[Outgoing] | Exception] = []
        append, set_trace = results.append, current_trace_id.set
        # Each message's trace id is in the context while its handler runs (log lines carry
        # it); the caller's own is restored once, after the batch.
        before = current_trace_id.get()
        try:
            for incoming in batch:
                set_trace(incoming.envelope.trace_id)
                try:
                    append(list(handle(incoming)))
                except Exception as exc:  # noqa: BLE001 - every failure is dead-lettered, with its text
                    append(exc)
        finally:
            current_trace_id.set(before)
        return results

    return handle_batch

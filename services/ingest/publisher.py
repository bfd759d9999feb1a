"""The one thread through which ingest talks to the broker.

A batch (a request's or a file's events and dead letters) is sent and flushed by this thread
alone, so no caller ever blocks on the broker for longer than it chose to wait, and no flush
takes another caller's sends. De-duplication keys are remembered only once the broker has
acknowledged a batch: a batch that failed, or whose caller stopped waiting, leaves nothing
behind, and its retry is published rather than called a duplicate.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from services.common.bus import Headers, Producer
from services.ingest.normalise import Deduplicator

log = logging.getLogger(__name__)


class PublisherUnavailable(Exception):
    """The broker did not acknowledge in time, or the publisher is stopping or overloaded;
    the HTTP route answers 503 with Retry-After."""


@dataclass(frozen=True)
class PreparedEvent:
    """One news.raw.v1 event, encoded before anything is sent so that an item that cannot be
    encoded is rejected without a partial batch reaching the broker."""

    item_index: int
    ticker: str
    dedup_key: str
    event_id: str
    value: bytes


@dataclass(frozen=True)
class DeadLetter:
    raw: bytes
    headers: Headers
    error: Exception


@dataclass
class Batch:
    topic: str
    events: list[PreparedEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


@dataclass
class BatchResult:
    """Acknowledged events per item index; an item with none was a duplicate."""

    event_ids: dict[int, list[str]] = field(default_factory=dict)


class PublishJob:
    """A submitted batch; `wait` returns its result or gives up on it."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self._lock = threading.Lock()  # decides between "done" and "abandoned", once
        self._done = threading.Event()
        self.abandoned = False
        self.result: BatchResult | None = None
        self.error: BaseException | None = None

    def done(self, timeout_s: float) -> bool:
        """Whether the publisher has finished the job, waiting up to `timeout_s`."""
        return self._done.wait(timeout_s)

    def wait(self, timeout_s: float | None) -> BatchResult:
        """The result once acknowledged. Raises PublisherUnavailable when not acknowledged
        within `timeout_s` (the job is then abandoned: if it lands later, its keys are still
        not remembered) or when publishing failed."""
        self._done.wait(timeout_s)
        with self._lock:
            if not self._done.is_set():
                self.abandoned = True
                raise PublisherUnavailable(f"the broker did not acknowledge within {timeout_s:g}s")
        if self.error is not None:
            raise PublisherUnavailable(f"publishing failed: {self.error}") from self.error
        assert self.result is not None
        return self.result

    def finish(self, result: BatchResult | None, error: BaseException | None) -> bool:
        """Called by the publisher thread; False when the caller had already given up."""
        with self._lock:
            if self.abandoned:
                return False
            self.result, self.error = result, error
            self._done.set()
            return True


class Publisher:
    """Owns the producer and the de-dup memory; one daemon thread works through the jobs."""

    def __init__(
        self, producer: Producer, dedup: Deduplicator, ack_timeout_s: float, max_queued: int
    ) -> None:
        self.producer = producer
        self.dedup = dedup
        self.ack_timeout_s = ack_timeout_s
        self._jobs: queue.Queue[PublishJob | None] = queue.Queue(maxsize=max_queued)
        self._busy_since: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ingest-publisher", daemon=True)
        self._thread.start()

    # -- callers -----------------------------------------------------------------------------

    def submit(self, batch: Batch) -> PublishJob:
        """Queue `batch`; refuses at once (PublisherUnavailable) rather than queue behind a
        broker that is not answering."""
        if self._closed:
            raise PublisherUnavailable("the service is stopping")
        if self.stuck():
            raise PublisherUnavailable(
                f"the broker has not acknowledged the batch in hand for over "
                f"{self.ack_timeout_s:g}s"
            )
        job = PublishJob(batch)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise PublisherUnavailable(
                f"{self._jobs.maxsize} batches are already waiting for the broker"
            ) from None
        return job

    def stuck(self) -> bool:
        busy_since = self._busy_since
        return busy_since is not None and time.monotonic() - busy_since > self.ack_timeout_s

    def ready(self) -> bool:
        """Readiness: open, connected to a broker, and not stuck on an unacknowledged batch."""
        return not self._closed and not self.stuck() and self.producer.connected()

    def close(self, timeout_s: float) -> bool:
        """Stop taking batches, let the one in hand and those queued finish for up to
        `timeout_s`, then close the producer within what is left. False when that did not all
        happen in time (the unacknowledged batches' callers were answered 503 already; the
        process may exit: kafka-python's own exit hook closes its producer with a 1 s bound)."""
        deadline = time.monotonic() + timeout_s
        self._closed = True
        try:
            self._jobs.put(None, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            log.error("publisher queue still full at shutdown; abandoning queued batches")
            return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.error("the broker did not acknowledge the batch in hand before shutdown")
            return False
        # Producer.close flushes, which waits on the broker: bounded here like the rest.
        closer = threading.Thread(target=self.producer.close, name="ingest-close", daemon=True)
        closer.start()
        closer.join(max(0.0, deadline - time.monotonic()))
        return not closer.is_alive()

    # -- the publisher thread ------------------------------------------------------------------

    def _replace_producer(self) -> None:
        """After a failed batch, start again with a new producer. kafka-python's idempotent
        producer can be left in a fatal state for good (a broker that restarted without its
        state refuses its producer id), and only a new one recovers without a process restart."""
        old = self.producer
        try:
            self.producer = Producer(old.settings, old.service)
        except Exception as exc:  # noqa: BLE001 - the broker is still away; the next failure retries
            log.warning("could not connect a new producer yet: %s", exc)
            return
        # The old one's sends have all failed; closing it is quick, but never worth a wait here.
        threading.Thread(target=old.close, name="ingest-close-old", daemon=True).start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.abandoned:  # its caller gave up while it waited in the queue
                continue
            self._busy_since = time.monotonic()
            try:
                self._publish(job)
            finally:
                self._busy_since = None

    def _publish(self, job: PublishJob) -> None:
        batch = job.batch
        fresh: list[PreparedEvent] = []
        in_batch: set[str] = set()
        for event in batch.events:
            if event.dedup_key in in_batch or self.dedup.seen(event.dedup_key):
                continue
            in_batch.add(event.dedup_key)
            fresh.append(event)
        try:
            for event in fresh:
                self.producer.send_raw(batch.topic, event.value, key=event.ticker, headers=[])
            for dead in batch.dead_letters:
                self.producer.dead_letter(
                    batch.topic, dead.raw, key=None, headers=dead.headers, error=dead.error
                )
            self.producer.flush()
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller, who answers it
            log.error("publishing a batch of %d events failed: %s", len(fresh), exc)
            job.finish(None, exc)
            self._replace_producer()
            return
        result = BatchResult()
        for event in fresh:
            result.event_ids.setdefault(event.item_index, []).append(event.event_id)
        if job.finish(result, None):
            # Acknowledged and answered: only now are the keys remembered.
            self.dedup.remember(event.dedup_key for event in fresh)
        else:
            log.warning(
                "a batch of %d events was acknowledged after its caller gave up (answered 503); "
                "its keys are not remembered, so the retry publishes the same event ids again",
                len(fresh),
            )

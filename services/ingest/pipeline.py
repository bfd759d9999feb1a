"""From raw entries to news.raw.v1 events: normalise, de-duplicate, publish or dead-letter, count.

Every entry that arrives ends in exactly one of published, duplicate or rejected, so
received = published + duplicates + rejected holds (the `rlmf_ingest_items_total` metric and
`IngestPipeline.stats`). An item counts as published or duplicate only once the broker has
acknowledged its batch; a batch that was not acknowledged counts as rejected (its caller got a
503, or the failure is logged) and leaves no de-dup key behind. Rejected entries from files and
feeds go to news.raw.v1.dlq with the original bytes and the reason; the HTTP route answers them
with a 4xx instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import Counter

from services.common import envelope as envelopes
from services.common.bus import Producer
from services.common.json_logging import current_trace_id
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.topics import NEWS_RAW
from services.ingest.normalise import (
    Deduplicator,
    Normaliser,
    RejectedInput,
    TickerResolver,
    decode_json_object,
    parse_raw,
)
from services.ingest.publisher import (
    Batch,
    BatchResult,
    DeadLetter,
    PreparedEvent,
    Publisher,
    PublisherUnavailable,
    PublishJob,
)
from services.ingest.schema import NormalisedNews
from services.ingest.settings import IngestSettings

log = logging.getLogger(__name__)

ITEMS = Counter(
    "rlmf_ingest_items_total",
    "News items by outcome; received = published + duplicate + rejected",
    ["source", "outcome"],
)
EVENTS = Counter(
    "rlmf_ingest_events_total", "news.raw.v1 events published (one per item and ticker)", ["source"]
)

_WAIT_SLICE_S = 0.5
"""Files and feeds wait for their batch in slices, so that a stop request is noticed."""


@dataclass
class IngestStats:
    received: int = 0
    published: int = 0
    duplicates: int = 0
    rejected: int = 0
    events: int = 0

    def reconciles(self) -> bool:
        return self.received == self.published + self.duplicates + self.rejected


@dataclass(frozen=True)
class Entry:
    """One raw entry from a file or a feed: its original bytes, and its record if parsed."""

    raw: bytes
    record: dict[str, object] | None = None
    where: str = ""
    """Where it came from (file:line, feed entry), for the DLQ header and logs."""


@dataclass
class Outcome:
    item_id: str
    event_ids: list[str] = field(default_factory=list)
    duplicate: bool = False


class IngestPipeline:
    """Shared by every source (the HTTP route's threads and the source loop); thread-safe."""

    def __init__(
        self,
        settings: IngestSettings,
        producer: Producer,
        resolver: TickerResolver | None = None,
        clock: Callable[[], datetime] | None = None,
        topic: str = NEWS_RAW,
    ) -> None:
        self.settings = settings
        self.topic = topic
        resolver = resolver or TickerResolver.from_settings(settings)
        self.normaliser = Normaliser(settings, resolver, clock)
        self.publisher = Publisher(
            producer,
            Deduplicator(settings.dedup_window),
            settings.ack_timeout_s,
            settings.max_queued_requests,
        )
        self.stats = IngestStats()
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()

    @property
    def producer(self) -> Producer:
        """The publisher's producer (it starts a new one after a failed batch)."""
        return self.publisher.producer

    # -- counting --------------------------------------------------------------------------

    def _count(self, source: str, outcome: str, n: int = 1) -> None:
        if n <= 0:
            return
        ITEMS.labels(source, outcome).inc(n)
        attr = {"duplicate": "duplicates"}.get(outcome, outcome)
        with self._stats_lock:
            setattr(self.stats, attr, getattr(self.stats, attr) + n)

    def received(self, source: str, n: int = 1) -> None:
        self._count(source, "received", n)

    def rejected(self, source: str, n: int = 1) -> None:
        self._count(source, "rejected", n)

    def snapshot(self) -> IngestStats:
        with self._stats_lock:
            return IngestStats(**self.stats.__dict__)

    # -- parsing ---------------------------------------------------------------------------

    def normalise_entry(self, entry: Entry) -> NormalisedNews:
        record = entry.record
        if record is None:
            record = decode_json_object(entry.raw, self.settings.max_item_bytes)
        elif len(entry.raw) > self.settings.max_item_bytes:
            raise RejectedInput(
                f"item is {len(entry.raw)} bytes, over the limit of {self.settings.max_item_bytes}"
            )
        return self.normaliser.normalise(parse_raw(record))

    def prepare(self, index: int, item: NormalisedNews) -> list[PreparedEvent]:
        """The item's events, encoded; RejectedInput when one cannot be (nothing is sent)."""
        events = []
        for ticker in item.tickers:
            event_id = envelopes.derived_id(item.item_id, ticker)
            try:
                value = envelopes.encode(
                    envelopes.wrap(
                        to_proto(item, ticker),
                        key=ticker,
                        event_time=item.published_at,
                        source=self.producer.service,
                        trace_id=current_trace_id.get() or None,
                        id=event_id,
                    )
                )
            except (ValueError, TypeError) as exc:  # protobuf's answer to text it cannot carry
                raise RejectedInput(f"cannot be encoded as a news.raw.v1 event: {exc}") from exc
            key = Deduplicator.key(item, ticker)
            events.append(PreparedEvent(index, ticker, key, event_id, value))
        return events

    # -- publishing ------------------------------------------------------------------------

    def publish_batch(
        self, items: list[NormalisedNews], events: list[PreparedEvent], source: str
    ) -> list[Outcome]:
        """Publish prepared `events` of `items` as one batch and count each item, waiting at
        most the ack timeout. Raises PublisherUnavailable (every item counted rejected, no key
        remembered) when the broker did not acknowledge in time."""
        try:
            job = self.publisher.submit(Batch(self.topic, events))
            result = job.wait(self.settings.ack_timeout_s)
        except PublisherUnavailable:
            self.rejected(source, len(items))
            raise
        return self._count_published(items, result, source)

    def _count_published(
        self, items: list[NormalisedNews], result: BatchResult, source: str
    ) -> list[Outcome]:
        outcomes = []
        for index, item in enumerate(items):
            event_ids = result.event_ids.get(index, [])
            outcomes.append(Outcome(item.item_id, event_ids, duplicate=not event_ids))
        published = sum(1 for o in outcomes if not o.duplicate)
        n_events = sum(len(o.event_ids) for o in outcomes)
        self._count(source, "published", published)
        self._count(source, "duplicate", len(outcomes) - published)
        EVENTS.labels(source).inc(n_events)
        with self._stats_lock:
            self.stats.events += n_events
        return outcomes

    def ingest_entries(self, entries: Iterable[Entry], source: str) -> IngestStats:
        """Files and feeds: bad entries to the DLQ, good ones published in event-time order,
        all as one batch. Raises PublisherUnavailable when the broker did not acknowledge it
        before a stop was requested (every entry then counts as rejected)."""
        good: list[tuple[NormalisedNews, Entry]] = []
        dead: list[DeadLetter] = []
        before = self.snapshot()
        for entry in entries:
            self.received(source)
            try:
                good.append((self.normalise_entry(entry), entry))
            except RejectedInput as exc:
                dead.append(self._dead_letter(entry, exc, source))
        # Stable sort: items with the same time keep their order in the source.
        good.sort(key=lambda pair: pair[0].published_at)
        items: list[NormalisedNews] = []
        events: list[PreparedEvent] = []
        for item, entry in good:
            try:
                events += self.prepare(len(items), item)
            except RejectedInput as exc:
                dead.append(self._dead_letter(entry, exc, source))
                continue
            items.append(item)
        try:
            result = self._wait_for(self.publisher.submit(Batch(self.topic, events, dead)))
        except PublisherUnavailable:
            self.rejected(source, len(items) + len(dead))
            raise
        self.rejected(source, len(dead))
        self._count_published(items, result, source)
        after = self.snapshot()
        return IngestStats(**{k: v - before.__dict__[k] for k, v in after.__dict__.items()})

    def _wait_for(self, job: PublishJob) -> BatchResult:
        """No time bound for files and feeds (a replay waits out a broker restart), but a stop
        request ends the wait: the job is then given up like a timed-out request's."""
        while not job.done(_WAIT_SLICE_S):
            if self._stop.is_set():
                break
        return job.wait(0)

    def _dead_letter(self, entry: Entry, error: RejectedInput, source: str) -> DeadLetter:
        log.warning("rejected %s entry %s: %s", source, entry.where, error)
        headers = [("rlmf-origin", f"{source}:{entry.where}".encode("utf-8", "replace"))]
        return DeadLetter(entry.raw, headers, error)

    # -- lifecycle -------------------------------------------------------------------------

    def ready(self) -> bool:
        return not self._stop.is_set() and self.publisher.ready()

    def request_stop(self) -> None:
        """A file or feed batch in hand stops waiting for the broker (SIGTERM calls this)."""
        self._stop.set()

    def close(self, timeout_s: float | None = None) -> bool:
        """Finish what is in hand within `timeout_s` (default: the shutdown grace), close the
        producer; False when the broker did not let that happen in time."""
        self._stop.set()
        return self.publisher.close(
            self.settings.shutdown_grace_s if timeout_s is None else timeout_s
        )


def to_proto(item: NormalisedNews, ticker: str) -> pb.NewsItem:
    message = pb.NewsItem(
        item_id=item.item_id,
        ticker=ticker,
        headline=item.headline,
        body=item.body,
        url=item.url,
        source_name=item.source_name,
        synthetic=item.synthetic,
    )
    envelopes.set_time(message.published_at, item.published_at)
    return message

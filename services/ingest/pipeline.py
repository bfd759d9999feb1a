"""From raw entries to news.raw.v1 events: normalise, de-duplicate, publish or dead-letter, count.

Every entry that arrives ends in exactly one of published, duplicate or rejected, so
received = published + duplicates + rejected holds (the `rlmf_ingest_items_total` metric and
`IngestPipeline.stats`). Rejected entries from files and feeds go to news.raw.v1.dlq with the
original bytes and the reason; the HTTP route answers them with a 4xx instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import Counter

from services.common import envelope as envelopes
from services.common.bus import Producer
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
    """Shared by every source; call `flush()` after a batch so events are on the broker."""

    def __init__(
        self,
        settings: IngestSettings,
        producer: Producer,
        resolver: TickerResolver | None = None,
        clock: Callable[[], datetime] | None = None,
        topic: str = NEWS_RAW,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.topic = topic
        resolver = resolver or TickerResolver.from_file(settings.tickers_file)
        self.normaliser = Normaliser(settings, resolver, clock)
        self.dedup = Deduplicator(settings.dedup_window)
        self.stats = IngestStats()

    # -- counting --------------------------------------------------------------------------

    def _count(self, source: str, outcome: str) -> None:
        ITEMS.labels(source, outcome).inc()
        attr = {"duplicate": "duplicates"}.get(outcome, outcome)
        setattr(self.stats, attr, getattr(self.stats, attr) + 1)

    def received(self, source: str, n: int = 1) -> None:
        for _ in range(n):
            self._count(source, "received")

    def rejected(self, source: str) -> None:
        self._count(source, "rejected")

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

    # -- publishing ------------------------------------------------------------------------

    def publish(self, item: NormalisedNews, source: str) -> Outcome:
        """One event per ticker not seen before (content + ticker + day); counts the item."""
        outcome = Outcome(item.item_id)
        for ticker in item.tickers:
            if not self.dedup.first_time(Deduplicator.key(item, ticker)):
                continue
            event_id = envelopes.derived_id(item.item_id, ticker)
            self.producer.publish(
                self.topic,
                to_proto(item, ticker),
                key=ticker,
                event_time=item.published_at,
                id=event_id,
            )
            outcome.event_ids.append(event_id)
            EVENTS.labels(source).inc()
            self.stats.events += 1
        outcome.duplicate = not outcome.event_ids
        self._count(source, "duplicate" if outcome.duplicate else "published")
        return outcome

    def ingest_entries(self, entries: Iterable[Entry], source: str) -> IngestStats:
        """Files and feeds: bad entries to the DLQ, good ones published in event-time order."""
        good: list[NormalisedNews] = []
        before = IngestStats(**self.stats.__dict__)
        for entry in entries:
            self.received(source)
            try:
                good.append(self.normalise_entry(entry))
            except RejectedInput as exc:
                self.dead_letter(entry, exc, source)
        # Stable sort: items with the same time keep their order in the source.
        for item in sorted(good, key=lambda i: i.published_at):
            self.publish(item, source)
        self.flush()
        return IngestStats(**{k: v - before.__dict__[k] for k, v in self.stats.__dict__.items()})

    def dead_letter(self, entry: Entry, error: RejectedInput, source: str) -> None:
        log.warning("rejected %s entry %s: %s", source, entry.where, error)
        headers = [("rlmf-origin", f"{source}:{entry.where}".encode("utf-8", "replace"))]
        self.producer.dead_letter(self.topic, entry.raw, key=None, headers=headers, error=error)
        self.rejected(source)

    def flush(self) -> None:
        self.producer.flush()


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

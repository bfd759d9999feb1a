"""The stream side: bars and enriched news in, features pushed to Feast, features.ready out.

One micro-batch at a time: messages are put in event-time order (the bus hands them grouped by
topic), applied to the incremental engine, the resulting days pushed to Feast in one write per
view, and then one features.ready per served day is published. If the push fails after its
retries, the engine state is rolled back and the error raised, so the bus retries the messages
one by one and dead-letters what still fails: no day is ever half-served.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from prometheus_client import Counter, Histogram

from services.common.bus import ConsumerLoop, Incoming, Outgoing, ValidationFailed
from services.common.envelope import to_datetime
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.features.engine import BarIn, DayFeatures, FeatureEngine, NewsIn
from services.features.settings import FeaturesSettings
from services.features.store import FeatureWriter

log = logging.getLogger(__name__)

SERVICE = "features"
DAYS_SERVED = Counter("rlmf_features_days_served_total", "Ticker-days pushed to Feast")
LATE_NEWS = Counter(
    "rlmf_features_late_news_total", "News that arrived after its day was served (-> next day)"
)
DUPLICATE_BARS = Counter(
    "rlmf_features_duplicate_bars_total", "Bars dropped as (ticker, end) repeats"
)
PUSH_SECONDS = Histogram(
    "rlmf_features_push_seconds",
    "One ONLINE_AND_OFFLINE push of a micro-batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class StorePushFailed(RuntimeError):
    """Feast did not take a micro-batch's features; its messages are retried, then dead-lettered."""


def bar_from_pb(bar: pb.Bar) -> BarIn:
    if not bar.HasField("end"):
        raise ValidationFailed(f"bar {bar.ticker or '<no ticker>'} has no end (close) time")
    return BarIn(
        ticker=bar.ticker,
        start=to_datetime(bar.start) if bar.HasField("start") else None,
        end=to_datetime(bar.end),
        open=bar.open, high=bar.high, low=bar.low, close=bar.close, volume=bar.volume,
    )  # fmt: skip


def news_from_pb(news: pb.EnrichedNews) -> NewsIn:
    item = news.item
    if not item.HasField("published_at"):
        raise ValidationFailed(f"news {item.item_id or '<no id>'} has no published_at")
    return NewsIn(
        ticker=item.ticker,
        item_id=item.item_id,
        published_at=to_datetime(item.published_at),
        sentiment=news.sentiment,
        summary=news.summary,
    )


class FeaturesHandler:
    """The ConsumerLoop batch handler of the features service."""

    def __init__(self, settings: FeaturesSettings, writer: FeatureWriter) -> None:
        self.settings = settings
        self.writer = writer
        self.engine = FeatureEngine(settings)
        self.cutoff = timedelta(seconds=settings.news_cutoff_before_close_s)

    def __call__(self, batch: Sequence[Incoming]) -> list[list[Outgoing] | Exception]:
        results: list[list[Outgoing] | Exception] = [[] for _ in batch]
        events: list[tuple[tuple[datetime, int], int, BarIn | NewsIn]] = []
        for index, incoming in enumerate(batch):
            try:
                event = self._decode(incoming)
            except ValidationFailed as exc:
                results[index] = exc
                continue
            events.append((self._order_key(event), index, event))
        events.sort(key=lambda e: (e[0], e[1]))
        snapshot = self.engine.snapshot({e.ticker for _, _, e in events})
        late_before, dup_before = self.engine.late_news, self.engine.duplicate_bars
        served: list[tuple[int, DayFeatures]] = []
        for _, index, event in events:
            if isinstance(event, BarIn) and self.engine.is_served(event):
                # A re-delivery (e.g. after a crash before the commit): its features are in the
                # store; say so again, with the same watermark, in case the first ready was lost.
                results[index] = [self._ready_at(event.ticker, event.end)]
            try:
                day = self._apply(event)
            except ValidationFailed as exc:
                results[index] = exc
                continue
            if day is not None:
                served.append((index, day))
        self._push(served, snapshot)
        if events:
            self._save_state()
        LATE_NEWS.inc(self.engine.late_news - late_before)
        DUPLICATE_BARS.inc(self.engine.duplicate_bars - dup_before)
        for index, day in served:
            results[index] = [self._ready_at(day.ticker, day.event_timestamp)]
        return results

    def restore_state(self) -> int:
        """Load the state a previous run saved (0 tickers when there is none)."""
        path = self.settings.state_path
        if not path.exists():
            return 0
        restored = self.engine.load(path)
        log.info("restored the feature state of %d ticker(s) from %s", restored, path)
        return restored

    def _save_state(self) -> None:
        # Saved after the push and before the bus commits: a crash in between re-delivers
        # messages the state already holds, which then count as duplicates, not twice.
        self.engine.save(self.settings.state_path)

    def _decode(self, incoming: Incoming) -> BarIn | NewsIn:
        payload = incoming.payload
        if isinstance(payload, pb.Bar):
            return bar_from_pb(payload)
        if isinstance(payload, pb.EnrichedNews):
            return news_from_pb(payload)
        raise ValidationFailed(f"unexpected payload {type(payload).__name__} on {incoming.topic}")

    def _order_key(self, event: BarIn | NewsIn) -> tuple[datetime, int]:
        # A bar counts at its news cutoff; news published at or before it sorts first.
        if isinstance(event, BarIn):
            return (event.end - self.cutoff, 1)
        return (event.published_at, 0)

    def _apply(self, event: BarIn | NewsIn) -> DayFeatures | None:
        if isinstance(event, BarIn):
            return self.engine.on_bar(event)
        self.engine.on_news(event)
        return None

    def _push(self, served: list[tuple[int, DayFeatures]], snapshot: dict) -> None:  # type: ignore[type-arg]
        if not served:
            return
        try:
            with PUSH_SECONDS.time():
                self.writer.push([day for _, day in served])
        except Exception as exc:
            self.engine.restore(snapshot)  # the days were not served: undo them
            raise StorePushFailed(f"Feast push failed for {len(served)} day(s): {exc}") from exc
        DAYS_SERVED.inc(len(served))

    def _ready_at(self, ticker: str, watermark: datetime) -> Outgoing:
        payload = pb.FeaturesReady(ticker=ticker, feature_service=self.settings.feature_service)
        payload.watermark.FromDatetime(watermark)
        return Outgoing(
            topic=self.settings.ready_topic, payload=payload, key=ticker, event_time=watermark
        )


def build_loop(
    settings: FeaturesSettings,
    bus: BusSettings | None = None,
    writer: FeatureWriter | None = None,
) -> tuple[ConsumerLoop, FeaturesHandler]:
    """The service's consumer loop and its handler (tests drive both directly)."""
    handler = FeaturesHandler(settings, writer or FeatureWriter(settings))
    handler.restore_state()
    loop = ConsumerLoop(
        service=SERVICE,
        topics=[settings.bars_topic, settings.news_topic],
        settings=bus or BusSettings(),
        handle_batch=handler,
        create_topics=[settings.ready_topic],
        payload_types={settings.bars_topic: pb.Bar, settings.news_topic: pb.EnrichedNews},
    )
    return loop, handler

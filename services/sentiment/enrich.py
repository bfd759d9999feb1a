"""The sentiment service's handler: a micro-batch of news.raw items in, news.enriched out."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from prometheus_client import Counter, Histogram

from services.common import envelope as envelopes
from services.common.bus import Incoming, Outgoing, ValidationFailed
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.prompt_text import neutralise_special_tokens
from services.common.topics import NEWS_ENRICHED
from services.sentiment.scorer import Score, SentimentScorer
from services.sentiment.summarizer import Summarizer

log = logging.getLogger(__name__)

SCORES = Histogram(
    "rlmf_sentiment_score",
    "Sentiment scores published",
    ["model"],
    buckets=(-1, -0.6, -0.2, 0.2, 0.6, 1),
)
SUMMARIES = Counter(
    "rlmf_sentiment_summaries_total", "Summaries served, by whether the cache had them", ["cached"]
)
CONTESTED = Counter(
    "rlmf_sentiment_contested_total",
    "Items whose pieces disagreed in sign, scored by their least extreme piece",
    ["model"],
)


@dataclass(frozen=True)
class _Seen:
    published_at: datetime
    headline: str


class DayMemory:
    """The headlines seen so far per (ticker, UTC day), bounded in days kept."""

    def __init__(self, max_days: int = 10_000) -> None:
        self.max_days = max_days
        self._days: OrderedDict[tuple[str, date], list[_Seen]] = OrderedDict()

    def add(self, ticker: str, published_at: datetime, headline: str) -> None:
        key = (ticker, published_at.date())
        items = self._days.setdefault(key, [])
        if all(s.headline != headline for s in items):
            items.append(_Seen(published_at, headline))
        self._days.move_to_end(key)
        while len(self._days) > self.max_days:
            self._days.popitem(last=False)

    def up_to(self, ticker: str, published_at: datetime, limit: int) -> list[str]:
        """That day's headlines published at or before `published_at` (never later ones)."""
        items = self._days.get((ticker, published_at.date()), [])
        known = sorted((s for s in items if s.published_at <= published_at), key=_seen_order)
        return [s.headline for s in known[-limit:]]


def _seen_order(seen: _Seen) -> tuple[datetime, str]:
    return (seen.published_at, seen.headline)


def item_text(item: pb.NewsItem, max_chars: int) -> str:
    """What is scored: the headline, then the body, bounded."""
    parts = [p.strip() for p in (item.headline, item.body) if p.strip()]
    return ". ".join(parts)[:max_chars]


class EnrichHandler:
    """Scores a micro-batch in one pass and summarises each item's ticker-day."""

    def __init__(
        self,
        scorer: SentimentScorer,
        summarizer: Summarizer | None,
        *,
        max_text_chars: int = 1000,
        summary_max_headlines: int = 8,
    ) -> None:
        self.scorer = scorer
        self.summarizer = summarizer
        self.max_text_chars = max_text_chars
        self.summary_max_headlines = summary_max_headlines
        self.days = DayMemory()

    def __call__(self, batch: Sequence[Incoming]) -> list[list[Outgoing] | Exception]:
        started = time.perf_counter()
        results: list[list[Outgoing] | Exception] = []
        valid: list[tuple[int, pb.NewsItem, str]] = []
        for index, incoming in enumerate(batch):
            try:
                item, text = self._check(incoming)
            except ValidationFailed as exc:
                results.append(exc)
                continue
            results.append([])
            valid.append((index, item, text))
        scores = self.scorer.score([text for _, _, text in valid]) if valid else []
        for (index, item, _), score in zip(valid, scores, strict=True):
            results[index] = [self._output(item, score, started)]
        return results

    def _check(self, incoming: Incoming) -> tuple[pb.NewsItem, str]:
        item = incoming.payload
        if not isinstance(item, pb.NewsItem):
            raise ValidationFailed(f"expected rlmf.v1.NewsItem, got {type(item).__name__}")
        if not item.ticker.strip():
            raise ValidationFailed(f"news item {item.item_id!r} has no ticker")
        text = item_text(item, self.max_text_chars)
        if not text:
            raise ValidationFailed(f"news item {item.item_id!r} has no headline and no body")
        if not item.HasField("published_at"):
            raise ValidationFailed(f"news item {item.item_id!r} has no published_at")
        return item, text

    def _output(self, item: pb.NewsItem, score: Score, started: float) -> Outgoing:
        """The enriched item; latency counts from the batch's start to this item's end."""
        published = envelopes.to_datetime(item.published_at)
        headline = item.headline.strip() or item.body.strip()[:200]
        self.days.add(item.ticker, published, headline)
        summary = self._summary(item.ticker, published)
        enriched = pb.EnrichedNews(
            summary=summary,
            sentiment=max(-1.0, min(1.0, score.sentiment)),
            model_name=self.scorer.name,
            model_version=self.scorer.version,
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        enriched.item.CopyFrom(item)
        enriched.label_probabilities.update(score.probabilities)
        SCORES.labels(self.scorer.name).observe(enriched.sentiment)
        if score.contested:
            CONTESTED.labels(self.scorer.name).inc()
        return Outgoing(NEWS_ENRICHED, enriched, key=item.ticker, event_time=published)

    def _summary(self, ticker: str, published: datetime) -> str:
        headlines = self.days.up_to(ticker, published, self.summary_max_headlines)
        if self.summarizer is None:
            # No LLM (lexicon backend): an extractive summary, the day's headlines so far. It
            # goes into the policy's prompt, so chat markup in them is defused (the raw item
            # is kept as it came, in `item`).
            return neutralise_special_tokens("; ".join(headlines))
        before = self.summarizer.cache.hits
        summary = self.summarizer.summarize(ticker, headlines)
        SUMMARIES.labels(str(self.summarizer.cache.hits > before).lower()).inc()
        return summary

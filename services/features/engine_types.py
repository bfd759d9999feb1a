"""The feature engine's inputs and per-ticker state: their own module so that the engine
(engine.py) and its saved form (engine_state.py) both build on them without importing each
other."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime

from services.features.rolling import RollingMoments, WilderAverage

RSI_PERIOD = 14


@dataclass(frozen=True)
class BarIn:
    """One OHLCV bar; `end` is its close (the event time of the features it produces)."""

    ticker: str
    start: datetime | None
    end: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclass(frozen=True)
class NewsIn:
    """One enriched news item: when it was published and its sentiment in [-1, 1]."""

    ticker: str
    item_id: str
    published_at: datetime
    sentiment: float
    summary: str


@dataclass
class TickerState:
    """Everything one ticker needs to extend its features by one day."""

    dedup_memory: int
    closes: deque[float] = field(default_factory=lambda: deque(maxlen=21))
    returns_20: RollingMoments = field(default_factory=lambda: RollingMoments(20))
    closes_5: RollingMoments = field(default_factory=lambda: RollingMoments(5))
    closes_20: RollingMoments = field(default_factory=lambda: RollingMoments(20))
    volumes_20: RollingMoments = field(default_factory=lambda: RollingMoments(20))
    gains: WilderAverage = field(default_factory=lambda: WilderAverage(RSI_PERIOD))
    losses: WilderAverage = field(default_factory=lambda: WilderAverage(RSI_PERIOD))
    bars_seen: int = 0
    watermark: datetime | None = None
    served_cutoff: datetime | None = None
    recent_bars: OrderedDict[datetime, BarIn] = field(default_factory=OrderedDict)
    pending_news: list[NewsIn] = field(default_factory=list)
    news_ids: OrderedDict[str, None] = field(default_factory=OrderedDict)
    decayed: float = 0.0
    latest: NewsIn | None = None

    def remember_bar(self, bar: BarIn) -> None:
        self.recent_bars[bar.end] = bar
        while len(self.recent_bars) > self.dedup_memory:
            self.recent_bars.popitem(last=False)

    def remember_news(self, item_id: str) -> None:
        self.news_ids[item_id] = None
        while len(self.news_ids) > self.dedup_memory:
            self.news_ids.popitem(last=False)

"""Seeded sample streams of bars and news for tests, the bench and smoke runs (never real news)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from services.features.engine import BarIn, NewsIn

FIRST_CLOSE = datetime(2021, 1, 4, 21, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Sample:
    bars: list[BarIn]
    news: list[NewsIn]

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The same events as DataFrames, in the columns batch.compute_batch reads."""
        bars = pd.DataFrame([b.__dict__ for b in self.bars])
        news = pd.DataFrame(
            [n.__dict__ for n in self.news],
            columns=["ticker", "item_id", "published_at", "sentiment", "summary"],
        )
        return bars, news


def sample(
    tickers: tuple[str, ...] = ("MSFT",),
    days: int = 60,
    news_per_day: float = 2.0,
    seed: int = 0,
) -> Sample:
    """A geometric random walk of daily bars per ticker (closes 21:00 UTC, one day apart) and
    news items at random times with random sentiment."""
    rng = np.random.default_rng(seed)
    bars: list[BarIn] = []
    news: list[NewsIn] = []
    for ticker in tickers:
        close = 100.0 * np.exp(np.cumsum(rng.normal(0.0005, 0.02, days)))
        volume = rng.lognormal(15.0, 0.3, days).round()
        for i in range(days):
            end = FIRST_CLOSE + timedelta(days=i)
            c, o = float(close[i]), float(close[i - 1] if i else close[0])
            hi, lo = max(o, c) * (1 + rng.uniform(0, 0.01)), min(o, c) * (1 - rng.uniform(0, 0.01))
            bars.append(BarIn(ticker, end - timedelta(hours=6, minutes=30), end, o, hi, lo, c,
                              float(volume[i])))  # fmt: skip
        for j in range(rng.poisson(news_per_day * days)):
            published = FIRST_CLOSE + timedelta(days=float(rng.uniform(-1.0, days - 0.5)))
            news.append(
                NewsIn(ticker, f"{ticker}-{seed}-{j}", published.replace(microsecond=0),
                       float(rng.uniform(-1, 1)), f"{ticker} summary {j}")
            )  # fmt: skip
    return Sample(bars, news)


def event_order(s: Sample, cutoff_before_close_s: float = 0.0) -> list[BarIn | NewsIn]:
    """Bars and news interleaved in event time: a bar at its news cutoff, news at or before a
    cutoff ahead of that bar (the order an on-time stream delivers them)."""
    cut = timedelta(seconds=cutoff_before_close_s)
    keyed: list[tuple[tuple[datetime, int, str], BarIn | NewsIn]] = [
        ((b.end - cut, 1, b.ticker), b) for b in s.bars
    ]
    keyed += [((n.published_at, 0, n.item_id), n) for n in s.news]
    return [event for _, event in sorted(keyed, key=lambda k: k[0])]

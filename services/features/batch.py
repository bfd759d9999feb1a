"""The same features computed in one pass with pandas: the reference the incremental engine is
tested against (streamed == batch), a backfill path, and the bench's recompute baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.features.engine import MARKET_FEATURES, NEWS_FEATURES, RSI_PERIOD
from services.features.settings import FeaturesSettings

BAR_COLUMNS = ["ticker", "end", "open", "high", "low", "close", "volume"]
NEWS_COLUMNS = ["ticker", "item_id", "published_at", "sentiment", "summary"]


def market_frame(close: pd.Series, volume: pd.Series) -> pd.DataFrame:
    """Market features of one ticker's bars (already sorted by time and de-duplicated)."""
    close = close.astype(float).reset_index(drop=True)
    volume = volume.astype(float).reset_index(drop=True)
    out = pd.DataFrame({"close": close})
    for k in (1, 5, 20):
        out[f"ret_{k}d"] = (close / close.shift(k) - 1.0).fillna(0.0)
    out["realised_vol_20d"] = close.pct_change().rolling(20, min_periods=20).std().fillna(0.0)
    for k in (5, 20):
        out[f"ma_gap_{k}d"] = (close / close.rolling(k, min_periods=k).mean() - 1.0).fillna(0.0)
    mean = volume.rolling(20, min_periods=20).mean()
    std = volume.rolling(20, min_periods=20).std()
    constant = std <= 1e-9 * np.maximum(mean.abs(), 1e-12)
    out["volume_z_20d"] = ((volume - mean) / std).where(~constant, 0.0).fillna(0.0)
    delta = close.diff()
    alpha = 1.0 / RSI_PERIOD
    gain = delta.clip(lower=0).ewm(alpha=alpha, adjust=False, min_periods=RSI_PERIOD).mean()
    loss = (-delta).clip(lower=0).ewm(alpha=alpha, adjust=False, min_periods=RSI_PERIOD).mean()
    rsi = 100.0 - 100.0 / (1.0 + gain / loss)
    rsi = rsi.where(loss != 0.0, np.where(gain > 0.0, 100.0, 50.0))
    out["rsi_14"] = rsi.where(gain.notna(), 50.0)
    out["bars_seen"] = np.arange(1, len(close) + 1, dtype="int64")
    return out[list(MARKET_FEATURES)]


def news_frame(ends: pd.Series, news: pd.DataFrame, settings: FeaturesSettings) -> pd.DataFrame:
    """News features of one ticker for the days closing at `ends` (sorted)."""
    ends = pd.Series(pd.to_datetime(ends, utc=True)).reset_index(drop=True)
    cutoffs = ends - pd.Timedelta(seconds=settings.news_cutoff_before_close_s)
    news = news.drop_duplicates("item_id", keep="first")
    published = pd.to_datetime(news["published_at"], utc=True)
    # Day index of each item: the first day whose cutoff is at or after its publication.
    day = np.searchsorted(cutoffs.to_numpy(), published.to_numpy(), side="left")
    news = news.assign(day=day, published=published)
    news = news[news["day"] < len(ends)]
    grouped = news.groupby("day")["sentiment"]
    mean = grouped.mean().reindex(range(len(ends)), fill_value=0.0).astype(float)
    count = grouped.size().reindex(range(len(ends)), fill_value=0).astype("int64")
    decay = 0.5 ** (1.0 / settings.sentiment_half_life_days)
    # Start the decayed average from 0 (the engine's state before any news), then drop that seed.
    seeded = pd.concat([pd.Series([0.0]), mean], ignore_index=True)
    decayed = seeded.ewm(alpha=1.0 - decay, adjust=False).mean().iloc[1:].reset_index(drop=True)
    latest = (
        news.sort_values(["published", "item_id"]).groupby("day")["summary"].last()
        .reindex(range(len(ends))).astype("string").ffill().fillna("")
    )  # fmt: skip
    out = pd.DataFrame(
        {
            "news_sentiment_mean": mean.to_numpy(),
            "news_count": count.to_numpy(),
            "news_sentiment_decayed": decayed.to_numpy(),
            "news_latest_summary": latest.astype(str).to_numpy(),
        }
    )
    return out[list(NEWS_FEATURES)]


def compute_batch(
    bars: pd.DataFrame, news: pd.DataFrame, settings: FeaturesSettings
) -> pd.DataFrame:
    """All features for every (ticker, close) in `bars`: columns ticker, event_timestamp, then
    the market and news features. Duplicate bars (same ticker and end) keep the first."""
    frames = []
    bars = bars.assign(end=pd.to_datetime(bars["end"], utc=True))
    for ticker, group in bars.groupby("ticker", sort=True):
        group = group.drop_duplicates("end", keep="first").sort_values("end", kind="stable")
        ticker_news = news[news["ticker"] == ticker] if len(news) else news
        if not len(ticker_news):
            ticker_news = pd.DataFrame(columns=NEWS_COLUMNS)
        market = market_frame(group["close"], group["volume"])
        day_news = news_frame(group["end"], ticker_news, settings)
        head = pd.DataFrame({"ticker": ticker, "event_timestamp": group["end"].to_numpy()})
        frames.append(pd.concat([head, market, day_news], axis=1))
    if not frames:
        return pd.DataFrame(columns=["ticker", "event_timestamp", *MARKET_FEATURES, *NEWS_FEATURES])
    return pd.concat(frames, ignore_index=True)

"""Per-bar news sentiment and summaries for a backtest, bucketed so no bar sees later news.

A news file is CSV or JSON Lines with a time column (time, published_at, timestamp or date), a
`sentiment` in [-1, 1] and optionally `summary` (or `headline`) and `ticker`. An item published
at time p belongs to the first bar whose cutoff (bar time + bar length, i.e. its close) is after
p: news during day d informs bar d's decision, weekend news Monday's, and never an earlier bar.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from services.market.market_data import MarketDataError

TIME_NAMES = ("time", "published_at", "timestamp", "date")


def load_news_file(path: str | Path, ticker: str | None = None) -> pd.DataFrame:
    """Rows with a UTC `time`, `sentiment` and `summary`, sorted by time.

    Raises:
        MarketDataError: unreadable file, no time or sentiment column, or a bad value
            (the row is named).
    """
    path = Path(path)
    try:
        raw = (
            pd.read_json(path, lines=True)
            if path.suffix in (".jsonl", ".ndjson")
            else pd.read_csv(path)
        )
    except (OSError, ValueError) as exc:
        raise MarketDataError(f"{path}: cannot read news: {exc}") from exc
    columns = {str(c).lower(): c for c in raw.columns}
    time_col = next((columns[n] for n in TIME_NAMES if n in columns), None)
    if time_col is None or "sentiment" not in columns:
        raise MarketDataError(
            f"{path}: news needs a time column ({', '.join(TIME_NAMES)}) and a sentiment column"
        )
    if ticker is not None and "ticker" in columns:
        raw = raw[raw[columns["ticker"]].astype(str).str.upper() == ticker.upper()]
    times = pd.to_datetime(raw[time_col], utc=True, errors="coerce", format="mixed")
    sentiment = pd.to_numeric(raw[columns["sentiment"]], errors="coerce")
    bad = np.flatnonzero((times.isna() | sentiment.isna() | (sentiment.abs() > 1)).to_numpy())
    if len(bad):
        row = raw.index[bad[0]]
        raise MarketDataError(
            f"{path}: row {row + 2}: time missing or sentiment not a number in [-1, 1]"
        )
    text_col = columns.get("summary", columns.get("headline"))
    summary = (
        raw[text_col].fillna("").astype(str)
        if text_col is not None
        else pd.Series("", index=raw.index)
    )
    out = pd.DataFrame(
        {"time": times.to_numpy(), "sentiment": sentiment.to_numpy(), "summary": summary.to_numpy()}
    )
    return out.sort_values("time", kind="stable").reset_index(drop=True)


def bucket_news(
    news: pd.DataFrame, bar_times: pd.DatetimeIndex, bar_seconds: float
) -> tuple[pd.Series, pd.Series]:
    """Mean sentiment and joined summaries per bar (empty bars: sentiment NaN, summary "")."""
    cutoffs = bar_times + pd.Timedelta(seconds=bar_seconds)
    bar_of = np.searchsorted(cutoffs.asi8, pd.DatetimeIndex(news["time"]).asi8, side="right")
    keep = bar_of < len(bar_times)
    frame = news[keep].assign(bar=bar_of[keep])
    grouped = frame.groupby("bar")
    sentiment = pd.Series(np.nan, index=bar_times)
    summaries = pd.Series("", index=bar_times, dtype=object)
    if len(frame):
        means = grouped["sentiment"].mean()
        sentiment.iloc[means.index.to_numpy()] = means.to_numpy()
        texts = grouped["summary"].agg(lambda s: " | ".join(t for t in s if t)[:2000])
        summaries.iloc[texts.index.to_numpy()] = texts.to_numpy()
    return sentiment, summaries

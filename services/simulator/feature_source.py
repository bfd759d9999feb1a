"""Decision features from the features service's Feast store, read point in time.

A point-in-time read returns the features as they were known at the bar's cutoff; an online
read would return the latest row, which in live mode may already be a later bar's if the
features service ran ahead of the simulator. Imported only when enabled (Feast is heavy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pandas as pd

KEYS = ("ticker", "event_timestamp")


class FeastFeatures:
    """Callable as reader(ticker, cutoff) -> {numeric features..., "sentiment", "news_summary"}."""

    def __init__(self, settings: Any = None) -> None:
        from services.features.store import FeatureReader

        self.reader = FeatureReader(settings)

    def __call__(self, ticker: str, cutoff: datetime) -> dict[str, Any]:
        entity = pd.DataFrame({"ticker": [ticker], "event_timestamp": [pd.Timestamp(cutoff)]})
        return state_values(self.reader.historical(entity).iloc[0].to_dict())


def state_values(row: Mapping[str, Any]) -> dict[str, Any]:
    """One joined Feast row as the decision state takes it: the finite numeric features, plus
    "sentiment" (None on a day without news) and "news_summary". The trainer builds its
    training states from the offline store with the same function (services/trainer)."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name in KEYS or value is None or isinstance(value, str):
            continue
        number = float(value)
        if math.isfinite(number):
            out[str(name)] = number
    count = out.get("news_count", 0.0)
    mean = out.get("news_sentiment_mean")
    # No news that day: the state says "no sentiment" rather than a fake neutral 0.
    out["sentiment"] = max(-1.0, min(1.0, mean)) if count and mean is not None else None
    summary = row.get("news_latest_summary")
    out["news_summary"] = summary if isinstance(summary, str) else ""
    return out

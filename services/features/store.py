"""Reading and writing features in Feast: the push the service does, the reads others do.

`FeatureReader(settings).online(ticker)` is what the simulator/policy reads at decision time;
`.historical(entity_df)` is the trainer's point-in-time join over the offline Parquet files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from feast import FeatureStore
from feast.data_source import PushMode
from tenacity import Retrying, stop_after_attempt, wait_exponential

from services.features.engine import MARKET_FEATURES, NEWS_FEATURES, DayFeatures
from services.features.repo import open_store
from services.features.settings import FeaturesSettings

log = logging.getLogger(__name__)

PUSH_SOURCES = {"market_features_push": MARKET_FEATURES, "news_sentiment_push": NEWS_FEATURES}
_ROW = "__rlmf_row"


class FeatureWriter:
    """Pushes computed days to both stores (online and offline) through the push sources."""

    def __init__(self, settings: FeaturesSettings, store: FeatureStore | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(settings)

    def push(self, days: Sequence[DayFeatures]) -> None:
        """Write `days` ONLINE_AND_OFFLINE; retried, then raises the store's error."""
        if not days:
            return
        for source, columns in PUSH_SOURCES.items():
            frame = self._frame(days, columns, news=source.startswith("news"))
            for attempt in Retrying(
                stop=stop_after_attempt(self.settings.push_attempts),
                wait=wait_exponential(multiplier=0.2, max=2.0),
                reraise=True,
            ):
                with attempt:
                    self.store.push(source, frame, to=PushMode.ONLINE_AND_OFFLINE)

    @staticmethod
    def _frame(days: Sequence[DayFeatures], columns: Sequence[str], news: bool) -> pd.DataFrame:
        # Column order must equal the Parquet file's: the file offline store checks it.
        rows = [
            {
                "ticker": d.ticker,
                "event_timestamp": d.event_timestamp,
                **(d.news if news else d.market),
            }
            for d in days
        ]
        frame = pd.DataFrame(rows, columns=["ticker", "event_timestamp", *columns])
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
        return frame


class FeatureReader:
    """Online and point-in-time historical reads of a FeatureService (default policy_v1)."""

    def __init__(self, settings: FeaturesSettings | None = None, store: FeatureStore | None = None):
        self.settings = settings or FeaturesSettings()
        self.store = store or open_store(self.settings)
        self.service = self.store.get_feature_service(self.settings.feature_service)

    def online(self, ticker: str) -> dict[str, float | str]:
        """The latest features of `ticker`; {} when the store has none for it.

        Numbers come back as float (counts too), the summary as str, so the dict drops into
        MarketState.features after removing the string."""
        answer = self.store.get_online_features(
            features=self.service, entity_rows=[{"ticker": ticker}]
        ).to_dict()
        values = {k: v[0] for k, v in answer.items() if k != "ticker"}
        if all(v is None for v in values.values()):
            return {}
        return {k: _plain(v) for k, v in values.items() if v is not None}

    def online_numeric(self, ticker: str) -> dict[str, float]:
        """Only the finite numeric features (what MarketState.features accepts)."""
        return {
            k: v for k, v in self.online(ticker).items()
            if isinstance(v, float) and math.isfinite(v)
        }  # fmt: skip

    def historical(self, entity_df: pd.DataFrame) -> pd.DataFrame:
        """Point-in-time join: for each (ticker, event_timestamp) row, the features as they were
        known at that time (the latest row at or before it, within the views' ttl).

        Every input row comes back, in input order, with NaN where nothing was known: Feast's
        file store drops rows of a known ticker that have no match (before its first row or
        past the ttl), and a training set must not shrink silently."""
        missing = {"ticker", "event_timestamp"} - set(entity_df.columns)
        if missing:
            raise ValueError(f"entity_df lacks column(s) {sorted(missing)}")
        entities = entity_df.reset_index(drop=True).copy()
        entities["event_timestamp"] = pd.to_datetime(entities["event_timestamp"], utc=True)
        entities[_ROW] = range(len(entities))
        joined = self.store.get_historical_features(
            entity_df=entities[["ticker", "event_timestamp", _ROW]], features=self.service
        ).to_df()
        features = joined.drop(columns=["ticker", "event_timestamp"]).drop_duplicates(_ROW)
        out = entities.merge(features, on=_ROW, how="left").sort_values(_ROW)
        return out.drop(columns=[_ROW]).reset_index(drop=True)


def _plain(value: Any) -> float | str:
    if isinstance(value, str):
        return value
    return float(value)

"""Each bar's features as the live simulator saw them, from Feast's offline store.

The simulator builds a decision's state from the features service's store, read at the bar's
cutoff (its close). A student trained on states without those features would be served prompts
it never saw in training, so with RLMF_TRAINER_FEATURES_SOURCE=feast the trainer's environments
carry the same features: one point-in-time join over every bar's cutoff, which returns for each
bar the newest row stamped at or before that cutoff and never a later one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from services.common.market_state import state_values

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BarFeatures:
    """Per bar (indexed like the prices): numeric features, the day's news sentiment (NaN on a
    day without news) and its latest summary ("" without news)."""

    numeric: pd.DataFrame
    sentiment: pd.Series
    summaries: pd.Series


def state_inputs(features: BarFeatures | None) -> dict[str, Any]:
    """The DiscreteTradingEnv / run_backtest arguments that put `features` into the states."""
    if features is None:
        return {}
    return {
        "state_features": features.numeric,
        "sentiment": features.sentiment,
        "summaries": features.summaries,
    }


def bar_cutoffs(prices: pd.DataFrame) -> pd.DatetimeIndex:
    """When each bar closed: features are stamped with it (services/simulator/service.py)."""
    length = pd.Timedelta(seconds=float(prices.attrs.get("bar_seconds", 86_400.0)))
    return pd.DatetimeIndex(prices.index) + length


def offline_bar_features(reader: Any, prices: pd.DataFrame, ticker: str) -> BarFeatures:
    """The features of every bar of `prices`, point in time (`reader`: a FeatureReader)."""
    entity = pd.DataFrame({"ticker": ticker, "event_timestamp": bar_cutoffs(prices)})
    joined = _historical(reader, entity)
    rows = [state_values(row) for row in joined.to_dict("records")]
    sentiment = [row.pop("sentiment") for row in rows]
    summaries = [row.pop("news_summary") for row in rows]
    return BarFeatures(
        numeric=pd.DataFrame(rows, index=prices.index),
        sentiment=pd.Series(sentiment, index=prices.index, dtype="float64"),
        summaries=pd.Series(summaries, index=prices.index, dtype="object"),
    )


# The file offline store rewrites its Parquet file in place when the features service pushes;
# a read that lands mid-write fails to parse and succeeds a moment later.
@retry(
    retry=retry_if_exception_type((OSError, ValueError)),
    stop=stop_after_attempt(5),
    wait=wait_exponential(multiplier=0.2, max=3),
    reraise=True,
)
def _historical(reader: Any, entity: pd.DataFrame) -> pd.DataFrame:
    return reader.historical(entity)


def load_bar_features(source: str, prices: pd.DataFrame, ticker: str) -> BarFeatures | None:
    """`source` "feast": read from the store RLMF_FEATURES_* name; "none": None."""
    if source == "none":
        return None
    from services.features.store import FeatureReader

    features = offline_bar_features(FeatureReader(), prices, ticker)
    log.info(
        "training states carry %d Feast features: %s",
        features.numeric.shape[1],
        ", ".join(features.numeric.columns),
    )
    return features


def first_bar_with_features(features: BarFeatures | None) -> int:
    """The index of the first bar with a finite feature or a news sentiment; 0 without any."""
    if features is None:
        return 0
    known = features.sentiment.notna().to_numpy()
    if features.numeric.shape[1]:
        known = known | features.numeric.notna().any(axis=1).to_numpy()
    return int(known.argmax()) if known.any() else 0

"""Decision features from the features service's Feast store, read point in time.

A point-in-time read returns the features as they were known at the bar's cutoff; an online
read would return the latest row, which in live mode may already be a later bar's if the
features service ran ahead of the simulator. Imported only when enabled (Feast is heavy).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
from tenacity import Retrying, stop_after_attempt, wait_fixed

from services.common.market_state import state_values

READ_ATTEMPTS = 3


class FeastFeatures:
    """Callable as reader(ticker, cutoff) -> {numeric features..., "sentiment", "news_summary"}."""

    def __init__(self, settings: Any = None) -> None:
        from services.features.store import FeatureReader

        self.reader = FeatureReader(settings)

    def __call__(self, ticker: str, cutoff: datetime) -> dict[str, Any]:
        entity = pd.DataFrame({"ticker": [ticker], "event_timestamp": [pd.Timestamp(cutoff)]})
        # Feast's file offline store rewrites a view's Parquet file in place on every push of the
        # features service, so a read can find it half written (e.g. "Parquet file size is 0
        # bytes"); a moment later it is whole again. What still fails is raised to the caller.
        for attempt in Retrying(
            stop=stop_after_attempt(READ_ATTEMPTS), wait=wait_fixed(0.2), reraise=True
        ):
            with attempt:
                row = self.reader.historical(entity).iloc[0].to_dict()
        return state_values(row)

"""The simulator's Feast feature source over a real applied repo (SQLite online, Parquet offline):
a decision at a cutoff gets the features known then, never a later day's."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:On demand feature view is an experimental")

MARKET = ("close", "ret_1d", "ret_5d", "ret_20d", "realised_vol_20d", "ma_gap_5d", "ma_gap_20d",
          "volume_z_20d", "rsi_14", "bars_seen")  # fmt: skip


def test_point_in_time_features_for_a_cutoff(tmp_path: Path) -> None:
    from services.features.engine import DayFeatures
    from services.features.repo import apply_repo, open_store
    from services.features.settings import FeaturesSettings
    from services.features.store import FeatureWriter
    from services.simulator.feature_source import FeastFeatures

    settings = FeaturesSettings(
        data_dir=tmp_path, store="local", project=f"s_{uuid.uuid4().hex[:10]}"
    )
    apply_repo(settings)
    day0 = datetime(2024, 3, 4, 21, tzinfo=UTC)
    days = []
    for i in range(3):
        market = {name: float(i + 1) for name in MARKET}
        news = {
            "news_sentiment_mean": [0.5, 0.0, -0.5][i],
            "news_count": [2, 0, 1][i],
            "news_sentiment_decayed": 0.1 * i,
            "news_latest_summary": f"day {i} news",
        }
        days.append(DayFeatures("MSFT", day0 + timedelta(days=i), market, news))
    try:
        FeatureWriter(settings).push(days)
        read = FeastFeatures(settings)
        first = read("MSFT", day0 + timedelta(hours=1))
        assert (
            first["close"] == 1.0
            and first["sentiment"] == 0.5
            and first["news_summary"] == "day 0 news"
        )
        second = read("MSFT", day0 + timedelta(days=1, hours=1))
        # No news that day: no sentiment, and the summary the row carries is not the day's.
        assert second["close"] == 2.0 and second["sentiment"] is None
        assert second["news_summary"] == ""
        assert read("MSFT", day0 + timedelta(days=2))["close"] == 3.0
    finally:
        open_store(settings).teardown()

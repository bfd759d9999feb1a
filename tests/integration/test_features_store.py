"""The Feast repo applied for real (SQLite and the real Redis): parity and point-in-time reads."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from feast import FeatureStore

from services.features.batch import compute_batch
from services.features.engine import DayFeatures
from services.features.repo import apply_repo, open_store
from services.features.sample import sample
from services.features.settings import FeaturesSettings
from services.features.store import FeatureReader, FeatureWriter
from tests.helpers import REDIS, require_redis

pytestmark = pytest.mark.filterwarnings("ignore:On demand feature view is an experimental")
NUMERIC = [
    "close", "ret_1d", "ret_5d", "ret_20d", "realised_vol_20d", "ma_gap_5d", "ma_gap_20d",
    "volume_z_20d", "rsi_14", "bars_seen", "news_sentiment_mean", "news_count",
    "news_sentiment_decayed",
]  # fmt: skip


def store_settings(kind: str, tmp: Path) -> FeaturesSettings:
    if kind == "redis":
        require_redis()
    return FeaturesSettings(
        data_dir=tmp,
        store="cluster" if kind == "redis" else "local",
        project=f"t_{uuid.uuid4().hex[:10]}",  # own Redis keys on a shared Redis
        redis_address=REDIS,
    )


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def applied(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FeaturesSettings]:
    """The repo applied once per store kind into a temporary folder (apply takes seconds)."""
    settings = store_settings(request.param, tmp_path_factory.mktemp(f"feast-{request.param}"))
    apply_repo(settings)
    yield settings
    open_store(settings).teardown()  # drops this project's online tables / Redis keys


@pytest.fixture(scope="module")
def pushed(applied: FeaturesSettings) -> pd.DataFrame:
    """Two tickers' features computed in batch and pushed through the push sources."""
    data = sample(("MSFT", "GOOGL"), days=40, seed=11)
    expected = compute_batch(*data.frames(), applied)
    writer = FeatureWriter(applied)
    rows = expected.to_dict("records")
    days = [
        DayFeatures(
            r["ticker"], r["event_timestamp"].to_pydatetime(),
            {k: r[k] for k in NUMERIC[:10]},
            {k: r[k] for k in (*NUMERIC[10:], "news_latest_summary")},
        )
        for r in rows
    ]  # fmt: skip
    writer.push(days[:50])  # two pushes: the offline files are appended to, not replaced
    writer.push(days[50:])
    return expected


def test_repo_applies_with_described_fields_and_ttl(applied: FeaturesSettings) -> None:
    store: FeatureStore = open_store(applied)
    views = {v.name: v for v in store.list_feature_views()}
    assert set(views) == {"market_features", "news_sentiment"}
    for view in views.values():
        assert view.ttl == timedelta(days=10)
        assert all(f.description for f in view.schema if f.name != "ticker"), view.name
    odfv = store.get_on_demand_feature_view("volatility_adjusted_sentiment")
    assert [f.name for f in odfv.features] == ["vol_adjusted_sentiment"]
    service = store.get_feature_service("policy_v1")
    assert {p.name for p in service.feature_view_projections} == {
        "market_features", "news_sentiment", "volatility_adjusted_sentiment",
    }  # fmt: skip
    assert (applied.data_dir / "offline" / "market_features.parquet").exists()


def test_online_equals_offline_equals_computed(
    applied: FeaturesSettings, pushed: pd.DataFrame
) -> None:
    reader = FeatureReader(applied)
    entity_df = pushed[["ticker", "event_timestamp"]]
    offline = reader.historical(entity_df)
    assert len(offline) == len(pushed)
    for col in NUMERIC:
        np.testing.assert_allclose(offline[col].astype(float), pushed[col].astype(float),
                                   rtol=1e-12, err_msg=col)  # fmt: skip
    assert list(offline["news_latest_summary"]) == list(pushed["news_latest_summary"])
    annualised = pushed["realised_vol_20d"] * np.sqrt(252)
    np.testing.assert_allclose(
        offline["vol_adjusted_sentiment"], pushed["news_sentiment_decayed"] / (1 + annualised)
    )
    for ticker in ("MSFT", "GOOGL"):
        online = reader.online(ticker)
        last = offline[offline["ticker"] == ticker].iloc[-1]
        for col in [*NUMERIC, "vol_adjusted_sentiment"]:
            assert online[col] == pytest.approx(float(last[col]), rel=1e-12), col
        assert online["news_latest_summary"] == last["news_latest_summary"]
        numeric = reader.online_numeric(ticker)
        assert "news_latest_summary" not in numeric and len(numeric) == len(NUMERIC) + 1


def test_historical_is_point_in_time(applied: FeaturesSettings, pushed: pd.DataFrame) -> None:
    msft = pushed[pushed["ticker"] == "MSFT"].reset_index(drop=True)
    first, day10 = msft["event_timestamp"].iloc[0], msft["event_timestamp"].iloc[10]
    last = msft["event_timestamp"].iloc[-1]
    entity_df = pd.DataFrame({
        "ticker": ["MSFT", "MSFT", "MSFT", "MSFT", "NOPE"],
        "event_timestamp": [
            day10 - timedelta(seconds=1),  # just before day 10's close: day 9
            first - timedelta(hours=1),  # before anything was known
            day10,  # exactly at the close: day 10
            last + timedelta(days=30),  # past the ttl: nothing
            day10,  # unknown ticker
        ],
        "label": [0, 1, 2, 3, 4],
    })  # fmt: skip
    out = FeatureReader(applied).historical(entity_df)
    assert list(out["label"]) == [0, 1, 2, 3, 4]  # every row back, in order
    assert out.loc[0, "close"] == msft.loc[9, "close"]
    assert out.loc[0, "bars_seen"] == 10
    assert out.loc[2, "close"] == msft.loc[10, "close"]
    assert out.loc[[1, 3, 4], "close"].isna().all()


def test_online_rows_live_in_the_configured_store(
    applied: FeaturesSettings, pushed: pd.DataFrame
) -> None:
    if applied.store == "cluster":
        host, port = REDIS.split(":")
        keys = redis.Redis(host=host, port=int(port)).keys(f"*{applied.project}*")
        assert len(keys) == 2  # one hash per ticker, holding both views
        assert not applied.online.exists()
    else:
        assert applied.online.stat().st_size > 0


def test_online_of_an_unknown_ticker_is_empty(
    applied: FeaturesSettings, pushed: pd.DataFrame
) -> None:
    assert FeatureReader(applied).online("NOPE") == {}


def test_reading_an_unapplied_folder_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="rlmf features apply"):
        FeatureReader(FeaturesSettings(data_dir=tmp_path))


def test_cli_apply_renders_the_chosen_store_into_the_given_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from services.features.cli import app

    result = CliRunner().invoke(app, ["apply", "--data-dir", str(tmp_path), "--store", "local"])
    assert result.exit_code == 0, result.output
    rendered = (tmp_path / "feature_store.yaml").read_text()
    assert "${" not in rendered and str(tmp_path / "online.db") in rendered
    views = open_store(FeaturesSettings(data_dir=tmp_path)).list_feature_views()
    assert {v.name for v in views} == {"market_features", "news_sentiment"}
    bad = CliRunner().invoke(app, ["apply", "--data-dir", str(tmp_path), "--store", "s3"])
    assert bad.exit_code != 0 and "local|cluster" in str(bad.exception)


def test_cluster_config_renders_redis_and_keeps_env_placeholders_usable() -> None:
    from services.features.repo import render_config

    text = render_config(FeaturesSettings(store="cluster", redis_address="redis:6379,db=2"))
    assert "type: redis" in text and "connection_string: redis:6379,db=2" in text
    raw = (FeaturesSettings().repo_dir / "feature_store.cluster.yaml").read_text()
    # The chart may ship the raw file: every placeholder is an RLMF_FEATURES_* variable.
    assert set(re.findall(r"\$\{(\w+)\}", raw)) == {
        "RLMF_FEATURES_PROJECT", "RLMF_FEATURES_REGISTRY_PATH", "RLMF_FEATURES_REDIS_ADDRESS",
    }  # fmt: skip

"""RLMF's Feast definitions: market and news features per ticker, online and offline.

Read top to bottom in dependency order: entity -> sources -> feature views -> on-demand view ->
feature service. The features service computes every value incrementally and pushes it
through the push sources; each push source is backed by a Parquet file (the offline store),
so the trainer's point-in-time joins read exactly what the policy read online.
Paths are relative to the applied repo folder (settings.data_dir), never to this checkout.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String
from feast.value_type import ValueType

# The project name comes from feature_store.yaml (a setting), so tests can use their own.

# --- entity --------------------------------------------------------------------------------

ticker = Entity(
    name="ticker",
    join_keys=["ticker"],
    value_type=ValueType.STRING,
    description="Exchange ticker, e.g. MSFT",
)

# --- sources: a push source per view, each backed by a Parquet file for the offline store ----

market_bars_source = FileSource(
    name="market_bars_source",
    path="offline/market_features.parquet",
    timestamp_field="event_timestamp",
    description="Market features written by the features service, one row per ticker and close",
)
market_features_push = PushSource(name="market_features_push", batch_source=market_bars_source)

news_source = FileSource(
    name="news_source",
    path="offline/news_sentiment.parquet",
    timestamp_field="event_timestamp",
    description="News features written by the features service, one row per ticker and close",
)
news_sentiment_push = PushSource(name="news_sentiment_push", batch_source=news_source)

# --- feature views -------------------------------------------------------------------------
# Rows are stamped with the bar's close; a ttl of 10 days lets a join bridge weekends and
# holidays but never serves a stale row from a ticker that stopped trading weeks ago.

market_features_fv = FeatureView(
    name="market_features",
    entities=[ticker],
    ttl=timedelta(days=10),
    schema=[
        Field(name="close", dtype=Float64, description="Close of the day's bar"),
        Field(name="ret_1d", dtype=Float64, description="close_t / close_t-1 - 1 (0 until 2 bars)"),
        Field(name="ret_5d", dtype=Float64, description="close_t / close_t-5 - 1 (0 until 6 bars)"),
        Field(
            name="ret_20d", dtype=Float64, description="close_t / close_t-20 - 1 (0 until 21 bars)"
        ),
        Field(
            name="realised_vol_20d",
            dtype=Float64,
            description="Sample std of the last 20 daily returns, not annualised (0 until 21 bars)",
        ),
        Field(name="ma_gap_5d", dtype=Float64, description="close / 5-day mean close - 1"),
        Field(name="ma_gap_20d", dtype=Float64, description="close / 20-day mean close - 1"),
        Field(
            name="volume_z_20d",
            dtype=Float64,
            description="(volume - 20-day mean) / 20-day sample std, 0 when the std is 0",
        ),
        Field(
            name="rsi_14",
            dtype=Float64,
            description="RSI over 14 days with Wilder smoothing (alpha 1/14), in [0, 100]; 50 until"
            " 15 bars",
        ),
        Field(name="bars_seen", dtype=Int64, description="Bars of this ticker up to this close"),
    ],
    online=True,
    source=market_features_push,
    description="Price and volume features of one ticker at one close",
)

news_sentiment_fv = FeatureView(
    name="news_sentiment",
    entities=[ticker],
    ttl=timedelta(days=10),
    schema=[
        Field(
            name="news_sentiment_mean",
            dtype=Float64,
            description="Mean sentiment in [-1, 1] of the day's news (0 when there was none)",
        ),
        Field(name="news_count", dtype=Int64, description="News items assigned to this day"),
        Field(
            name="news_sentiment_decayed",
            dtype=Float64,
            description="Exponentially decayed daily mean sentiment (half-life a setting)",
        ),
        Field(
            name="news_latest_summary",
            dtype=String,
            description="Summary of the latest news published up to the cutoff ('' if none yet)",
        ),
    ],
    online=True,
    source=news_sentiment_push,
    description="News sentiment of one ticker up to the news cutoff of one day",
)

# --- on-demand view ------------------------------------------------------------------------


# Feast 0.67 compares the declared output Field with one it infers by running the function,
# description included, so a description here fails `apply`; the view's description says it.
# mode="python" (dicts of lists) rather than "pandas": online reads take ~0.5 ms instead of ~15.
@on_demand_feature_view(
    sources=[market_features_fv, news_sentiment_fv],
    schema=[Field(name="vol_adjusted_sentiment", dtype=Float64)],
    mode="python",
    description="vol_adjusted_sentiment = news_sentiment_decayed / (1 + annualised 20-day "
    "volatility): the News-driven RL seed's sentiment signal, damped when the market is volatile",
)
def volatility_adjusted_sentiment(inputs: dict[str, list]) -> dict[str, list]:
    # Feast re-runs this from its source text, without this module's imports: builtins only.
    # A row a point-in-time join found nothing for has None inputs, and gets None.
    return {
        "vol_adjusted_sentiment": [
            None
            if sentiment is None or vol is None
            else float(sentiment) / (1.0 + float(vol) * 252.0**0.5)
            for sentiment, vol in zip(
                inputs["news_sentiment_decayed"], inputs["realised_vol_20d"], strict=True
            )
        ]
    }


# --- feature service -----------------------------------------------------------------------

policy_v1 = FeatureService(
    name="policy_v1",
    features=[market_features_fv, news_sentiment_fv, volatility_adjusted_sentiment],
    description="Everything the policy and the trainer read, version 1",
)

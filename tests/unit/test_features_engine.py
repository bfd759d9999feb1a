"""The incremental feature engine: same numbers as pandas, no look-ahead, event-time rules."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.bus import ValidationFailed
from services.features.batch import compute_batch
from services.features.engine import (
    MARKET_FEATURES,
    NEWS_FEATURES,
    BarIn,
    DayFeatures,
    FeatureEngine,
    NewsIn,
)
from services.features.rolling import RollingMoments
from services.features.sample import FIRST_CLOSE, Sample, event_order, sample
from services.features.settings import FeaturesSettings

NUMERIC = [c for c in (*MARKET_FEATURES, *NEWS_FEATURES) if c != "news_latest_summary"]


def run_stream(events: list[BarIn | NewsIn], s: FeaturesSettings) -> pd.DataFrame:
    engine = FeatureEngine(s)
    rows = []
    for event in events:
        if isinstance(event, BarIn):
            day = engine.on_bar(event)
            if day is not None:
                rows.append(as_row(day))
        else:
            engine.on_news(event)
    return pd.DataFrame(rows)


def as_row(day: DayFeatures) -> dict[str, object]:
    return {"ticker": day.ticker, "event_timestamp": day.event_timestamp, **day.market, **day.news}


def assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a = a.sort_values(["ticker", "event_timestamp"]).reset_index(drop=True)
    b = b.sort_values(["ticker", "event_timestamp"]).reset_index(drop=True)
    assert list(a["ticker"]) == list(b["ticker"])
    assert list(pd.to_datetime(a["event_timestamp"], utc=True)) == list(
        pd.to_datetime(b["event_timestamp"], utc=True)
    )
    for col in NUMERIC:
        np.testing.assert_allclose(
            a[col].astype(float), b[col].astype(float), rtol=1e-9, atol=1e-9, err_msg=col
        )
    assert list(a["news_latest_summary"]) == list(b["news_latest_summary"])


@pytest.mark.parametrize("cutoff_s", [0.0, 1800.0])
def test_streamed_equals_batch(cutoff_s: float) -> None:
    s = FeaturesSettings(news_cutoff_before_close_s=cutoff_s)
    data = sample(("MSFT", "GOOGL"), days=120, seed=3)
    streamed = run_stream(event_order(data, cutoff_s), s)
    bars, news = data.frames()
    assert len(streamed) == 240
    assert_same(streamed, compute_batch(bars, news, s))


def test_market_features_by_hand() -> None:
    s = FeaturesSettings()
    closes = [100.0, 110.0, 99.0, 99.0, 121.0, 100.0, 90.0]
    bars = [bar(i, c, volume=1000.0 + i) for i, c in enumerate(closes)]
    out = run_stream(list(bars), s)
    last = out.iloc[-1]
    assert last["ret_1d"] == pytest.approx(90 / 100 - 1)
    assert last["ret_5d"] == pytest.approx(90 / 110 - 1)
    assert last["ret_20d"] == 0.0  # not enough history: 0, and bars_seen says why
    assert last["bars_seen"] == 7
    assert last["ma_gap_5d"] == pytest.approx(90 / np.mean(closes[-5:]) - 1)
    assert out.iloc[0]["rsi_14"] == 50.0


def test_rsi_bounds_on_monotone_series() -> None:
    up = run_stream([bar(i, 100.0 + i) for i in range(20)], FeaturesSettings())
    down = run_stream([bar(i, 100.0 - i) for i in range(20)], FeaturesSettings())
    assert up.iloc[-1]["rsi_14"] == 100.0 and down.iloc[-1]["rsi_14"] == 0.0


# --- no look-ahead ------------------------------------------------------------------------


@st.composite
def streams(draw: st.DrawFn) -> tuple[Sample, int, float, Sample]:
    days = draw(st.integers(min_value=2, max_value=45))
    seed = draw(st.integers(min_value=0, max_value=10_000))
    cutoff_s = draw(st.sampled_from([0.0, 900.0, 3 * 3600.0]))
    t = draw(st.integers(min_value=0, max_value=days - 1))
    base = sample(("MSFT",), days=days, news_per_day=draw(st.floats(0.0, 4.0)), seed=seed)
    extra = sample(("MSFT",), days=days + 15, news_per_day=3.0, seed=seed + 1)
    return base, t, cutoff_s, extra


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_no_leakage_features_at_t_ignore_everything_after_its_cutoff(
    case: tuple[Sample, int, float, Sample],
) -> None:
    base, t, cutoff_s, extra = case
    s = FeaturesSettings(news_cutoff_before_close_s=cutoff_s)
    close_t = base.bars[t].end
    cutoff_t = close_t - timedelta(seconds=cutoff_s)
    full = run_stream(event_order(base, cutoff_s), s)

    # Remove everything after t's cutoff ...
    cut = Sample(
        [b for b in base.bars if b.end <= close_t],
        [n for n in base.news if n.published_at <= cutoff_t],
    )
    # ... or append more bars and news after it (a different future).
    later = Sample(
        base.bars + [b for b in extra.bars if b.end > base.bars[-1].end],
        base.news + [replace(n, item_id="x" + n.item_id) for n in extra.news
                     if n.published_at > cutoff_t],
    )  # fmt: skip
    upto_t = full[full["event_timestamp"] <= close_t]
    for variant in (cut, later):
        # On time, and with every news item delivered before any bar (the future is "there").
        for events in (event_order(variant, cutoff_s), [*variant.news, *variant.bars]):
            streamed = run_stream(events, s)
            assert_same(streamed[streamed["event_timestamp"] <= close_t], upto_t)
        bars, news = variant.frames()
        batch = compute_batch(bars, news, s)
        assert_same(batch[batch["event_timestamp"] <= close_t], upto_t)


# --- event-time rules ----------------------------------------------------------------------


def bar(i: int, close: float, volume: float = 1e6, ticker: str = "MSFT") -> BarIn:
    end = FIRST_CLOSE + timedelta(days=i)
    return BarIn(ticker, end - timedelta(hours=6), end, close, close * 1.01, close * 0.99, close,
                 volume)  # fmt: skip


def news(item: str, published: datetime, sentiment: float, summary: str = "") -> NewsIn:
    return NewsIn("MSFT", item, published, sentiment, summary or item)


def test_late_news_goes_to_the_next_day_never_a_served_one() -> None:
    engine = FeatureEngine(FeaturesSettings())
    engine.on_news(news("a", FIRST_CLOSE - timedelta(hours=2), 0.8))
    day0 = engine.on_bar(bar(0, 100.0))
    # Published before day 0's close but arriving after day 0 was served: late.
    engine.on_news(news("late", FIRST_CLOSE - timedelta(hours=1), -0.4))
    engine.on_news(news("b", FIRST_CLOSE + timedelta(hours=3), 0.2))
    day1 = engine.on_bar(bar(1, 101.0))
    assert day0 is not None and day1 is not None
    assert day0.news["news_count"] == 1 and day0.news["news_sentiment_mean"] == 0.8
    assert day1.news["news_count"] == 2
    assert day1.news["news_sentiment_mean"] == pytest.approx((-0.4 + 0.2) / 2)
    assert day1.news["news_latest_summary"] == "b"
    assert engine.late_news == 1


def test_news_after_the_cutoff_waits_for_the_next_day() -> None:
    engine = FeatureEngine(FeaturesSettings(news_cutoff_before_close_s=3600))
    engine.on_news(news("early", FIRST_CLOSE - timedelta(hours=2), 0.5))
    engine.on_news(news("after-cutoff", FIRST_CLOSE - timedelta(minutes=30), -1.0))
    day0 = engine.on_bar(bar(0, 100.0))
    day1 = engine.on_bar(bar(1, 100.0))
    assert day0 is not None and day1 is not None
    assert (day0.news["news_count"], day1.news["news_count"]) == (1, 1)
    assert day1.news["news_sentiment_mean"] == -1.0


def test_decayed_sentiment_halves_per_half_life_without_news() -> None:
    engine = FeatureEngine(FeaturesSettings(sentiment_half_life_days=2.0))
    engine.on_news(news("a", FIRST_CLOSE - timedelta(hours=1), 1.0))
    values = [engine.on_bar(bar(i, 100.0)).news["news_sentiment_decayed"] for i in range(5)]  # type: ignore[union-attr]
    assert values[2] == pytest.approx(values[0] / 2) and values[4] == pytest.approx(values[0] / 4)


def test_duplicate_news_counts_once() -> None:
    engine = FeatureEngine(FeaturesSettings())
    for _ in range(3):
        engine.on_news(news("same", FIRST_CLOSE - timedelta(hours=1), 0.6))
    day = engine.on_bar(bar(0, 100.0))
    assert day is not None and day.news["news_count"] == 1


def test_duplicate_bar_is_dropped_and_a_conflicting_one_rejected() -> None:
    engine = FeatureEngine(FeaturesSettings())
    first = engine.on_bar(bar(0, 100.0))
    second = engine.on_bar(bar(1, 101.0))
    assert first is not None and second is not None
    assert engine.on_bar(bar(1, 101.0)) is None
    assert engine.on_bar(bar(0, 100.0)) is None  # an older exact duplicate is still a duplicate
    assert engine.duplicate_bars == 2
    with pytest.raises(ValidationFailed, match="conflicts with the bar already served"):
        engine.on_bar(bar(1, 105.0))
    assert engine.on_bar(bar(2, 102.0)).market["bars_seen"] == 3  # type: ignore[union-attr]


def test_out_of_order_bar_older_than_the_watermark_is_rejected() -> None:
    engine = FeatureEngine(FeaturesSettings())
    engine.on_bar(bar(0, 100.0))
    engine.on_bar(bar(2, 100.0))
    with pytest.raises(ValidationFailed, match="older than the ticker's watermark"):
        engine.on_bar(bar(1, 100.0))
    assert engine.states["MSFT"].bars_seen == 2


BAD_BARS = {
    "non-positive close": (dict(close=0.0, low=0.0), "is not a positive price"),
    "negative open": (dict(open=-1.0), "open"),
    "high below low": (dict(high=90.0, low=95.0, open=92.0, close=92.0), "high 90.0 < low 95.0"),
    "NaN close": (dict(close=math.nan), "close is nan"),
    "infinite volume": (dict(volume=math.inf), "volume is inf"),
    "negative volume": (dict(volume=-5.0), "volume = -5.0 is negative"),
    "close above high": (dict(close=200.0), "close 200.0 outside"),
    "unknown ticker": (dict(ticker="ZZZZ"), "unknown ticker 'ZZZZ'"),
    "start after end": (dict(start=FIRST_CLOSE + timedelta(hours=1)), "is not before its end"),
}


@pytest.mark.parametrize("case", BAD_BARS, ids=list(BAD_BARS))
def test_bad_bar_is_rejected_with_its_reason(case: str) -> None:
    changes, reason = BAD_BARS[case]
    engine = FeatureEngine(FeaturesSettings())
    with pytest.raises(ValidationFailed, match=reason.replace("(", r"\(").replace(".", r"\.")):
        engine.on_bar(replace(bar(0, 100.0), **changes))
    assert "MSFT" not in engine.states or engine.states["MSFT"].bars_seen == 0


@pytest.mark.parametrize(
    "item, reason",
    [
        (NewsIn("MSFT", "n1", FIRST_CLOSE, 1.5, ""), "not in \\[-1, 1\\]"),
        (NewsIn("MSFT", "n1", FIRST_CLOSE, math.nan, ""), "not in \\[-1, 1\\]"),
        (NewsIn("MSFT", "", FIRST_CLOSE, 0.1, ""), "no item_id"),
        (NewsIn("ACME", "n1", FIRST_CLOSE, 0.1, ""), "unknown ticker 'ACME'"),
    ],
)
def test_bad_news_is_rejected_with_its_reason(item: NewsIn, reason: str) -> None:
    with pytest.raises(ValidationFailed, match=reason):
        FeatureEngine(FeaturesSettings()).on_news(item)


def test_snapshot_restore_undoes_a_batch() -> None:
    engine = FeatureEngine(FeaturesSettings())
    engine.on_bar(bar(0, 100.0))
    snap = engine.snapshot({"MSFT", "GOOGL"})
    engine.on_bar(bar(1, 120.0))
    engine.on_bar(bar(1, 50.0, ticker="GOOGL"))
    engine.restore(snap)
    assert "GOOGL" not in engine.states
    again = engine.on_bar(bar(1, 120.0))
    assert again is not None and again.market["ret_1d"] == pytest.approx(0.2)


# --- pieces ------------------------------------------------------------------------------


def test_rolling_moments_match_numpy_over_a_long_stream_of_large_values() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(17.0, 1.0, 5000)  # volumes around 1e7: squares near 1e14
    moments = RollingMoments(20)
    for i, v in enumerate(values):
        moments.add(float(v))
        if i >= 19 and i % 97 == 0:
            window = values[i - 19 : i + 1]
            assert moments.mean == pytest.approx(window.mean(), rel=1e-12)
            assert moments.std == pytest.approx(window.std(ddof=1), rel=1e-9)


def test_tickers_setting_accepts_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLMF_FEATURES_TICKERS", "MSFT, AAPL")
    assert FeaturesSettings().tickers == ["MSFT", "AAPL"]
    monkeypatch.setenv("RLMF_FEATURES_TICKERS", '["SYN"]')
    assert FeaturesSettings().tickers == ["SYN"]


def test_timestamps_are_utc() -> None:
    day = FeatureEngine(FeaturesSettings()).on_bar(bar(0, 100.0))
    assert day is not None and day.event_timestamp.tzinfo is not None
    assert day.event_timestamp.utcoffset() == UTC.utcoffset(None)


def test_saved_state_resumes_exactly_where_it_stopped(tmp_path: Path) -> None:
    s = FeaturesSettings()
    events = event_order(sample(("MSFT", "GOOGL"), days=50, seed=9))
    whole = run_stream(events, s)
    first = FeatureEngine(s)
    rows = []
    for event in events[: len(events) // 2]:
        day = first.on_bar(event) if isinstance(event, BarIn) else first.on_news(event)
        if day is not None:
            rows.append(as_row(day))
    first.save(tmp_path / "state.json")
    second = FeatureEngine(s)
    assert second.load(tmp_path / "state.json") == 2
    for event in events[len(events) // 2 :]:
        day = second.on_bar(event) if isinstance(event, BarIn) else second.on_news(event)
        if day is not None:
            rows.append(as_row(day))
    assert_same(pd.DataFrame(rows), whole)
    served = next(e for e in events if isinstance(e, BarIn))
    assert second.is_served(served)
    assert not second.is_served(replace(served, close=served.close * 1.001))


class _RunsCodeWhenUnpickled:
    """A pickle payload that touches a file when loaded: what a writer of the volume could plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def test_state_file_is_data_a_planted_pickle_is_refused_unrun(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "code-ran"
    planted = tmp_path / "engine_state.json"
    planted.write_bytes(pickle.dumps({"MSFT": _RunsCodeWhenUnpickled(marker)}))
    engine = FeatureEngine(FeaturesSettings())
    with pytest.raises(ValueError, match="not the feature engine's JSON state"):
        engine.load(planted)
    assert not marker.exists(), "loading the state ran code from the file"
    assert engine.states == {}


def test_state_file_is_json_and_names_a_bad_field(tmp_path: Path) -> None:
    import json

    s = FeaturesSettings()
    engine = FeatureEngine(s)
    engine.on_bar(bar(0, 100.0))
    path = tmp_path / "engine_state.json"
    engine.save(path)
    document = json.loads(path.read_text())
    assert document["format"] == 1 and set(document["tickers"]) == set(engine.states)
    ticker = next(iter(document["tickers"]))
    document["tickers"][ticker]["bars_seen"] = "many"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="bars_seen"):
        FeatureEngine(s).load(path)
    assert FeaturesSettings(data_dir=tmp_path).state_path.suffix == ".json"

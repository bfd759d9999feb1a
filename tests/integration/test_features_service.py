"""The features service over the real broker: streamed == batch, late/duplicate/out-of-order and
bad bars dead-lettered with their reasons, features.ready watermarks; on SQLite and Redis."""

from __future__ import annotations

import math
import signal
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.common import envelope as envelopes
from services.common.broker import free_port
from services.common.bus import ConsumerLoop, Producer
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.features.batch import compute_batch
from services.features.consumer import build_loop
from services.features.engine import BarIn, NewsIn
from services.features.repo import apply_repo, open_store
from services.features.sample import Sample, event_order, sample
from services.features.settings import FeaturesSettings
from services.features.store import FeatureReader, FeatureWriter
from tests.helpers import REDIS, http_ok, read_topic, require_redis, spawn_service, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:On demand feature view is an experimental")
NUMERIC = [
    "close", "ret_1d", "ret_5d", "ret_20d", "realised_vol_20d", "ma_gap_5d", "ma_gap_20d",
    "volume_z_20d", "rsi_14", "bars_seen", "news_sentiment_mean", "news_count",
    "news_sentiment_decayed", "vol_adjusted_sentiment",
]  # fmt: skip


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def store_kind(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FeaturesSettings]:
    """A Feast repo applied once per store kind; tests add their own topics and tickers."""
    if request.param == "redis":
        require_redis()
    settings = FeaturesSettings(
        data_dir=tmp_path_factory.mktemp(f"svc-{request.param}"),
        store="cluster" if request.param == "redis" else "local",
        project=f"s_{uuid.uuid4().hex[:10]}",
        redis_address=REDIS,
    )
    apply_repo(settings)
    yield settings
    open_store(settings).teardown()


@pytest.fixture
def features(store_kind: FeaturesSettings, unique: str) -> FeaturesSettings:
    """Private topics and a private ticker per test, on the module's applied store."""
    return store_kind.model_copy(
        update={
            "bars_topic": f"market.bars.{unique}",
            "news_topic": f"news.enriched.{unique}",
            "ready_topic": f"features.ready.{unique}",
            "tickers": [f"T{unique[:6].upper()}"],
        }
    )


def bar_pb(b: BarIn) -> pb.Bar:
    msg = pb.Bar(ticker=b.ticker, open=b.open, high=b.high, low=b.low, close=b.close,
                 volume=b.volume)  # fmt: skip
    envelopes.set_time(msg.end, b.end)
    if b.start is not None:
        envelopes.set_time(msg.start, b.start)
    return msg


def news_pb(n: NewsIn) -> pb.EnrichedNews:
    msg = pb.EnrichedNews(summary=n.summary, sentiment=n.sentiment)
    msg.item.item_id, msg.item.ticker = n.item_id, n.ticker
    envelopes.set_time(msg.item.published_at, n.published_at)
    return msg


def produce(producer: Producer, s: FeaturesSettings, events: list[BarIn | NewsIn]) -> None:
    for e in events:
        if isinstance(e, BarIn):
            producer.publish(s.bars_topic, bar_pb(e), key=e.ticker, event_time=e.end)
        else:
            producer.publish(s.news_topic, news_pb(e), key=e.ticker, event_time=e.published_at)
    producer.flush()


def drain(loop: ConsumerLoop, expect: int, timeout_polls: int = 200) -> None:
    """Poll until `expect` messages were consumed in total (or fail after many empty polls)."""
    empty = 0
    while loop.stats.consumed < expect:
        empty = 0 if loop.poll_once() else empty + 1
        assert empty < timeout_polls, f"consumed {loop.stats.consumed} of {expect}"


def renamed(data: Sample, ticker: str) -> Sample:
    return Sample(
        [replace(b, ticker=ticker) for b in data.bars],
        [replace(n, ticker=ticker, item_id=f"{ticker}-{n.item_id}") for n in data.news],
    )


def ready_messages(bootstrap: str, topic: str) -> list[pb.FeaturesReady]:
    return [
        envelopes.decode(r.value, pb.FeaturesReady).payload for r in read_topic(bootstrap, topic)
    ]


def test_stream_with_late_duplicate_out_of_order_and_bad_bars(
    features: FeaturesSettings, bus_settings: BusSettings
) -> None:
    ticker = features.tickers[0]
    data = renamed(sample(("MSFT",), days=40, news_per_day=2.0, seed=5), ticker)
    close19 = data.bars[19].end
    ordered = event_order(data)
    first = [e for e in ordered if (e.end if isinstance(e, BarIn) else e.published_at) <= close19]
    rest = ordered[len(first) :]
    late = NewsIn(ticker, "late-1", close19 - timedelta(seconds=1), 0.9, "late summary")
    near = (close19 - timedelta(seconds=2), close19 + timedelta(seconds=2))
    assert not any(near[0] < n.published_at < near[1] for n in data.news)  # "latest" is unambiguous
    b10, b19 = data.bars[10], data.bars[19]
    day25 = data.bars[25].end + timedelta(hours=1)
    bad = {
        "older than the ticker's watermark": replace(b10, end=b10.end + timedelta(hours=1)),
        "conflicts with the bar already served": replace(b19, close=b19.low),
        "is not a positive price": replace(b19, end=day25, low=0.0),
        "< low": replace(b19, end=day25, high=b19.low * 0.5),
        "close is nan": replace(b19, end=day25, close=math.nan),
        "unknown ticker 'ZZZZ'": replace(b19, end=day25, ticker="ZZZZ"),
    }
    trouble: list[BarIn | NewsIn] = [b19, late, *bad.values()]  # b19 again: a duplicate

    producer = Producer(bus_settings, "test-features")
    try:
        loop, handler = build_loop(features, bus_settings)
        try:
            produce(producer, features, first)
            drain(loop, len(first))  # day 19 is served before the trouble arrives
        finally:
            loop.close()
        # A restart: the new process resumes the saved rolling state and the committed offsets.
        loop, handler = build_loop(features, bus_settings)
        try:
            assert handler.engine.states[ticker].bars_seen == 20
            produce(producer, features, trouble + rest)
            drain(loop, len(trouble) + len(rest))
        finally:
            loop.close()
    finally:
        producer.close()

    # Every bad bar is dead-lettered with its reason and its original bytes; nothing else is.
    dlq = read_topic(bus_settings.bootstrap, features.bars_topic + ".dlq")
    errors = sorted(r.headers["rlmf-error"].decode() for r in dlq)
    assert len(errors) == len(bad), errors
    for reason in bad:
        assert sum(reason in e for e in errors) == 1, (reason, errors)
    assert all(envelopes.decode(r.value, pb.Bar).payload.ticker in (ticker, "ZZZZ") for r in dlq)
    assert read_topic(bus_settings.bootstrap, features.news_topic + ".dlq") == []
    assert handler.engine.duplicate_bars == 1 and handler.engine.late_news == 1

    # One features.ready per served day, watermarks in event time, the duplicate adds none.
    # The duplicate re-announces its (unchanged) watermark: harmless, and covers a lost ready.
    ready = ready_messages(bus_settings.bootstrap, features.ready_topic)
    watermarks = [envelopes.to_datetime(m.watermark) for m in ready]
    assert watermarks == sorted(watermarks)
    assert sorted(set(watermarks)) == [b.end for b in data.bars]
    assert len(watermarks) == len(data.bars) + 1 and watermarks.count(close19) == 2
    assert {m.feature_service for m in ready} == {"policy_v1"}

    # What was served equals the batch computation; the late item counts on day 20.
    news = data.news + [replace(late, published_at=close19 + timedelta(seconds=1))]
    bars_df, news_df = Sample(data.bars, news).frames()
    expected = compute_batch(bars_df, news_df, features)
    reader = FeatureReader(features)
    served = reader.historical(expected[["ticker", "event_timestamp"]])
    for col in NUMERIC[:-1]:
        np.testing.assert_allclose(served[col].astype(float), expected[col].astype(float),
                                   rtol=1e-9, atol=1e-12, err_msg=col)  # fmt: skip
    assert list(served["news_latest_summary"]) == list(expected["news_latest_summary"])
    assert served.loc[20, "news_count"] == expected.loc[20, "news_count"] >= 1
    online = reader.online(ticker)
    for col in NUMERIC:
        assert online[col] == pytest.approx(float(served.iloc[-1][col]), rel=1e-12), col


def test_a_failed_push_rolls_back_and_dead_letters(
    bus_settings: BusSettings, unique: str, tmp_path: Path
) -> None:
    settings = FeaturesSettings(
        data_dir=tmp_path, project=f"f_{unique}", tickers=["MSFT"],
        bars_topic=f"market.bars.{unique}", news_topic=f"news.enriched.{unique}",
        ready_topic=f"features.ready.{unique}", push_attempts=2,
    )  # fmt: skip
    apply_repo(settings)
    settings.online.unlink()
    settings.online.mkdir()  # a directory where SQLite wants its file: every write fails
    loop, handler = build_loop(settings, bus_settings, writer=FeatureWriter(settings))
    producer = Producer(bus_settings, "test-features")
    bars = sample(("MSFT",), days=2, news_per_day=0.0, seed=1).bars
    try:
        produce(producer, settings, list(bars))
        drain(loop, len(bars))
    finally:
        producer.close()
        loop.close()
    dlq = read_topic(bus_settings.bootstrap, settings.bars_topic + ".dlq")
    assert len(dlq) == 2
    assert all("Feast push failed" in r.headers["rlmf-error"].decode() for r in dlq)
    assert handler.engine.states.get("MSFT") is None  # rolled back: no day half-served
    assert read_topic(bus_settings.bootstrap, settings.ready_topic) == []


@pytest.mark.slow  # a service process: Feast apply and start take ~20 s
def test_entrypoint_applies_serves_http_and_stops_on_sigterm(
    bus_settings: BusSettings, unique: str, tmp_path: Path
) -> None:
    """`python -m services.features` for real: apply on start, /readyz, GET /features/{ticker}."""
    port = free_port()
    ticker = f"E{unique[:6].upper()}"
    env = {
        "RLMF_HTTP_PORT": str(port),
        "RLMF_FEATURES_DATA_DIR": str(tmp_path / "feast"),
        "RLMF_FEATURES_PROJECT": f"e_{unique}",
        "RLMF_FEATURES_TICKERS": ticker,
        "RLMF_FEATURES_BARS_TOPIC": f"market.bars.{unique}",
        "RLMF_FEATURES_NEWS_TOPIC": f"news.enriched.{unique}",
        "RLMF_FEATURES_READY_TOPIC": f"features.ready.{unique}",
    }
    settings = FeaturesSettings(
        tickers=[ticker], bars_topic=f"market.bars.{unique}", news_topic=f"news.enriched.{unique}"
    )
    log_path = tmp_path / "features.log"
    proc = spawn_service("services.features", env, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(base + "/readyz"), 90, "/readyz", process=proc, log=log_path)
        bars = [replace(b, ticker=ticker) for b in sample(("MSFT",), days=25, seed=2).bars]
        producer = Producer(bus_settings, "test-features")
        produce(producer, settings, list(bars))
        producer.close()

        def served() -> bool:
            answer = httpx.get(f"{base}/features/{ticker}", timeout=5).json()
            return answer.get("bars_seen") == 25.0

        wait_until(served, 60, "25 bars served", process=proc, log=log_path)
        answer = httpx.get(f"{base}/features/{ticker}", timeout=5).json()
        assert answer["close"] == pytest.approx(bars[-1].close)
        assert math.isfinite(answer["vol_adjusted_sentiment"])
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log_path.read_text()[-3000:]

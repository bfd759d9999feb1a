"""The trainer's cluster data source against the real embedded broker: market.bars.v1 and
market.feedback.v1 read under its own group into the store on its volume, bad messages
dead-lettered with the counts reconciling, nothing read twice, and `rlmf trainer cycle` refusing
to run (exit 2, a clear message) when there are no bars, never falling back to a synthetic
market."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from services.common.bus import Producer, ensure_topics
from services.common.envelope import set_time
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.common.topics import MARKET_BARS, MARKET_FEEDBACK, dlq
from services.trainer import market_source
from services.trainer.kafka_history import History, NoMarketData
from services.trainer.settings import TrainerSettings
from tests.helpers import read_topic

DAY0 = datetime(2024, 3, 1, 21, tzinfo=UTC)


def _ticker(unique: str) -> str:
    return "K" + "".join(chr(65 + int(c, 16) % 26) for c in unique[:5])


def _bar(ticker: str, day: int, close: float) -> pb.Bar:
    bar = pb.Bar(ticker=ticker, open=close, high=close + 1, low=close - 1, close=close, volume=1e6)
    set_time(bar.start, DAY0 + timedelta(days=day, hours=-6))
    set_time(bar.end, DAY0 + timedelta(days=day))
    return bar


def _feedback(ticker: str, day: int) -> pb.MarketFeedback:
    msg = pb.MarketFeedback(ticker=ticker, state="close 100", action="buy", reward=0.01,
                            realised_return=0.01, model_version="v0", value=0.0)  # fmt: skip
    set_time(msg.decision_time, DAY0 + timedelta(days=day))
    set_time(msg.realised_time, DAY0 + timedelta(days=day + 1))
    return msg


def _publish(bus: BusSettings, ticker: str, days: range) -> None:
    producer = Producer(bus, "market-test")
    try:
        for day in days:
            end = DAY0 + timedelta(days=day)
            producer.publish(MARKET_BARS, _bar(ticker, day, 100.0 + day), key=ticker,
                             event_time=end)  # fmt: skip
            producer.publish(MARKET_FEEDBACK, _feedback(ticker, day), key=ticker, event_time=end)
        producer.flush()
    finally:
        producer.close()


@pytest.mark.slow  # two syncs, each waits 2 s of quiet on the broker
def test_history_reads_both_topics_once_and_dead_letters_bad_bars(
    bus_settings: BusSettings, unique: str, tmp_path: Path
) -> None:
    ticker = _ticker(unique)
    ensure_topics(bus_settings, [MARKET_BARS, MARKET_FEEDBACK, dlq(MARKET_BARS)], "test")
    _publish(bus_settings, ticker, range(5))
    producer = Producer(bus_settings, "market-test")
    bad = _bar(ticker, 9, 100.0)
    bad.low = 200.0  # high < low
    producer.publish(MARKET_BARS, bad, key=ticker, event_time=DAY0)
    producer.publish(MARKET_BARS, _bar(ticker, 0, 100.0), key=ticker, event_time=DAY0)  # again
    producer.flush()
    producer.close()

    history = History(tmp_path, ticker)
    group = f"trainer-history-{unique}"
    counts, loop = history.sync(bus_settings, group, idle_timeout_s=2.0)
    assert (counts.bars, counts.feedback, counts.duplicates_in_store) == (5, 5, 1)
    stats = loop.stats
    assert stats.consumed == stats.handled + stats.duplicates + stats.dead_lettered
    assert stats.dead_lettered >= 1
    reasons = [r.headers.get("rlmf-error", b"").decode() for r in read_topic(
        bus_settings.bootstrap, dlq(MARKET_BARS)) if ticker.encode() == r.key]  # fmt: skip
    assert any("high 101.0 < low 200.0" in reason for reason in reasons), reasons

    prices = history.prices()
    assert list(prices["close"]) == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert len(history.feedback()) == 5

    # The next run (the CronJob's next night) reads only what is new.
    _publish(bus_settings, ticker, range(5, 7))
    counts, _ = history.sync(bus_settings, group, idle_timeout_s=2.0)
    assert (counts.bars, counts.feedback, counts.duplicates_in_store) == (2, 2, 0)
    assert len(history.prices()) == 7


@pytest.mark.slow  # the sync waits 5 s of quiet before it finds no bars
def test_cycle_refuses_without_bars_and_never_goes_synthetic(
    bus_settings: BusSettings, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.trainer.cli import app

    monkeypatch.setenv("RLMF_TRAINER_DATA_SOURCE", "kafka")
    monkeypatch.setenv("RLMF_TRAINER_TICKER", _ticker(unique))
    monkeypatch.setenv("RLMF_TRAINER_WORK_DIR", str(tmp_path))
    monkeypatch.setenv("RLMF_TRAINER_HISTORY_GROUP", f"trainer-history-{unique}")
    monkeypatch.setenv("RLMF_TRAINER_PROMOTION", "none")
    monkeypatch.setenv("RLMF_TRAINER_PUBLISH", "false")
    result = CliRunner().invoke(app, ["cycle"])
    assert result.exit_code == 2, result.output
    assert f"no bars of {_ticker(unique)}" in result.output
    assert "market.bars.v1" in result.output


def test_synthetic_market_only_when_asked_for(tmp_path: Path) -> None:
    with pytest.raises(NoMarketData, match="RLMF_TRAINER_DATA_SOURCE=synthetic"):
        market_source.load_prices(TrainerSettings(work_dir=tmp_path))
    assert market_source.resolve(TrainerSettings(market_days=80)) == "synthetic"
    assert market_source.resolve(TrainerSettings(data_source="synthetic")) == "synthetic"
    assert len(market_source.load_prices(TrainerSettings(data_source="synthetic", market_days=90)))


def test_a_cycle_as_of_a_day_before_every_bar_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rlmf trainer cycle --as-of DAY` trains on the bars of DAY and before (the demo's warm-up
    cycle on the history); a day before the first bar is exit 2 naming it, before any model
    loads (there is none here to load)."""
    from services.trainer.cli import app

    csv = tmp_path / "ACME.csv"
    days = pd.bdate_range("2021-01-04", periods=30)
    pd.DataFrame({"Date": days.strftime("%Y-%m-%d"), "Close": range(100, 130)}).to_csv(
        csv, index=False
    )
    monkeypatch.setenv("RLMF_TRAINER_PRICES_CSV", str(csv))
    monkeypatch.setenv("RLMF_TRAINER_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("RLMF_TRAINER_MODELS_DIR", str(tmp_path / "no-models"))
    monkeypatch.setenv("RLMF_TRAINER_PROMOTION", "none")
    monkeypatch.setenv("RLMF_TRAINER_PUBLISH", "false")
    result = CliRunner().invoke(app, ["cycle", "--as-of", "2020-12-31"])
    assert result.exit_code == 2, result.output
    assert "--as-of 2020-12-31: no bars on or before it" in result.output
    assert "2021-01-04" in result.output

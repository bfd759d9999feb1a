"""Unit tests of the synthetic news generator: informativeness, seeding, timing, marking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.ingest.news_generator import SYNTHETIC_NOTE, generate_news


def prices(n: int = 600, seed: int = 0) -> pd.DataFrame:
    closes = 100 + np.cumsum(np.random.default_rng(seed).normal(size=n))
    index = pd.date_range("2023-01-02 21:00", periods=n, freq="D", tz="UTC")
    return pd.DataFrame({"close": closes}, index=index)


@pytest.mark.parametrize("informativeness", [0.0, 0.5, 1.0])
def test_agreement_rate_follows_informativeness(informativeness: float) -> None:
    items = generate_news(prices(), "MSFT", informativeness, seed=3, items_per_day=2)
    agree = np.mean([i.sentiment == i.next_move for i in items])
    expected = 0.5 + 0.5 * informativeness
    # 1198 draws: a binomial standard error of at most 0.015; 4 of them is the tolerance.
    assert abs(agree - expected) < 0.06


def test_next_move_is_the_real_next_close_move() -> None:
    frame = prices(50)
    items = generate_news(frame, "MSFT", 1.0, seed=1)
    closes = frame["close"].to_numpy()
    for t, news in enumerate(items):
        assert news.next_move == np.sign(closes[t + 1] - closes[t])
        assert news.sentiment == news.next_move


def test_news_of_day_t_is_published_at_day_t_and_last_day_has_none() -> None:
    frame = prices(30)
    items = generate_news(frame, "MSFT", 0.6, seed=2, items_per_day=3)
    assert len(items) == 29 * 3
    for k, news in enumerate(items):
        assert news.published_at == frame.index[k // 3].to_pydatetime()
    assert max(i.published_at for i in items) < frame.index[-1]


def test_same_seed_same_items_other_seed_other_items() -> None:
    a = generate_news(prices(), "MSFT", 0.6, seed=7)
    b = generate_news(prices(), "MSFT", 0.6, seed=7)
    c = generate_news(prices(), "MSFT", 0.6, seed=8)
    assert a == b
    assert [i.headline for i in a] != [i.headline for i in c]


def test_items_are_marked_synthetic_and_ingestable() -> None:
    news = generate_news(prices(5), "GOOGL", 0.6, seed=1, name="Alphabet")[0]
    record = news.to_record()
    assert record["synthetic"] is True and news.body == SYNTHETIC_NOTE
    assert record["tickers"] == ["GOOGL"] and "Alphabet" in str(record["headline"])
    assert "sentiment" not in record and "next_move" not in record


def test_naive_index_is_read_as_utc() -> None:
    frame = prices(5)
    frame.index = frame.index.tz_localize(None)
    assert generate_news(frame, "MSFT", 0.5, seed=1)[0].published_at.tzinfo is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"informativeness": 1.5}, "informativeness"), ({"informativeness": -0.1}, "informativeness")],
)
def test_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_news(prices(5), "MSFT", seed=1, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="close"):
        generate_news(prices(5).rename(columns={"close": "c"}), "MSFT", 0.5, seed=1)
    with pytest.raises(ValueError, match="sorted"):
        generate_news(prices(5).iloc[::-1], "MSFT", 0.5, seed=1)

"""CSV loading: the real files, column and time variants, frequencies, and every malformed case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.market.market_data import MarketDataError, infer_periods_per_year, load_prices_csv

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "p.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "name,rows,first", [("MSFT.csv", 7983, "1986-03-13"), ("GOOGL.csv", 2335, "2009-05-22")]
)
def test_real_files_load(name: str, rows: int, first: str) -> None:
    df = load_prices_csv(REPO / "data" / name)
    assert len(df) == rows and df.index.name == "time" and str(df.index.tz) == "UTC"
    assert list(df.columns) == ["open", "high", "low", "close", "volume"]
    assert df.index[0] == pd.Timestamp(first, tz="UTC")
    assert df.attrs["periods_per_year"] == 252 and df.attrs["frequency"] == "daily"
    assert df.attrs["source"].endswith(name)


@pytest.mark.parametrize("header", ["date", "Date", "timestamp", "time", ""])
def test_time_column_names_and_unnamed_first(tmp_path: Path, header: str) -> None:
    body = "\n".join(f"2024-01-{d:02d},{10 + d},{11 + d},{9 + d},{10.5 + d}" for d in range(1, 6))
    df = load_prices_csv(write(tmp_path, f"{header},OPEN,High,low,Close\n{body}\n"))
    assert df["close"].iloc[0] == 11.5 and df["volume"].isna().all()


def test_price_column_picks_the_close(tmp_path: Path) -> None:
    text = "Date,Close,Adj Close\n2024-01-01,10,5\n2024-01-02,11,5.5\n2024-01-03,12,6\n"
    df = load_prices_csv(write(tmp_path, text), price_column="adj close")
    assert df["close"].tolist() == [5, 5.5, 6]
    assert df.attrs["price_column"] == "Adj Close" and df.attrs["ohlc_from_close"]
    assert (
        df["open"] == df["close"]
    ).all()  # close-only data fills at the next close, never earlier
    with pytest.raises(MarketDataError, match="price column 'vwap' not found"):
        load_prices_csv(write(tmp_path, text), price_column="vwap")


def test_frequencies_set_the_annualising_factor(tmp_path: Path) -> None:
    hourly = pd.date_range("2024-01-02 14:00", periods=7 * 20, freq="h", tz="UTC")
    hourly = hourly[(hourly.hour >= 14) & (hourly.hour < 21) & (hourly.dayofweek < 5)]
    assert infer_periods_per_year(hourly) == (7 * 252, "intraday")
    monthly = pd.date_range("2000-01-31", periods=40, freq="ME", tz="UTC")
    assert infer_periods_per_year(monthly) == (12, "monthly")
    every_day = pd.date_range("2024-01-01", periods=60, freq="D", tz="UTC")
    assert infer_periods_per_year(every_day) == (365, "daily")  # crypto-style: weekends trade
    rows = "\n".join(f"{t.isoformat()},{1 + i}" for i, t in enumerate(monthly))
    assert load_prices_csv(write(tmp_path, f"time,close\n{rows}\n")).attrs["periods_per_year"] == 12


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "date,close\n2024-01-02,10\n2024-01-01,11\n2024-01-03,12\n",
            r"p.csv: row 3: time .* is before the previous row",
        ),
        (
            "date,close\n2024-01-01,10\n2024-01-01,11\n2024-01-03,12\n",
            r"p.csv: row 3: duplicate time",
        ),
        (
            "date,close\n2024-01-01,10\n2024-01-02,0\n2024-01-03,12\n",
            r"p.csv: row 3: close price 0.0 is not positive",
        ),
        (
            "date,close\n2024-01-01,10\n2024-01-02,-3\n2024-01-03,12\n",
            r"row 3: close price -3.0 is not positive",
        ),
        (
            "date,open,close\n2024-01-01,10,10\n2024-01-02,,11\n2024-01-03,12,12\n",
            r"row 3: open price is missing",
        ),
        (
            "date,close\n2024-01-01,10\n2024-01-02,abc\n2024-01-03,12\n",
            r"row 3: close price is missing or not a number",
        ),
        (
            "date,close\n2024-01-01,10\nnot-a-date,11\n2024-01-03,12\n",
            r"row 3: time 'not-a-date' is missing or not a date",
        ),
        ("date,open,volume\n2024-01-01,10,1\n2024-01-02,11,1\n", r"no close column"),
        ("price,close\n1,10\n2,11\n", r"no time column"),
        ("date,close\n", r"no data rows"),
    ],
)
def test_malformed_csv_names_file_row_and_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MarketDataError, match=message):
        load_prices_csv(write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MarketDataError, match="cannot read as CSV"):
        load_prices_csv(tmp_path / "nope.csv")


def test_volume_kept_when_present(tmp_path: Path) -> None:
    df = load_prices_csv(
        write(tmp_path, "Date,Close,Volume\n2024-01-01,1,5\n2024-01-02,2,6\n2024-01-03,3,7\n")
    )
    assert np.array_equal(df["volume"].to_numpy(), [5, 6, 7])

"""Loading real OHLCV price series from CSV, checked row by row, with their annualising factor.

The loaded frame is what every part of the simulator replays: a UTC DatetimeIndex named `time`,
columns open, high, low, close, volume; `df.attrs` carries `periods_per_year` (inferred from the
spacing of the rows), `frequency`, `bar_seconds`, `source` and `price_column`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

TIME_COLUMN_NAMES = ("date", "timestamp", "time", "datetime")
PRICE_COLUMNS = ("open", "high", "low", "close")
COLUMNS = (*PRICE_COLUMNS, "volume")
TRADING_DAYS_PER_YEAR = 252
CALENDAR_DAYS_PER_YEAR = 365


class MarketDataError(ValueError):
    """A price file that cannot be used; the message names the file, the row and the problem."""


def _norm(name: object) -> str:
    return " ".join(str(name).strip().lower().replace("_", " ").split())


def _line(position: int) -> int:
    # Row positions are 0-based after the header; a CSV's line numbers count the header as 1.
    return position + 2


def _time_column(df: pd.DataFrame, path: Path) -> str:
    for column in df.columns:
        if _norm(column) in TIME_COLUMN_NAMES:
            return str(column)
    first = str(df.columns[0]) if len(df.columns) else ""
    if first == "" or first.startswith("Unnamed"):
        return first
    raise MarketDataError(
        f"{path}: no time column: expected one named {', '.join(TIME_COLUMN_NAMES)} "
        f"or an unnamed first column, found {list(map(str, df.columns))}"
    )


def _parse_times(raw: pd.Series, path: Path) -> pd.DatetimeIndex:
    times = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
    bad = np.flatnonzero(times.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise MarketDataError(
            f"{path}: row {_line(i)}: time {raw.iloc[i]!r} is missing or not a date"
        )
    return pd.DatetimeIndex(times, name="time")


def _pick_columns(df: pd.DataFrame, path: Path, price_column: str | None) -> dict[str, str]:
    by_name = {_norm(c): str(c) for c in df.columns}
    chosen: dict[str, str] = {}
    for name in COLUMNS:
        if name in by_name:
            chosen[name] = by_name[name]
    if price_column is not None:
        wanted = _norm(price_column)
        if wanted not in by_name:
            raise MarketDataError(
                f"{path}: price column {price_column!r} not found; columns are {list(by_name)}"
            )
        chosen["close"] = by_name[wanted]
    if "close" not in chosen:
        if "adj close" in by_name:
            chosen["close"] = by_name["adj close"]
        else:
            raise MarketDataError(f"{path}: no close column (looked for close, adj close)")
    return chosen


def _check_prices(out: pd.DataFrame, path: Path, present: set[str]) -> None:
    for name in PRICE_COLUMNS:
        if name not in present:
            continue
        values = out[name].to_numpy()
        missing = np.flatnonzero(~np.isfinite(values))
        if len(missing):
            i = int(missing[0])
            raise MarketDataError(
                f"{path}: row {_line(i)}: {name} price is missing or not a number"
            )
        bad = np.flatnonzero(values <= 0)
        if len(bad):
            i = int(bad[0])
            raise MarketDataError(
                f"{path}: row {_line(i)}: {name} price {values[i]} is not positive"
            )


def _check_order(index: pd.DatetimeIndex, path: Path) -> None:
    stamps = index.asi8
    steps = np.diff(stamps)
    dup = np.flatnonzero(steps == 0)
    back = np.flatnonzero(steps < 0)
    first_dup = int(dup[0]) + 1 if len(dup) else None
    first_back = int(back[0]) + 1 if len(back) else None
    if first_back is not None and (first_dup is None or first_back < first_dup):
        raise MarketDataError(
            f"{path}: row {_line(first_back)}: time {index[first_back]} is before the previous "
            f"row's {index[first_back - 1]} (rows must be sorted by time, oldest first)"
        )
    if first_dup is not None:
        raise MarketDataError(
            f"{path}: row {_line(first_dup)}: duplicate time {index[first_dup]} "
            "(same as the previous row)"
        )


def infer_periods_per_year(index: pd.DatetimeIndex) -> tuple[float, str]:
    """The annualising factor for bars spaced like `index`, and a label for the frequency.

    Daily bars without weekend rows count 252 trading days a year, with weekends 365; intraday
    bars multiply the typical bars per day by that; weekly 52, monthly 12, quarterly 4; any
    other spacing counts the observed bars per year.
    """
    if len(index) < 3:
        raise MarketDataError("need at least 3 rows to infer the bar spacing")
    spacing_days = float(np.median(np.diff(index.asi8))) / 86_400e9
    weekend_share = float(np.mean(index.dayofweek >= 5))
    days_per_year = CALENDAR_DAYS_PER_YEAR if weekend_share > 0.05 else TRADING_DAYS_PER_YEAR
    if spacing_days < 0.9:
        bars_per_day = float(pd.Series(1, index=index).groupby(index.normalize()).size().median())
        return bars_per_day * days_per_year, "intraday"
    if spacing_days <= 1.5:
        return float(days_per_year), "daily"
    for low, high, per_year, label in (
        (6, 8, 52, "weekly"),
        (26, 33, 12, "monthly"),
        (85, 95, 4, "quarterly"),
    ):
        if low <= spacing_days <= high:
            return float(per_year), label
    span_years = (index[-1] - index[0]).total_seconds() / (365.25 * 86_400)
    return (len(index) - 1) / span_years, "irregular"


def load_prices_csv(path: str | Path, price_column: str | None = None) -> pd.DataFrame:
    """Read, check and normalise one OHLCV CSV file.

    Args:
        path: the CSV file; its time column is named date/Date/timestamp/time or is the unnamed
            first column; price columns are matched case-insensitively.
        price_column: which column becomes `close` (e.g. "adj close"); default close.

    Returns:
        A frame indexed by UTC `time` with open, high, low, close, volume (NaN when absent).
        Missing open/high/low are set to the close and `attrs["ohlc_from_close"]` is True.

    Raises:
        MarketDataError: unreadable file, missing columns, unparseable or unsorted or duplicate
            times, or missing/non-positive prices; the message names the file and row.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MarketDataError(f"{path}: cannot read as CSV: {exc}") from exc
    if raw.empty:
        raise MarketDataError(f"{path}: no data rows")
    index = _parse_times(raw[_time_column(raw, path)], path)
    chosen = _pick_columns(raw, path, price_column)
    out = pd.DataFrame(index=index)
    for name, source in chosen.items():
        values = pd.to_numeric(raw[source], errors="coerce").to_numpy(dtype=float)
        out[name] = values
    _check_prices(out, path, set(chosen))
    _check_order(index, path)
    for name in ("open", "high", "low"):
        if name not in chosen:
            out[name] = out["close"]
    if "volume" not in chosen:
        out["volume"] = np.nan
    out = out[list(COLUMNS)]
    periods_per_year, frequency = infer_periods_per_year(index)
    out.attrs.update(
        periods_per_year=periods_per_year,
        frequency=frequency,
        bar_seconds=float(np.median(np.diff(index.asi8))) / 1e9,
        source=str(path),
        price_column=chosen["close"],
        ohlc_from_close=not {"open", "high", "low"} <= set(chosen),
    )
    return out

"""Incremental, event-time feature computation per ticker: one bar or news item in, O(1) work.

Rules (docs/features.md): the features of day t are stamped with t's close and use only bars
up to that close and news published up to t's cutoff (close - news_cutoff_before_close_s).
News that arrives after its day was served goes into the next day, never into a served one.
Bars are de-duplicated on (ticker, end); a bar older than the ticker's watermark, or a bad bar,
raises ValidationFailed, which the bus turns into a dead letter carrying the reason.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from services.common.bus import ValidationFailed
from services.features.engine_types import RSI_PERIOD, BarIn, NewsIn, TickerState
from services.features.settings import FeaturesSettings

MARKET_FEATURES: tuple[str, ...] = (
    "close", "ret_1d", "ret_5d", "ret_20d", "realised_vol_20d",
    "ma_gap_5d", "ma_gap_20d", "volume_z_20d", "rsi_14", "bars_seen",
)  # fmt: skip
NEWS_FEATURES: tuple[str, ...] = (
    "news_sentiment_mean", "news_count", "news_sentiment_decayed", "news_latest_summary",
)  # fmt: skip


@dataclass(frozen=True)
class DayFeatures:
    """Both views' rows for one ticker at one close."""

    ticker: str
    event_timestamp: datetime
    market: dict[str, float | int]
    news: dict[str, float | int | str]


def _check_ticker(where: str, ticker: str, allowed: set[str]) -> None:
    """An empty universe accepts any ticker (what `rlmf up` runs with by default); a set one
    refuses the others, naming the setting that admits them."""
    if not ticker:
        raise ValidationFailed(f"{where}: no ticker")
    if allowed and ticker not in allowed:
        raise ValidationFailed(
            f"{where}: unknown ticker {ticker!r}; allowed: {sorted(allowed)} "
            "(RLMF_FEATURES_TICKERS; empty accepts any)"
        )


def validate_bar(bar: BarIn, allowed: set[str]) -> None:
    """Raise ValidationFailed naming what is wrong with `bar`."""
    where = f"bar {bar.ticker or '<no ticker>'} at {bar.end.isoformat()}"
    _check_ticker(where, bar.ticker, allowed)
    prices = {"open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close}
    for name, value in {**prices, "volume": bar.volume}.items():
        if not math.isfinite(value):
            raise ValidationFailed(f"{where}: {name} is {value}, not a finite number")
    for name, value in prices.items():
        if value <= 0:
            raise ValidationFailed(f"{where}: {name} = {value} is not a positive price")
    if bar.volume < 0:
        raise ValidationFailed(f"{where}: volume = {bar.volume} is negative")
    if bar.high < bar.low:
        raise ValidationFailed(f"{where}: high {bar.high} < low {bar.low}")
    for name in ("open", "close"):
        if not bar.low <= prices[name] <= bar.high:
            raise ValidationFailed(
                f"{where}: {name} {prices[name]} outside [low {bar.low}, high {bar.high}]"
            )
    if bar.start is not None and bar.start >= bar.end:
        raise ValidationFailed(f"{where}: start {bar.start.isoformat()} is not before its end")


def validate_news(news: NewsIn, allowed: set[str]) -> None:
    """Raise ValidationFailed naming what is wrong with `news`."""
    where = f"news {news.item_id or '<no id>'} for {news.ticker or '<no ticker>'}"
    _check_ticker(where, news.ticker, allowed)
    if not news.item_id:
        raise ValidationFailed(f"{where}: no item_id, so it cannot be de-duplicated")
    if not (math.isfinite(news.sentiment) and -1.0 <= news.sentiment <= 1.0):
        raise ValidationFailed(f"{where}: sentiment {news.sentiment} is not in [-1, 1]")


def zscore(value: float, mean: float, std: float) -> float:
    """(value - mean) / std, 0 when the window is (numerically) constant."""
    if std <= 1e-9 * max(abs(mean), 1e-12):
        return 0.0
    return (value - mean) / std


def rsi(avg_gain: float, avg_loss: float) -> float:
    if avg_loss == 0.0:
        return 100.0 if avg_gain > 0.0 else 50.0
    return 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)


class FeatureEngine:
    """Per-ticker incremental features; `on_bar` returns the day's rows (None for a duplicate)."""

    def __init__(self, settings: FeaturesSettings) -> None:
        self.allowed = set(settings.tickers)
        self.cutoff = timedelta(seconds=settings.news_cutoff_before_close_s)
        self.decay = 0.5 ** (1.0 / settings.sentiment_half_life_days)
        self.dedup_memory = settings.dedup_memory
        self.states: dict[str, TickerState] = {}
        self.late_news = 0
        self.duplicate_bars = 0

    def state(self, ticker: str) -> TickerState:
        if ticker not in self.states:
            self.states[ticker] = TickerState(self.dedup_memory)
        return self.states[ticker]

    # -- snapshots let a caller undo a micro-batch whose push failed -------------------------

    def is_served(self, bar: BarIn) -> bool:
        """True when exactly this bar was already served (a re-delivery)."""
        state = self.states.get(bar.ticker)
        return state is not None and state.recent_bars.get(bar.end) == bar

    def save(self, path: Path) -> None:
        """Write every ticker's state to `path` as JSON, atomically (engine_state.py)."""
        # Imported here: engine_state builds on this module's types.
        from services.features.engine_state import write_state

        write_state(path, self.states)

    def load(self, path: Path) -> int:
        """Restore the states `save` wrote; returns how many tickers were restored.

        Raises:
            EngineStateError: the file is not the engine's JSON state (a pickle included:
                the file lies on a volume others can write, so it is data, never code).
        """
        from services.features.engine_state import read_state

        self.states = read_state(path)
        return len(self.states)

    def snapshot(self, tickers: set[str]) -> dict[str, TickerState | None]:
        return {t: copy.deepcopy(self.states.get(t)) for t in tickers}

    def restore(self, snapshot: dict[str, TickerState | None]) -> None:
        for ticker, state in snapshot.items():
            if state is None:
                self.states.pop(ticker, None)
            else:
                self.states[ticker] = state

    # -- events -------------------------------------------------------------------------------

    def on_news(self, news: NewsIn) -> None:
        """Queue a news item for the next day it may count in (duplicates are ignored)."""
        validate_news(news, self.allowed)
        state = self.state(news.ticker)
        if news.item_id in state.news_ids:
            return
        state.remember_news(news.item_id)
        if state.served_cutoff is not None and news.published_at <= state.served_cutoff:
            self.late_news += 1  # its own day is already served: it counts on the next one
        state.pending_news.append(news)

    def on_bar(self, bar: BarIn) -> DayFeatures | None:
        """Extend `bar.ticker`'s features by the day that closes at `bar.end`."""
        validate_bar(bar, self.allowed)
        state = self.state(bar.ticker)
        if self._is_duplicate(state, bar):
            self.duplicate_bars += 1
            return None
        market = self._advance_market(state, bar)
        news = self._close_news_day(state, bar.end - self.cutoff)
        state.watermark = bar.end
        state.remember_bar(bar)
        return DayFeatures(bar.ticker, bar.end, market, news)

    def _is_duplicate(self, state: TickerState, bar: BarIn) -> bool:
        seen = state.recent_bars.get(bar.end)
        if seen is not None:
            if seen == bar:
                return True
            raise ValidationFailed(
                f"bar {bar.ticker} at {bar.end.isoformat()} conflicts with the bar already "
                f"served for that time (close {seen.close} vs {bar.close}); served days are final"
            )
        if state.watermark is not None and bar.end < state.watermark:
            raise ValidationFailed(
                f"bar {bar.ticker} at {bar.end.isoformat()} is older than the ticker's watermark "
                f"{state.watermark.isoformat()}: out of order, its day is already served"
            )
        return False

    def _advance_market(self, state: TickerState, bar: BarIn) -> dict[str, float | int]:
        if state.closes:
            prev = state.closes[-1]
            change = bar.close - prev
            state.returns_20.add(bar.close / prev - 1.0)
            state.gains.add(max(change, 0.0))
            state.losses.add(max(-change, 0.0))
        state.closes.append(bar.close)
        state.closes_5.add(bar.close)
        state.closes_20.add(bar.close)
        state.volumes_20.add(bar.volume)
        state.bars_seen += 1
        closes = state.closes

        def ret(k: int) -> float:
            return bar.close / closes[-1 - k] - 1.0 if len(closes) > k else 0.0

        vol = state.volumes_20
        return {
            "close": bar.close,
            "ret_1d": ret(1),
            "ret_5d": ret(5),
            "ret_20d": ret(20),
            "realised_vol_20d": state.returns_20.std if state.returns_20.full else 0.0,
            "ma_gap_5d": bar.close / state.closes_5.mean - 1.0 if state.closes_5.full else 0.0,
            "ma_gap_20d": bar.close / state.closes_20.mean - 1.0 if state.closes_20.full else 0.0,
            "volume_z_20d": zscore(bar.volume, vol.mean, vol.std) if vol.full else 0.0,
            "rsi_14": rsi(state.gains.value, state.losses.value)
            if state.gains.count >= RSI_PERIOD
            else 50.0,
            "bars_seen": state.bars_seen,
        }

    def _close_news_day(self, state: TickerState, cutoff: datetime) -> dict[str, float | int | str]:
        today = [n for n in state.pending_news if n.published_at <= cutoff]
        state.pending_news = [n for n in state.pending_news if n.published_at > cutoff]
        mean = math.fsum(n.sentiment for n in today) / len(today) if today else 0.0
        state.decayed = self.decay * state.decayed + ((1.0 - self.decay) * mean if today else 0.0)
        for item in today:
            if state.latest is None or (item.published_at, item.item_id) > (
                state.latest.published_at,
                state.latest.item_id,
            ):
                state.latest = item
        state.served_cutoff = cutoff
        return {
            "news_sentiment_mean": mean,
            "news_count": len(today),
            "news_sentiment_decayed": state.decayed,
            "news_latest_summary": state.latest.summary if state.latest else "",
        }

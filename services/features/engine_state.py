"""The feature engine's saved state as JSON: a data file that names every field, never code.

The state file lies on a volume other pods can write, so it must not be pickle (pickle.loads runs
whatever a writer put there). pydantic validates the file on the way in, so a damaged or foreign
file is refused with the field that is wrong rather than half restored.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.features.engine_types import BarIn, NewsIn, TickerState
from services.features.rolling import RollingMoments, WilderAverage

STATE_FORMAT = 1


class EngineStateError(ValueError):
    """A state file that is not the engine's JSON state (or not this format version)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=True)


class MomentsFile(_Strict):
    window: int = Field(ge=2)
    values: list[float]
    shift: float
    s1: float
    s2: float
    since_anchor: int = Field(ge=0)


class WilderFile(_Strict):
    alpha: float
    value: float
    count: int = Field(ge=0)


class TickerFile(_Strict):
    """One ticker's TickerState, field for field (recent_bars and news_ids in insertion order)."""

    dedup_memory: int = Field(ge=1)
    closes: list[float]
    returns_20: MomentsFile
    closes_5: MomentsFile
    closes_20: MomentsFile
    volumes_20: MomentsFile
    gains: WilderFile
    losses: WilderFile
    bars_seen: int = Field(ge=0)
    watermark: datetime | None
    served_cutoff: datetime | None
    recent_bars: list[BarIn]
    pending_news: list[NewsIn]
    news_ids: list[str]
    decayed: float
    latest: NewsIn | None


class EngineStateFile(_Strict):
    format: Literal[1] = 1
    tickers: dict[str, TickerFile]


def _moments_out(m: RollingMoments) -> MomentsFile:
    return MomentsFile.model_validate(m.to_state())


def _moments_in(f: MomentsFile) -> RollingMoments:
    return RollingMoments.from_state(**f.model_dump())


def _wilder_out(w: WilderAverage) -> WilderFile:
    return WilderFile(alpha=w.alpha, value=w.value, count=w.count)


def _wilder_in(f: WilderFile) -> WilderAverage:
    average = WilderAverage(1)
    average.alpha, average.value, average.count = f.alpha, f.value, f.count
    return average


def ticker_out(state: TickerState) -> TickerFile:
    return TickerFile(
        dedup_memory=state.dedup_memory,
        closes=list(state.closes),
        returns_20=_moments_out(state.returns_20),
        closes_5=_moments_out(state.closes_5),
        closes_20=_moments_out(state.closes_20),
        volumes_20=_moments_out(state.volumes_20),
        gains=_wilder_out(state.gains),
        losses=_wilder_out(state.losses),
        bars_seen=state.bars_seen,
        watermark=state.watermark,
        served_cutoff=state.served_cutoff,
        recent_bars=list(state.recent_bars.values()),
        pending_news=list(state.pending_news),
        news_ids=list(state.news_ids),
        decayed=state.decayed,
        latest=state.latest,
    )


def ticker_in(f: TickerFile) -> TickerState:
    state = TickerState(f.dedup_memory)
    state.closes = deque(f.closes, maxlen=state.closes.maxlen)
    state.returns_20 = _moments_in(f.returns_20)
    state.closes_5 = _moments_in(f.closes_5)
    state.closes_20 = _moments_in(f.closes_20)
    state.volumes_20 = _moments_in(f.volumes_20)
    state.gains, state.losses = _wilder_in(f.gains), _wilder_in(f.losses)
    state.bars_seen = f.bars_seen
    state.watermark, state.served_cutoff = f.watermark, f.served_cutoff
    state.recent_bars = OrderedDict((bar.end, bar) for bar in f.recent_bars)
    state.pending_news = list(f.pending_news)
    state.news_ids = OrderedDict.fromkeys(f.news_ids)
    state.decayed, state.latest = f.decayed, f.latest
    return state


def write_state(path: Path, states: dict[str, TickerState]) -> None:
    """Write every ticker's state to `path` as JSON, atomically (write, then rename)."""
    document = EngineStateFile(tickers={t: ticker_out(s) for t, s in states.items()})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(document.model_dump_json())
    tmp.replace(path)


def read_state(path: Path) -> dict[str, TickerState]:
    """The states `write_state` wrote; EngineStateError names the file and what is wrong."""
    raw = path.read_bytes()
    try:
        document = EngineStateFile.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise EngineStateError(
            f"{path} is not the feature engine's JSON state (format {STATE_FORMAT}): "
            f"{where}: {first['msg']}"
        ) from exc
    return {ticker: ticker_in(f) for ticker, f in document.tickers.items()}

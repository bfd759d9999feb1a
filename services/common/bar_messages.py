"""A prices frame as `rlmf.v1.Bar` messages: what any market feed publishes on market.bars.v1."""

from __future__ import annotations

import time

import pandas as pd

from services.common import topics
from services.common.bus import Producer
from services.common.envelope import derived_id, set_time, to_datetime
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings


def frame_bar_messages(frame: pd.DataFrame, ticker: str) -> list[pb.Bar]:
    """One Bar per row, oldest first; each ends `attrs["bar_seconds"]` after it starts (as the
    simulator's own bars do) and a missing volume is 0."""
    length = pd.Timedelta(seconds=float(frame.attrs["bar_seconds"]))
    volume = frame["volume"].fillna(0.0) if "volume" in frame else pd.Series(0.0, frame.index)
    bars = []
    for start, o, h, lo, c, v in zip(
        frame.index, frame["open"], frame["high"], frame["low"], frame["close"], volume, strict=True
    ):
        bar = pb.Bar(
            ticker=ticker,
            open=float(o),
            high=float(h),
            low=float(lo),
            close=float(c),
            volume=float(v),
        )
        set_time(bar.start, start.to_pydatetime())
        set_time(bar.end, (start + length).to_pydatetime())
        bars.append(bar)
    return bars


HISTORY_SOURCE = "market-history"
"""The envelope source of a bar published as history (`rlmf market publish --history N`, the
demo's history): the features service computes its features and the trainer learns from it
like any bar, but the simulator does not trade it (it only extends the price window)."""


def is_history(source: str) -> bool:
    return source == HISTORY_SOURCE


def publish_bars(
    bus: BusSettings, frame: pd.DataFrame, ticker: str, history: int = 0, pause_s: float = 0.0
) -> tuple[int, int]:
    """The bars of `frame` on market.bars.v1, oldest first, the first `history` as history
    (bar_messages.HISTORY_SOURCE). Ids derive from the ticker and the bar's start, so a file
    published again is the same events again. Returns (history bars, live bars)."""
    bars = frame_bar_messages(frame, ticker)
    producers = {
        True: Producer(bus, HISTORY_SOURCE),
        False: Producer(bus, "market-publish"),
    }
    try:
        for number, bar in enumerate(bars):
            start = to_datetime(bar.start)
            producer = producers[number < history]
            producer.publish(
                topics.MARKET_BARS,
                bar,
                key=ticker,
                event_time=start,
                id=derived_id("market-bar", ticker, start.isoformat()),
            )
            if number + 1 == history:
                producers[True].flush()  # every history bar is out before the first live one
            if pause_s and number >= history:
                producer.flush()
                time.sleep(pause_s)
    finally:
        for producer in producers.values():
            producer.close()
    return min(history, len(bars)), max(0, len(bars) - history)

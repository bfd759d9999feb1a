"""A prices frame as `rlmf.v1.Bar` messages: what any market feed publishes on market.bars.v1."""

from __future__ import annotations

import pandas as pd

from services.common.envelope import set_time
from services.common.pb.rlmf.v1 import payloads_pb2 as pb


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

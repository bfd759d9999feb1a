"""Synthetic news tied to the replayed market, labelled synthetic everywhere it appears.

The demo has no licence to real news, so it generates headlines whose tone leans towards the
*next* day's move with a stated, seeded informativeness: a headline published during day t is
"right" about the move from close t to close t+1 with probability 0.5 + informativeness / 2.
Publishing it at t is not look-ahead for the policy (the headline exists at t, as a real
analyst's call would); it is how the demo gives the sentiment channel a known, tunable signal.
Every item carries `synthetic=True` and a source name that says so.

Hand-written because the ingest service's own generator is a service-side source (it runs in
the ingest process on a schedule); the demo needs the items up front to publish them before the
replay, which keeps the run deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from services.common.envelope import set_time
from services.common.pb.rlmf.v1 import payloads_pb2 as pb

SOURCE_NAME = "rlmf-demo-synthetic"

_POSITIVE = (
    "{t} beats expectations as cloud demand surges",
    "Analysts upgrade {t} on strong growth outlook",
    "{t} shares rally after record quarterly profit",
    "{t} wins major contract, investors cheer",
)
_NEGATIVE = (
    "{t} misses estimates as sales disappoint",
    "Analysts downgrade {t} on weak guidance",
    "{t} shares slump amid regulatory probe",
    "{t} warns of losses, investors worried",
)
_NEUTRAL = (
    "{t} to hold annual shareholder meeting",
    "{t} announces board appointment",
)


@dataclass(frozen=True)
class NewsDraft:
    """One synthetic headline before it becomes a NewsItem."""

    item_id: str
    ticker: str
    headline: str
    published_at: datetime
    tone: int
    """+1 positive, -1 negative, 0 neutral: the generator's intent, kept for the report."""


def generate_news(
    frame: pd.DataFrame, ticker: str, informativeness: float, per_day: float, seed: int
) -> list[NewsDraft]:
    """Headlines for every bar of `frame` but the last, published before that bar's close.

    `frame` is indexed by bar start time with a `close` column and `attrs["bar_seconds"]`.
    """
    if not 0.0 <= informativeness <= 1.0:
        raise ValueError(f"informativeness must be in [0, 1], got {informativeness}")
    rng = np.random.default_rng(seed)
    closes = frame["close"].to_numpy(dtype=float)
    bar_seconds = float(frame.attrs.get("bar_seconds", 86_400.0))
    drafts: list[NewsDraft] = []
    for k in range(len(frame) - 1):
        start = frame.index[k].to_pydatetime()
        direction = 1 if closes[k + 1] >= closes[k] else -1
        for j in range(int(rng.poisson(per_day))):
            drafts.append(_draft(rng, ticker, start, bar_seconds, direction, informativeness, k, j))
    return drafts


def _draft(
    rng: np.random.Generator,
    ticker: str,
    start: datetime,
    bar_seconds: float,
    direction: int,
    informativeness: float,
    k: int,
    j: int,
) -> NewsDraft:
    pool: tuple[str, ...]
    if rng.random() < 0.15:
        tone, pool = 0, _NEUTRAL
    else:
        right = rng.random() < 0.5 + informativeness / 2
        tone = direction if right else -direction
        pool = _POSITIVE if tone > 0 else _NEGATIVE
    headline = pool[int(rng.integers(len(pool)))].format(t=ticker)
    # Inside the bar, never after its close: day t's news is known at t's decision.
    offset = timedelta(seconds=float(rng.uniform(0.05, 0.9)) * bar_seconds)
    return NewsDraft(f"synthetic-{ticker}-{k:05d}-{j}", ticker, headline, start + offset, tone)


def news_item(draft: NewsDraft) -> pb.NewsItem:
    """The draft as the raw news item the sentiment service consumes."""
    item = pb.NewsItem(
        item_id=draft.item_id,
        ticker=draft.ticker,
        headline=draft.headline,
        body="",
        source_name=SOURCE_NAME,
        synthetic=True,
    )
    set_time(item.published_at, draft.published_at)
    return item

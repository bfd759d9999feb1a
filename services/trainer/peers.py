"""The other tickers a cycle's one student learns from: each ticker's bars cut to the stretch
of time the cycle's own walk-forward split covers, so the student trains on every ticker up to
one cut-off and is judged on every ticker after it.

Why cut by time rather than give each ticker its own split: a ticker with more bars would put
its training cut-off after another's held-out start, and the student would have seen that
held-out stretch's market (shared moves, sector news) through the first ticker's bars. One
cut-off in time for all keeps the held-out bars unseen by every part of the training.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import pandas as pd

from services.trainer.offline_features import BarFeatures, first_bar_with_features
from services.trainer.plan import CyclePlan

log = logging.getLogger(__name__)

MIN_SHARE = 0.5
"""A peer must have at least this share of the plan's held-out bars in the same stretch of
time, and of its training bars (at most `train_bars` of them count: an expanding window may
reach back further than a peer's features do), or it is left out of the cycle (a ticker that
started streaming yesterday has too little of either to learn from or to judge on)."""


def align_peer(
    plan: CyclePlan,
    ticker: str,
    prices: pd.DataFrame,
    features: BarFeatures | None,
    train_bars: int | None = None,
) -> CyclePlan | None:
    """`ticker`'s plan over `plan`'s stretch of time, or None (logged) when it has too few
    bars in it. `prices` may run past the plan's last bar: nothing after it is kept.
    `train_bars`: the training window's nominal length (settings.train_days)."""
    prices = prices[prices.index <= plan.times[plan.last]]
    times = prices.index
    first = first_bar_with_features(_cut(features, len(prices)))
    train_start = max(first, int(times.searchsorted(plan.times[plan.train_start])))
    train_end = int(times.searchsorted(plan.times[plan.train_end], side="right")) - 1
    eval_start = int(times.searchsorted(plan.times[plan.eval_start]))
    last = len(times) - 1
    trained, held_out = train_end - train_start, last - eval_start
    plan_trained = plan.train_end - plan.train_start
    wanted_train = min(plan_trained, train_bars or plan_trained)
    enough = (
        trained >= MIN_SHARE * wanted_train
        and held_out >= MIN_SHARE * (plan.last - plan.eval_start)
        and trained > 1
        and held_out > 1
    )
    if not enough:
        log.info(
            "%s left out of the cycle on %s: %d training and %d held-out bars in its stretch, "
            "it needs %.0f%% of %d and of %d",
            ticker, plan.ticker, trained, held_out, 100 * MIN_SHARE, wanted_train,
            plan.last - plan.eval_start,
        )  # fmt: skip
        return None
    return dataclasses.replace(
        plan,
        prices=prices,
        ticker=ticker,
        train_start=train_start,
        train_end=train_end,
        eval_start=eval_start,
        last=last,
        bar_features=_cut(features, len(prices)),
        earlier_folds=(),
        peers=(),
    )


PeerBars = Mapping[str, tuple[pd.DataFrame, BarFeatures | None]]
"""Per peer ticker, its bars and the features its states carry (None: prices alone)."""


def with_peers(plan: CyclePlan, peers: PeerBars, train_bars: int | None = None) -> CyclePlan:
    """`plan` with the peers that have enough bars in its stretch of time, in ticker order."""
    found = (align_peer(plan, t, bars, f, train_bars) for t, (bars, f) in sorted(peers.items()))
    return dataclasses.replace(plan, peers=tuple(p for p in found if p is not None))


def _cut(features: BarFeatures | None, bars: int) -> BarFeatures | None:
    """The features of the first `bars` bars (rows are indexed like the prices)."""
    if features is None:
        return None
    return BarFeatures(
        numeric=features.numeric.iloc[:bars],
        sentiment=features.sentiment.iloc[:bars],
        summaries=features.summaries.iloc[:bars],
    )

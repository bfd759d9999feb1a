"""The newest walk-forward split of a bar series: training bars, purged bars, an embargo, then the
held-out block the gate scores, all at or before the last bar (a live cycle sees nothing later).

Every range holds *decision* bars, as a backtest does: a decision on bar t is scored on the move
to bar t + horizon. So `DiscreteTradingEnv(start=r.start, end=r.stop)` and
`evaluate(..., r.start, r.stop)` trade exactly the decisions of a range `r`, and the held-out
block's last outcome is the series' last bar. Purging and the embargo follow López de Prado,
*Advances in Financial Machine Learning*, ch. 7: no training label may overlap the held-out block,
and k more bars are dropped before it because neighbouring days are correlated.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WalkForwardSplit:
    """Decision-bar ranges in time order: train | purge | embargo | holdout (| last outcome bar)."""

    train: range
    """Bars trained on; the last one's outcome is bar `purge.start` (before the embargo)."""
    purge: range
    """Bars whose outcome would reach into the embargo or the held-out block: not trained on."""
    embargo: range
    """Bars skipped outright between training and the held-out block."""
    holdout: range
    """Bars the student and teacher are scored on; one daily return each."""
    horizon: int = 1
    """Bars between a decision and its outcome (the next bar's move)."""


def minimum_bars(holdout: int, embargo: int, min_train: int, horizon: int = 1) -> int:
    """Bars a split needs: the ranges, plus the bar the last held-out decision is scored on."""
    return min_train + horizon + embargo + holdout + horizon


def split(
    n_bars: int,
    holdout: int,
    embargo: int,
    min_train: int,
    *,
    max_train: int | None = None,
    horizon: int = 1,
) -> WalkForwardSplit:
    """The newest split of bars 0..n_bars-1: the last `holdout` decisions held out, `embargo` bars
    before them skipped, the `horizon` bars before those purged, the rest (at most the newest
    `max_train`, at least `min_train`) trained on. Raises ValueError naming the bars needed."""
    if holdout < 1 or min_train < 1 or embargo < 0 or horizon < 1:
        raise ValueError("holdout, min_train and horizon must be >= 1 and embargo >= 0")
    if max_train is not None and max_train < min_train:
        raise ValueError(f"max_train {max_train} is below min_train {min_train}")
    needed = minimum_bars(holdout, embargo, min_train, horizon)
    if n_bars < needed:
        raise ValueError(
            f"a walk-forward split needs at least {needed} bars (train {min_train} + purge "
            f"{horizon} + embargo {embargo} + held out {holdout} + outcome {horizon}), "
            f"have {n_bars}"
        )
    held = range(n_bars - horizon - holdout, n_bars - horizon)
    skipped = range(held.start - embargo, held.start)
    purged = range(skipped.start - horizon, skipped.start)
    first = 0 if max_train is None else max(0, purged.start - max_train)
    return WalkForwardSplit(range(first, purged.start), purged, skipped, held, horizon)


def folds(block: range, n_folds: int) -> list[range]:
    """`block` cut into `n_folds` consecutive, near-equal pieces (earlier pieces take the extra
    bar), e.g. to report a Sharpe per fold of the held-out block."""
    if not 1 <= n_folds <= len(block):
        raise ValueError(f"n_folds must be between 1 and {len(block)}, got {n_folds}")
    size, extra = divmod(len(block), n_folds)
    edges = [block.start]
    for i in range(n_folds):
        edges.append(edges[-1] + size + (1 if i < extra else 0))
    return [range(a, b) for a, b in zip(edges, edges[1:], strict=False)]


def walk_forward_folds(
    n_bars: int,
    holdout: int,
    embargo: int,
    min_train: int,
    n_folds: int,
    *,
    max_train: int | None = None,
    horizon: int = 1,
) -> list[WalkForwardSplit]:
    """The newest `holdout` decisions cut into `n_folds` consecutive folds, each with its own
    split: fold k trains on the bars before it (purged, embargoed) and is scored on its own
    bars, so every held-out decision is out of sample for the student that makes it. The last
    fold is `split(n_bars, its length, ...)`; with one fold this is `[split(...)]`. Raises
    ValueError when the first fold would train on fewer than `min_train` bars."""
    last = split(n_bars, holdout, embargo, min_train, max_train=max_train, horizon=horizon)
    splits = []
    for fold in folds(last.holdout, n_folds):
        # A fold is the newest split of the bars up to its own last outcome.
        prefix = fold.stop + horizon
        splits.append(
            split(prefix, len(fold), embargo, min_train, max_train=max_train, horizon=horizon)
        )
    return splits

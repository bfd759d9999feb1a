"""The warm-up cycle's windows: one rule for `rlmf up` and the demo.

Before live trading starts, the trainer runs one cycle on the history (`rlmf market publish
--history N`; the demo publishes the bars before its window). A history is usually longer
than a regular cycle needs, and the first student faces a teacher that buys every bar, where
the gate's bootstrap needs many held-out bars to tell an edge from luck. So the warm-up holds
out up to `warm_up.holdout_bars` of the history (never fewer than eval_days), in
`warm_up.folds` walk-forward folds, and trains on the rest: at least twice train_days, since
the history's first bars may carry no features yet.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.market import walk_forward

if TYPE_CHECKING:  # the demo's config reads warm_up_windows without loading torch
    from services.trainer.settings import TrainerSettings


@dataclass(frozen=True)
class WarmUpWindows:
    holdout: int
    """History bars the warm-up's gate holds out (its eval_days and gate minimum)."""
    folds: int
    """Walk-forward folds of those bars."""
    fits: bool
    """Whether the history holds the warm-up's training bars, embargo and held-out bars."""


def warm_up_windows(
    history_bars: int,
    train_days: int,
    embargo_days: int,
    eval_days: int,
    holdout_bars: int,
    folds: int,
) -> WarmUpWindows:
    """The warm-up's held-out length and folds for a history of `history_bars` bars."""
    trained = walk_forward.minimum_bars(0, embargo_days, 2 * train_days)
    holdout = max(eval_days, min(holdout_bars, history_bars - trained))
    fold_count = min(folds, holdout) if holdout > eval_days else 1
    fits = history_bars >= walk_forward.minimum_bars(holdout, embargo_days, train_days)
    return WarmUpWindows(holdout, fold_count, fits)


def warm_up_settings(settings: TrainerSettings, history_bars: int) -> TrainerSettings:
    """`settings` for the warm-up cycle on `history_bars` bars: its held-out block (and the
    gate's minimum, so every held-out bar counts), folds and safety cap."""
    windows = warm_up_windows(
        history_bars,
        settings.train_days,
        settings.embargo_days,
        settings.eval_days,
        settings.warm_up.holdout_bars,
        settings.warm_up.folds,
    )
    update: dict[str, object] = {
        "eval_days": windows.holdout,
        "walk_forward_folds": windows.folds,
        "gate": dataclasses.replace(settings.gate, min_holdout_bars=windows.holdout),
    }
    if settings.warm_up.minutes is not None:
        update["cycle_minutes"] = settings.warm_up.minutes
    return settings.model_copy(update=update)

"""The warm-up cycle's windows (services/trainer/warm_up.py): one rule for `rlmf up` and the
demo, applied by the trainer to the bars it finds, and the streaming scheduler asks for it on
a ticker's first live bar after its history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from services.market.walk_forward import minimum_bars
from services.trainer.cycle import CycleResult
from services.trainer.datasets import FeedbackLog
from services.trainer.kafka_history import BarStore, StreamHistory
from services.trainer.service import Scheduler
from services.trainer.settings import TrainerSettings
from services.trainer.warm_up import warm_up_settings, warm_up_windows


def test_a_long_history_holds_out_up_to_the_setting_in_folds() -> None:
    # rlmf up's defaults (train 120, embargo 2, eval 60) on 600 history bars: 250 held out in
    # 5 folds, and at least twice train_days left to train on.
    w = warm_up_windows(600, 120, 2, 60, holdout_bars=250, folds=5)
    assert (w.holdout, w.folds, w.fits) == (250, 5, True)
    assert 600 - w.holdout >= 2 * 120


def test_a_shorter_history_holds_out_what_it_can_spare_and_never_less_than_a_cycle() -> None:
    spare = 400 - minimum_bars(0, 2, 240)
    assert warm_up_windows(400, 120, 2, 60, 250, 5).holdout == spare == 156
    # No more to spare than a regular cycle's block: a regular cycle's windows, one fold.
    w = warm_up_windows(250, 120, 2, 60, 250, 5)
    assert (w.holdout, w.folds, w.fits) == (60, 1, True)
    # Too short for even that: the caller gets fits=False (the demo then skips the warm-up).
    assert not warm_up_windows(150, 120, 2, 60, 250, 5).fits


def test_the_settings_of_the_warm_up_cycle(tmp_path: Path) -> None:
    settings = TrainerSettings(work_dir=tmp_path, warm_up={"holdout_bars": 200, "minutes": 3})
    warm = warm_up_settings(settings, 600)
    assert (warm.eval_days, warm.walk_forward_folds, warm.cycle_minutes) == (200, 5, 3.0)
    assert warm.gate.min_holdout_bars == 200, "every held-out bar counts for the gate"
    # Nothing else moves, and the regular cycles keep theirs.
    assert warm.train_days == settings.train_days and warm.recipe == settings.recipe
    assert (settings.eval_days, settings.walk_forward_folds) == (60, 1)
    uncapped = settings.model_copy(
        update={"warm_up": settings.warm_up.model_copy(update={"minutes": None})}
    )
    assert warm_up_settings(uncapped, 600).cycle_minutes == settings.cycle_minutes


START = datetime(2020, 1, 1, 21, tzinfo=UTC)


def test_the_streaming_scheduler_runs_the_warm_up_after_the_history(tmp_path: Path) -> None:
    """A live bar after a ticker's history starts the warm-up cycle as of the last history
    bar, and the cycle is asked for as the warm-up (with its longer held-out block)."""
    settings = TrainerSettings(
        data_source="kafka", work_dir=tmp_path, publish=False, promotion="none",
        train_days=10, eval_days=5, embargo_days=0, gate={"min_holdout_bars": 5},
    )  # fmt: skip
    history = StreamHistory(tmp_path)
    store = history.stores.setdefault("ACME", BarStore(tmp_path / "history" / "ACME.csv"))
    for day in range(60):
        store.add(START + timedelta(days=day), (1.0, 1.0, 1.0, 1.0 + day / 100, 1.0))
    store.save()
    history.history_end["ACME"] = (START + timedelta(days=49)).isoformat()
    calls: list[dict[str, Any]] = []

    def record_cycle(cycle_settings: TrainerSettings, **kwargs: Any) -> CycleResult:
        calls.append({"settings": cycle_settings, **kwargs})
        raise RuntimeError("the cycle itself runs in test_trainer_cycle")

    scheduler = Scheduler(settings, FeedbackLog(), history, None, run=record_cycle)
    scheduler.maybe_warm_up("ACME")
    scheduler.join(30)
    assert len(calls) == 1 and calls[0]["warm_up"] is True
    prices: pd.DataFrame = calls[0]["prices"]
    assert len(prices) == 50, "the history's bars only: nothing after its last"
    assert scheduler.last_cycle_day == (START + timedelta(days=49)).date()

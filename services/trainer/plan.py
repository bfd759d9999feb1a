"""What a cycle and its recipe share: the plan a cycle works on (window, teacher, folders),
the student's version, the cycle's wall-clock safety cap, and the errors that stop a cycle."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from services.trainer.offline_features import BarFeatures

log = logging.getLogger(__name__)


class CycleError(RuntimeError):
    """A cycle cannot run: say what is missing."""


class CycleInterrupted(RuntimeError):
    """A stop was requested mid-cycle: PPO checkpointed, and the next run of the same cycle
    (same teacher, same window) resumes from there."""


@dataclass(frozen=True)
class CyclePlan:
    """What a cycle works on, fixed when it starts: the walk-forward window over the bar
    indices of `prices`, the teacher, and where the student and its checkpoints go."""

    prices: pd.DataFrame
    train_start: int
    train_end: int
    last: int
    teacher_dir: Path
    teacher: Any
    version: str
    out: Path
    work: Path
    bar_features: BarFeatures | None
    """The live states' features, read once for the whole cycle (training and held-out bars)."""
    eval_start: int = 0
    """The first held-out decision bar: after the training cut-off, the purge and the embargo."""
    earlier_folds: tuple[CyclePlan, ...] = ()
    """The walk-forward folds before this one (settings.walk_forward_folds > 1), oldest first:
    each trains its own student on the bars before it; the gate pools their held-out bars."""
    ticker: str = ""
    """The ticker whose bars `prices` holds (the prompt names it)."""
    peers: tuple[CyclePlan, ...] = ()
    """The other tickers the one student learns from, each over the same stretch of time as
    this plan (peers.align_peer): their training bars end by this plan's training cut-off and
    their held-out bars start no earlier than its held-out start, so no ticker's held-out bar
    was seen in training through another's. Their own `peers` and `earlier_folds` are empty."""
    inputs_sha256: str = ""
    """The cycle's data as one hash (cycle.inputs_sha256), which the version names."""

    @property
    def times(self) -> pd.Index:
        return self.prices.index

    @property
    def ticker_plans(self) -> tuple[CyclePlan, ...]:
        """This plan and its peers: every ticker the student trains and is judged on."""
        return (self, *self.peers)

    @property
    def tickers(self) -> list[str]:
        return [p.ticker for p in self.ticker_plans]

    @property
    def held_out_start(self) -> int:
        """The first bar the gate decides on: the first fold's first held-out bar."""
        return self.earlier_folds[0].eval_start if self.earlier_folds else self.eval_start

    @property
    def teacher_version(self) -> str:
        return str(self.teacher.model_version)


def student_version(
    teacher_version: str,
    window_end: pd.Timestamp,
    seed: int,
    recipe_sha256: str,
    tickers: tuple[str, ...] = (),
    inputs_sha256: str = "",
) -> str:
    """s<window end>-<tag>-seed<seed>-<recipe>: deterministic per (teacher, tickers, data,
    seed, recipe), so a resumed cycle finds its own checkpoints, and a work folder reused with
    another seed, recipe or data (news corrected, a shuffled-news control) trains a student of
    its own instead of reloading the other one. The tag hashes the teacher, the tickers when
    there are several, and the cycle's inputs_sha256 (its bars, features and news)."""
    named = teacher_version + ("|" + ",".join(sorted(tickers)) if len(tickers) > 1 else "")
    named += f"|{inputs_sha256}" if inputs_sha256 else ""
    tag = hashlib.sha1(named.encode()).hexdigest()[:6]
    return f"s{window_end:%Y%m%d}-{tag}-seed{seed}-{recipe_sha256[:8]}"


class TrainingClock:
    """The cycle's wall-clock safety cap (RLMF_TRAINER_CYCLE_MINUTES), shared by every
    walk-forward fold's training: the recipe's budget is its steps and epochs, and this only
    cuts a cycle that runs far past them. It runs only while a student trains (the phases
    call `deadline` before and `stop` after), not while the frozen base meets new days."""

    def __init__(self, minutes: float | None) -> None:
        self.cap_s = None if minutes is None else 60.0 * minutes
        self.spent_s = 0.0
        self.cut = False
        """Whether the cap stopped any training: that student is not the one the seed makes."""
        self._started: float | None = None

    def deadline(self) -> float | None:
        """Start a training phase: its time.monotonic() deadline (None without a cap)."""
        self._started = time.monotonic()
        if self.cap_s is None:
            return None
        return self._started + max(0.0, self.cap_s - self.spent_s)

    def stop(self, cut: bool) -> None:
        """End a training phase; `cut`: the deadline stopped it early."""
        if self._started is not None:
            self.spent_s += time.monotonic() - self._started
            self._started = None
        if cut and not self.cut:
            log.warning(
                "the cycle's wall-clock cap (RLMF_TRAINER_CYCLE_MINUTES, %.1f min) cut its "
                "training short of the recipe's steps: budget_cut, not the seed's student",
                (self.cap_s or 0.0) / 60.0,
            )
        self.cut = self.cut or cut

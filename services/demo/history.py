"""The market's history before the replay, and the trainer's warm-up cycle on it.

A deployed system does not start on its first live bar: the market feed has years of bars, and
the trainer can learn from them before the policy trades. The demo does the same with the bars
just before its window (`Window.history`): their synthetic news goes out with the window's
(orchestrator's news stage), then the feed publishes the history bars on market.bars.v1, so the
features service computes and stores their features exactly as it will the live ones, and then
the trainer runs one cycle (`rlmf trainer cycle --as-of <last history day>`) on them. That cycle
is the trainer's own, gated like every other: its student serves from the first replayed bar
only when the bootstrap gate says it beat the untrained teacher on the history's held-out bars.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.bar_messages import publish_bars
from services.common.settings import BusSettings
from services.demo.config import Window


def publish_history_bars(bus: BusSettings, window: Window) -> int:
    """The history bars on market.bars.v1, oldest first, as `rlmf market publish --history`
    sends a file's history (ids stable across runs)."""
    history, _ = publish_bars(bus, window.history, window.ticker, history=len(window.history))
    return history


@dataclass
class WarmUpCycle:
    """What the warm-up cycle did, for the report and run.json."""

    as_of: str
    exit_code: int
    seconds: float
    result: dict[str, Any] | None
    """The cycle's CycleResult line (`rlmf trainer cycle` prints it), None when it failed."""

    @property
    def promoted(self) -> bool:
        return bool(self.result and self.result.get("promoted"))

    def summary(self) -> str:
        if self.result is None:
            return f"warm-up cycle as of {self.as_of} failed (exit {self.exit_code})"
        outcome = self.result.get("outcome") or ("promoted" if self.promoted else "refused")
        if outcome == "candidate":
            outcome = "passed the backtest gate and trades in shadow"
        return (
            f"warm-up cycle as of {self.as_of}: student {self.result.get('student_version')} "
            f"{outcome} ({self.result.get('reason', '')})"
        )


def warm_up_env(
    trainer_env: dict[str, str], holdout_bars: int, folds: int, minutes: float | None = None
) -> dict[str, str]:
    """The trainer service's settings with the warm-up's: hold out up to `holdout_bars` of the
    history in `folds` walk-forward folds (the trainer's rule, services/trainer/warm_up.py,
    the one `rlmf up` uses), all folds trained within `minutes` (a safety cap)."""
    env = {
        **trainer_env,
        "RLMF_TRAINER_WARM_UP__HOLDOUT_BARS": str(holdout_bars),
        "RLMF_TRAINER_WARM_UP__FOLDS": str(folds),
    }
    if minutes is not None:
        env["RLMF_TRAINER_WARM_UP__MINUTES"] = str(minutes)
    return env


def run_warm_up_cycle(
    trainer_env: dict[str, str], as_of: str, log_path: Path, timeout_s: float
) -> WarmUpCycle:
    """One `rlmf trainer cycle --warm-up` with `trainer_env` (warm_up_env), knowing the bars
    up to `as_of` only. It promotes through the policy server and publishes its decision on
    models.promotions.v1 like the service's cycles. A timeout or failure leaves the teacher
    serving; the caller reports it."""
    argv = [sys.executable, "-m", "services.cli", "trainer", "cycle", "--as-of", as_of, "--warm-up"]
    started = time.monotonic()
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.run(
                argv,
                env={**os.environ, **trainer_env},
                stdout=subprocess.PIPE,
                stderr=log,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return WarmUpCycle(as_of, -1, round(time.monotonic() - started, 1), None)
        # The cycle logs to stdout and ends with its result line: all of it goes to the log.
        log.write(proc.stdout)
    seconds = round(time.monotonic() - started, 1)
    lines = proc.stdout.decode().strip().splitlines()
    result = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
    return WarmUpCycle(as_of, proc.returncode, seconds, result)

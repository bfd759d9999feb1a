"""The demo's configuration (scenario, window, settings) and its one-line status printer."""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from services.demo.settings import DemoSettings
from services.market import walk_forward
from services.trainer.warm_up import warm_up_windows

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("real", "regime-shift")

_T0 = time.monotonic()


class DemoError(RuntimeError):
    """A stage failed; the message says which and why."""


def status(line: str) -> None:
    """One line per stage on stderr, timestamped from the run's start."""
    print(f"[demo {time.monotonic() - _T0:7.1f}s] {line}", file=sys.stderr, flush=True)


def default_models_dir() -> Path:
    """RLMF_MODELS_DIR (as `rlmf models prepare` uses it), else the repository's models/."""
    env = os.environ.get("RLMF_MODELS_DIR")
    return Path(env).resolve() if env else REPO_ROOT / "models"


@dataclass(frozen=True)
class CycleWindows:
    """A trainer cycle's walk-forward windows in bars (services/market/walk_forward.py)."""

    min_train: int
    embargo: int
    holdout: int
    folds: int = 1
    """Walk-forward folds the held-out bars are cut into (RLMF_TRAINER_WALK_FORWARD_FOLDS)."""

    @property
    def minimum_bars(self) -> int:
        return walk_forward.minimum_bars(self.holdout, self.embargo, self.min_train)


@dataclass
class DemoConfig:
    scenario: str
    quick: bool
    out: Path
    settings: DemoSettings = field(default_factory=DemoSettings)
    kill_service: str | None = None
    kill_after_bars: int = 0
    bootstrap: str | None = None
    """Use this running Kafka (e.g. a test's broker) instead of starting the embedded one."""
    models_dir: Path = field(default_factory=default_models_dir)
    kill_seed: int | None = None
    """Chaos: draw the kill's bar from this seed (uniform over the window's inner bars)
    instead of `kill_after_bars`, so a series of runs kills each service at its own bar."""

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise DemoError(
                f"unknown scenario {self.scenario!r}; choose one of {', '.join(SCENARIOS)}"
            )

    @property
    def kill_bar(self) -> int:
        """After how many published decisions the chaos kill happens."""
        if self.kill_seed is None:
            return self.kill_after_bars
        # Not the first or last few bars: a kill there would test start-up or shutdown, which
        # other tests cover, rather than a crash in the middle of the loop.
        return random.Random(self.kill_seed).randint(5, max(5, self.bars - 5))

    @property
    def bars(self) -> int:
        return (
            self.settings.quick_bars
            if self.quick
            else (self.settings.bars if self.scenario == "real" else self.settings.regime_days)
        )

    @property
    def history_bars(self) -> int:
        """Bars of history published before the replay; the regime generator has none."""
        if self.scenario != "real":
            return 0
        return self.settings.quick_history_bars if self.quick else self.settings.history_bars

    @property
    def cycle_minutes(self) -> float:
        """A trainer cycle's wall-clock safety cap (RLMF_TRAINER_CYCLE_MINUTES)."""
        return self.settings.quick_cycle_minutes if self.quick else self.settings.cycle_minutes

    @property
    def shadow_bars(self) -> int:
        """Bars each candidate trades in shadow before its verdict."""
        return self.settings.quick_shadow_bars if self.quick else self.settings.shadow_bars

    @property
    def ppo_steps(self) -> int:
        """PPO steps of each student a cycle trains (RLMF_TRAINER_RECIPE__PPO__TOTAL_TIMESTEPS)."""
        return self.settings.quick_ppo_steps if self.quick else self.settings.ppo_steps

    @property
    def cycle_windows(self) -> CycleWindows:
        """100 held-out bars for the gate's bootstrap (its minimum is 60; on 60 bars a student
        that traded exactly like the sentiment rule, Sharpe 5.9 against 3.9, was still not
        told from luck at 90%: bench/learning.py); --quick, a smoke run, holds out 8."""
        if self.quick:
            return CycleWindows(min_train=10, embargo=0, holdout=8)
        return CycleWindows(min_train=40, embargo=2, holdout=100)

    def warm_up_windows(self, history_bars: int) -> CycleWindows:
        """The warm-up cycle's windows, by the trainer's own rule (services/trainer/warm_up.py,
        the one `rlmf up` uses): `warm_up_holdout_bars` of the history held out (never fewer
        than a replay cycle holds out) in `warm_up_folds` folds, the rest trained on.

        Why a setting: the warm-up's teacher, the untrained model, buys every bar, and on 100
        held-out bars the gate's bootstrap often cannot tell an edge of the news' size from
        luck (bench/warm_up_power.py: a student that reads every headline's tone exactly
        passes on 5 of 12 news draws with 100 of the 350 bars before the window held out, on
        10 of 12 with a trading year, 252). A longer block leaves fewer bars to train on, and
        every history bar costs a pass of the frozen base: docs/results.md, "The demo's
        history", has the run that held out a year and what its student then did live.
        """
        w = self.cycle_windows
        warm_up = warm_up_windows(
            history_bars,
            train_days=w.min_train,
            embargo_days=w.embargo,
            eval_days=w.holdout,
            holdout_bars=self.settings.warm_up_holdout_bars,
            folds=self.warm_up_folds,
        )
        return CycleWindows(w.min_train, w.embargo, warm_up.holdout, warm_up.folds)

    @property
    def warm_up_folds(self) -> int:
        """Folds of the warm-up's held-out bars (RLMF_TRAINER_WARM_UP__FOLDS); --quick, 1."""
        return 1 if self.quick else self.settings.warm_up_folds

    @property
    def minimum_bars(self) -> int:
        """Two cycles, the first after a third of the window: each needs its windows' bars."""
        return 3 * self.cycle_windows.minimum_bars

    @property
    def train_every(self) -> int:
        """Bars between trainer cycles: a third of the window, so two cycles run in the replay."""
        return self.settings.train_every_bars or max(10, self.bars // 3)

    @cached_property
    def train_every_days(self) -> int:
        """The same in calendar days (the trainer's unit): the span of `train_every` bars."""
        window = select_window(self)
        idx = window.frame.index
        return int((idx[min(self.train_every, len(idx) - 1)] - idx[0]).days)


@dataclass
class Window:
    """The bars replayed: the simulator settings that select them and the frame itself."""

    frame: pd.DataFrame
    ticker: str
    simulator_env: dict[str, str]
    description: str
    data_file: Path | None = None
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    """The bars before `frame` that the feed publishes ahead of the replay (may be empty)."""

    warm_up_holdout: int = 0
    """The history bars the warm-up cycle's gate holds out (DemoConfig.warm_up_windows); 0 when
    the history is too short for the warm-up's windows (select_window decides)."""
    warm_up_folds: int = 1
    """The walk-forward folds those held-out bars are cut into."""

    @property
    def warm_up(self) -> bool:
        """Whether the trainer runs a cycle on the history before the replay."""
        return self.warm_up_holdout > 0

    @property
    def warm_up_day(self) -> str:
        """The last history day: the warm-up cycle knows the bars of that day and before."""
        return f"{self.history.index[-1]:%Y-%m-%d}"


def select_window(cfg: DemoConfig) -> Window:
    """The last `bars` rows of the real CSV, or the regime-shift generator's series."""
    from services.market.market_data import load_prices_csv
    from services.market.regime_market import generate_market, load_params

    s = cfg.settings
    if cfg.scenario == "real":
        path = (REPO_ROOT / s.prices_csv).resolve()
        full = load_prices_csv(path)
        start = max(0, len(full) - cfg.bars)
        frame = full.iloc[start:]
        _check_length(cfg, frame, str(path))
        history = full.iloc[max(0, start - cfg.history_bars) : start]
        env = {
            "RLMF_SIMULATOR_PRICES_CSV": str(path),
            "RLMF_SIMULATOR_START_BAR": str(start),
            "RLMF_SIMULATOR_MAX_BARS": str(cfg.bars),
            "RLMF_SIMULATOR_TICKER": s.ticker,
        }
        desc = (
            f"real daily {s.ticker} bars from {path.name}, rows {start}..{len(full) - 1} "
            f"({frame.index[0]:%Y-%m-%d} to {frame.index[-1]:%Y-%m-%d}, {len(frame)} bars)"
        )
        if not history.empty:
            desc += (
                f", after {len(history)} bars of history ({history.index[0]:%Y-%m-%d} to "
                f"{history.index[-1]:%Y-%m-%d})"
            )
        # A history too short for a cycle's windows is still the features' and later cycles'.
        warm_up = cfg.warm_up_windows(len(history))
        fits = len(history) >= warm_up.minimum_bars
        return Window(
            frame,
            s.ticker,
            env,
            desc,
            path,
            history,
            warm_up.holdout if fits else 0,
            warm_up.folds,
        )
    params = load_params("regime-shift")
    frame, _ = generate_market(params, cfg.bars, s.seed)
    _check_length(cfg, frame, "the regime-shift scenario")
    env = {"RLMF_SIMULATOR_SCENARIO": "regime-shift", "RLMF_SIMULATOR_DAYS": str(cfg.bars)}
    desc = (
        f"synthetic regime-switching market (scenario regime-shift, seed {s.seed}, "
        f"{cfg.bars} bars, ticker {params.ticker}): not real prices"
    )
    return Window(frame, params.ticker, env, desc)


def _check_length(cfg: DemoConfig, frame: pd.DataFrame, source: str) -> None:
    if len(frame) < cfg.minimum_bars:
        raise DemoError(
            f"{source} gives {len(frame)} bars; the demo needs at least {cfg.minimum_bars} for "
            f"two training cycles (each holds out {cfg.cycle_windows.holdout} bars after at "
            f"least {cfg.cycle_windows.min_train} training bars)"
        )

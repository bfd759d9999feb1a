"""Settings of `rlmf demo` from RLMF_DEMO_* environment variables (the CLI overrides some)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import RlmfSettings


class DemoSettings(RlmfSettings):
    """Env: RLMF_DEMO_SEED, RLMF_DEMO_BARS, RLMF_DEMO_NEWS_INFORMATIVENESS, ..."""

    model_config = SettingsConfigDict(env_prefix="RLMF_DEMO_", extra="ignore")

    seed: int = 0
    """Seeds the news generator, the regime market, the models and every service."""
    bars: int = Field(default=504, ge=20)
    """Bars replayed in the full demo: the last `bars` rows of the CSV (504 = two years)."""
    quick_bars: int = Field(default=80, ge=20)
    """Bars replayed with --quick."""
    history_bars: int = Field(default=350, ge=0)
    """Bars before the window that the market feed publishes ahead of the replay, with their
    synthetic news: the features service warms up on them and the trainer's first cycle (the
    warm-up, before the first replayed bar) and every later one train on them, as a deployed
    system starts with the market's history (the `real` scenario; as many as the CSV holds).
    350: the warm-up's gate holds out its last 250 in walk-forward folds and its first fold
    still learns from about 100. Every history bar costs the warm-up a pass of the frozen base
    (1.4-2 s on 2 cores): with 500 the warm-up ran past its 15 minutes (docs/results.md, "The
    demo's history")."""
    warm_up_holdout_bars: int = Field(default=250, ge=1)
    """History bars the warm-up cycle's gate holds out (at least a replay cycle's, and the
    warm-up trains on at least twice the training minimum): DemoConfig.warm_up_windows."""
    warm_up_folds: int = Field(default=5, ge=1)
    """Walk-forward folds of the warm-up's held-out bars (RLMF_TRAINER_WALK_FORWARD_FOLDS):
    each fold's student learns from the history before it, so the gate judges 250 bars out
    of sample while the served student learns from all but the last fold (about 300 bars)."""
    warm_up_minutes: float = Field(default=20.0, gt=0)
    """The warm-up cycle's wall-clock safety cap (RLMF_TRAINER_WARM_UP__MINUTES), over its five
    folds' students together: each trains for the demo's steps (ppo_steps, mf_max_steps),
    30-40 s on 2 quiet cores, so about 6x the 3 minutes they take. A busy machine (a demo
    beside `make test` runs 2-3x slower) must not reach it, or the same seed would give
    another student; it only stops a warm-up on a machine far slower than that (the decision
    then says budget_cut)."""
    quick_history_bars: int = Field(default=30, ge=0)
    """The same with --quick."""
    prices_csv: str = "data/MSFT.csv"
    """The real daily bars replayed by the `real` scenario (relative to the repository root)."""
    ticker: str = "MSFT"
    """The ticker the `real` scenario's bars (prices_csv) trade as; the synthetic scenario uses
    its own."""
    news_informativeness: float = Field(default=0.6, ge=0.0, le=1.0)
    """Synthetic news: P(a headline's tone matches the next day's move) = 0.5 + this / 2."""
    news_per_day: float = Field(default=1.5, gt=0.0)
    """Mean synthetic headlines per trading day (Poisson)."""
    train_every_bars: int = Field(default=0, ge=0)
    """Bars between trainer cycles; 0 = bars / 3, so at least two cycles run."""
    ppo_steps: int = Field(default=40, ge=1)
    """PPO steps of each student a trainer cycle trains, the warm-up's folds' too
    (RLMF_TRAINER_RECIPE__PPO__TOTAL_TIMESTEPS): one iteration of the recipe's 40-step
    rollout. With mf_max_steps this is what the half-minute wall-clock budget the demo gave
    each student used to run, counted in steps, so the demo's students depend on the seed
    and not on how busy the machine was. Measured on SmolLM2 (teacher_config, 2 torch
    threads, 2 shared cores under a load of about 3.5, where the frozen base's pass took 5.0
    s a state against 1.4-2 s on a quiet machine): a market-feedback step of 32 states 1.1
    s, a PPO iteration 8.6-20.8 s; so on a quiet machine about 0.4 s and 3-8 s. The half
    minute was spent in the market-feedback phase (D_MF holds every training bar: 100-600
    states, 10 epochs of them 15-90 s) and then PPO ran its one iteration, as run.json's
    ppo_iterations 1 says (docs/trainer.md)."""
    mf_max_steps: int = Field(default=60, ge=0)
    """The market-feedback phase's steps per student (RLMF_TRAINER_RECIPE__MF_MAX_STEPS): the
    recipe's 10 epochs, but at most 60 steps of 32 states, about the 25-30 s the half minute
    left it on 2 cores (above); the warm-up's first folds, with fewer states, finish their
    epochs before."""
    quick_ppo_steps: int = Field(default=40, ge=1)
    """The same with --quick (a tiny model, 20-step rollouts: two iterations; the
    market-feedback phase runs the recipe's epochs)."""
    cycle_minutes: float = Field(default=4.0, gt=0)
    """A trainer cycle's wall-clock safety cap (RLMF_TRAINER_CYCLE_MINUTES): 6x the 30-40 s
    its student's steps take on 2 quiet cores, so a machine 2-3x slower than that (beside
    `make test`) trains the same student. Only a machine far slower reaches it; the cycle's
    decision then says budget_cut."""
    quick_cycle_minutes: float = Field(default=3.0, gt=0)
    """The same with --quick, whose 40 PPO steps on a tiny model end long before."""
    shadow_bars: int = Field(default=20, ge=0)
    """Live bars a student that passed the backtest gate trades in shadow before the trainer
    decides on it (RLMF_TRAINER_SHADOW_BARS); 0 promotes on the backtest alone."""
    quick_shadow_bars: int = Field(default=5, ge=0)
    """The same with --quick (its window is 80 bars)."""
    cycle_timeout_s: float = Field(default=2400.0, gt=0)
    """Longest the market waits for one trainer cycle's promotion decision (about 5 minutes on
    2 quiet cores); past it the teacher keeps serving, which a busy machine must not reach."""
    warm_up_timeout_s: float = Field(default=3600.0, gt=0)
    """Longest the warm-up cycle may take: it passes every history bar through the frozen base
    once (1.4-2 s a bar on 2 cores) before its folds' students train, 535 s in all on 2 quiet
    cores. Beside `make test` it took more than 1200 s (the earlier default), and the demo then
    went on with the teacher: a timeout a busy machine reaches changes the outcome."""
    regime_days: int = Field(default=450, ge=20)
    """Bars the regime-shift scenario generates (quick uses quick_bars)."""
    service_start_timeout_s: float = Field(default=240.0, gt=0)
    """Longest wait for every service to report ready."""
    drain_timeout_s: float = Field(default=300.0, gt=0)
    """Longest wait for consumers to catch up (news enriched, feedback trained on)."""
    replay_timeout_s: float = Field(default=7200.0, gt=0)
    """Longest the replay may take, pauses for trainer cycles included; past it the simulator
    is killed and the demo fails."""
    features_timeout_s: float = Field(default=60.0, gt=0)
    """The simulator's longest wait for a bar's features watermark."""
    offline_model_backtests: bool = False
    """Also backtest the teacher and every promoted student over the whole window, in the
    demo's process (not --quick). Off by default: with SmolLM2 on 2 cores each such backtest
    of 504 bars takes ~12 minutes; the report always shows each model's live stretch."""

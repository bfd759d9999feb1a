"""The student's recipe, run once per walk-forward fold: a copy of the teacher, SEP's supervised
stages, the state head's start, the market-feedback phase, then PPO + RLMF, every knob from
settings.recipe (RLMF_TRAINER_RECIPE__*).

Deterministic by default: the budget is the recipe's steps and epochs, so the same inputs,
seed and settings give the same student, bit for bit, on one machine. The cycle's wall-clock
cap (plan.TrainingClock) only cuts a run that goes far past them, and says so.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch

from services.trainer import checkpoint, ppo
from services.trainer.datasets import FeedbackRecord, feedback_in_window
from services.trainer.market_feedback import (
    feedback_set,
    labelled_history,
    shift_state_head_to_prior,
)
from services.trainer.offline_features import state_inputs
from services.trainer.plan import CycleError, CycleInterrupted, CyclePlan, TrainingClock
from services.trainer.sep_stages import run_sep_stages
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

SHAPE_FIELDS = ("trainable_top_k", "state_head", "train_lm_layers", "use_lora")
"""The ActorCriticConfig fields that make a student's shape (a student keeps its teacher's)."""


@dataclasses.dataclass
class RunControl:
    """How a caller steers one student's training: the cycle's wall-clock cap, a simulated
    kill after some PPO iterations (tests), a stop request (SIGTERM) and progress reports."""

    clock: TrainingClock
    stop_after_ppo_iterations: int | None = None
    stop_requested: Callable[[], bool] | None = None
    progress: Callable[[ppo.Progress], None] = ppo.log_progress


def ppo_args(settings: TrainerSettings) -> ppo.PPOArgs:
    """A fresh copy of the recipe's PPO hyperparameters: ppo.train derives fields in place."""
    return dataclasses.replace(settings.recipe.ppo)


def train_student(
    settings: TrainerSettings,
    plan: CyclePlan,
    records: list[FeedbackRecord],
    training: dict[str, float],
    control: RunControl,
) -> tuple[Any, int]:
    """The plan's student and the PPO iteration it resumed from: the saved one when a killed
    cycle got as far as saving it (the artifact is written atomically), else trained now.
    Training numbers go into `training`."""
    from services.policy.artifacts import load_artifact

    if plan.out.is_dir():
        return load_artifact(plan.out), 0
    _log_other_shape(settings, plan.teacher)
    # Anything drawn from torch's global generator before PPO seeds it (a fresh head, a
    # dropout) draws the same numbers whichever fold or call came before.
    torch.manual_seed(settings.seed)
    student = copy_sharing_day_cache(plan.teacher)
    # Training data only if its outcome was known by the window's end (no look-ahead).
    window_records = feedback_in_window(
        records, plan.times[plan.train_start], plan.times[plan.train_end]
    )
    run_sep_stages(settings, student, plan.teacher_dir, window_records, plan.work, training)
    args = ppo_args(settings)
    mf_set = _market_feedback_set(settings, plan, student, window_records, args, training)
    if checkpoint.load_latest(plan.work / "ppo") is None:
        # A resumed cycle did this before its first PPO checkpoint, which holds its result.
        _market_feedback_phase(settings, plan, student, mf_set, args, training, control.clock)
    resumed_from = _ppo_phase(settings, plan, student, mf_set, args, training, control)
    return student, resumed_from


def copy_sharing_day_cache(teacher: Any) -> Any:
    """The student starts as a copy of the teacher and shares its day cache: the frozen base
    is the same, so every day either of them computes serves both (and the gate)."""
    cache, teacher.day_cache = teacher.day_cache, None
    try:
        student = copy.deepcopy(teacher)
    finally:
        teacher.day_cache = cache
    if cache is not None:
        student.attach_day_cache(cache=cache)
    return student


def _log_other_shape(settings: TrainerSettings, teacher: Any) -> None:
    """A student is a copy of its teacher, so a recipe's student shape applies to teachers
    built with it (teacher_config); say so when this teacher was built otherwise."""
    config = getattr(teacher, "config", None)
    wanted = settings.recipe.student
    other = {
        name: getattr(config, name)
        for name in SHAPE_FIELDS
        if config is not None and getattr(config, name) != getattr(wanted, name)
    }
    if other:
        log.info(
            "the teacher's shape %s differs from the recipe's student (%s): the student keeps "
            "the teacher's",
            other,
            {name: getattr(wanted, name) for name in other},
        )


def _market_feedback_set(
    settings: TrainerSettings,
    plan: CyclePlan,
    student: Any,
    window_records: list[FeedbackRecord],
    args: ppo.PPOArgs,
    training: dict[str, float],
) -> ppo.FeedbackSet:
    """D_MF, encoded by the frozen base (the day cache makes that once per day), and the state
    head's standardisation fitted on its training states."""
    history = labelled_history(settings, plan, args) if settings.recipe.mf_history else []
    mf_set = feedback_set(student, window_records, args, history)
    training["mf/feedback_examples"] = len(mf_set)
    training["mf/history_examples"] = float(len(history))
    if getattr(student, "state_head", None) is not None and len(mf_set) >= 2:
        # The state head reads standardised states: fitted on this window's training states
        # (the same every run of the cycle, so a resumed one gets the same statistics).
        student.state_head.standardise(torch.stack([h[-1] for h in mf_set.hidden]))
    training["cycle/day_cache_hits"] = float(_cache_hits(student))
    return mf_set


def _market_feedback_phase(
    settings: TrainerSettings,
    plan: CyclePlan,
    student: Any,
    mf_set: ppo.FeedbackSet,
    args: ppo.PPOArgs,
    training: dict[str, float],
    clock: TrainingClock,
) -> None:
    """The state head's start at the labels' base rates, then recipe.mf_epochs of L_MF on
    D_MF alone (at most recipe.mf_max_steps steps)."""
    recipe = settings.recipe
    if recipe.state_head_prior_start:
        shift_state_head_to_prior(student, mf_set)
    fit = ppo.fit_market_feedback(
        student,
        plan.teacher,
        mf_set,
        args,
        recipe.mf_epochs,
        clock.deadline(),
        learning_rate=recipe.mf_learning_rate,
        max_steps=recipe.mf_max_steps,
    )
    clock.stop(fit.stopped_by_budget)
    training["mf/fit_steps"] = float(fit.steps)
    if fit.steps:  # no step, no loss: a NaN here would read as a diverged run at the gate
        training["mf/fit_first_loss"] = fit.first_loss
        training["mf/fit_last_loss"] = fit.last_loss


def _ppo_phase(
    settings: TrainerSettings,
    plan: CyclePlan,
    student: Any,
    mf_set: ppo.FeedbackSet,
    args: ppo.PPOArgs,
    training: dict[str, float],
    control: RunControl,
) -> int:
    """PPO + RLMF on the training bars, checkpointed under plan.work/ppo; returns the
    iteration it resumed from. A budget of 0 steps skips the phase: the student is the state
    head's start and the market-feedback phase alone (the head-only ablation)."""
    if args.total_timesteps == 0:
        training["ppo/iterations"] = 0.0
        training["ppo/stopped_by_budget"] = 0.0
        return 0
    env = _training_env(settings, plan, args)
    result = ppo.train(
        student,
        plan.teacher,
        env,
        lambda s: student.encode([s]),
        args,
        checkpoint_dir=plan.work / "ppo",
        stop_after_iterations=control.stop_after_ppo_iterations,
        feedback=mf_set,
        deadline=control.clock.deadline(),
        progress=control.progress,
        stop_requested=control.stop_requested,
    )
    control.clock.stop(result.stopped_by_budget)
    student.mark_weights_changed()
    training["ppo/iterations"] = float(result.iterations_done)
    training["ppo/stopped_by_budget"] = float(result.stopped_by_budget)
    _check_finished(plan, args, result)
    training.update(result.metrics)
    training["ppo/update_tokens_per_s"] = result.update_tokens_per_s
    return result.resumed_from


def _training_env(settings: TrainerSettings, plan: CyclePlan, args: ppo.PPOArgs) -> Any:
    """PPO's env over the training bars: the plan's ticker, or with peers one ticker an
    episode (TickerRotationEnv), so the one student learns from all of them."""
    from services.market.envs import DiscreteTradingEnv, TickerRotationEnv

    envs = [
        DiscreteTradingEnv(
            one.prices,
            ticker=one.ticker or settings.ticker,
            start=one.train_start,
            end=one.train_end,
            max_episode_steps=args.max_episode_steps,
            random_start=True,
            reward_config=settings.recipe.reward,
            **state_inputs(one.bar_features),
        )
        for one in plan.ticker_plans
    ]
    return envs[0] if len(envs) == 1 else TickerRotationEnv(envs)


def _check_finished(plan: CyclePlan, args: ppo.PPOArgs, result: ppo.PPOResult) -> None:
    """A run that stopped short of its steps, not for the cap, stopped as asked: no student."""
    if result.interrupted:
        raise CycleInterrupted(
            f"stopped on request after PPO iteration {result.iterations_done}, checkpointed in "
            f"{plan.work / 'ppo'}; the next run of this cycle resumes there"
        )
    if result.iterations_done < args.num_iterations and not result.stopped_by_budget:
        raise CycleError(
            f"stopped after PPO iteration {result.iterations_done} (as asked); rerun resumes"
        )


def _cache_hits(model: Any) -> int:
    cache = getattr(model, "day_cache", None)
    return 0 if cache is None else cache.stats.hits + cache.stats.disk_hits

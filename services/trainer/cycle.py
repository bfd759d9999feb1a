"""One RLMF cycle: newest window -> student from teacher -> SFT / RM / PPO+RLMF -> held-out
evaluation beside Buy & Hold -> gate -> promotion -> models.promotions.v1, the numbers either way.

Resumable: PPO checkpoints and per-stage markers live under work_dir/cycles/<student version>/,
and a rerun after a kill picks up where it stopped. The teacher's folder is only ever read.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from services.common.market_state import ACTIONS
from services.common.metrics import PROMOTIONS
from services.trainer import checkpoint, ppo
from services.trainer.datasets import (
    FeedbackLog,
    FeedbackRecord,
    feedback_in_window,
    market_feedback_set,
    newest_window,
    preference_pairs,
    sft_set,
)
from services.trainer.evaluate import Evaluation, evaluate
from services.trainer.gate import GateDecision, decide
from services.trainer.offline_features import BarFeatures, load_bar_features, state_inputs
from services.trainer.promotion import ClusterPromoter, EmbeddedPromoter, Promoter, PromotionOutcome
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

CURRENT = "current"
"""File in models_dir naming the serving teacher's folder (replaced atomically on promotion)."""


class CycleError(RuntimeError):
    """A cycle cannot run: say what is missing."""


@dataclass
class CycleResult:
    student_version: str
    teacher_version: str
    promoted: bool
    reason: str
    failed_guards: list[str]
    student_metrics: dict[str, float]
    teacher_metrics: dict[str, float]
    buy_and_hold_metrics: dict[str, float]
    artifact_path: str
    window_start: datetime
    window_end: datetime
    eval_start: datetime
    eval_end: datetime
    resumed_from: int = 0
    training: dict[str, float] = field(default_factory=dict)
    promotion_detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()
        }


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def load_prices(settings: TrainerSettings) -> pd.DataFrame:
    if settings.prices_csv is not None:
        from services.market.market_data import load_prices_csv

        return load_prices_csv(settings.prices_csv)
    from services.market.regime_market import generate_market, load_params

    frame, _ = generate_market(
        load_params(settings.market_scenario), settings.market_days, settings.market_seed
    )
    return frame


def current_teacher(settings: TrainerSettings) -> Path:
    if settings.teacher_dir is not None:
        return settings.teacher_dir
    pointer = settings.models_dir / CURRENT
    if not pointer.is_file():
        raise CycleError(
            "no teacher: set RLMF_TRAINER_TEACHER_DIR or write the teacher folder's name into "
            f"{pointer} "
            "(`rlmf policy init` makes a version-0 artifact)"
        )
    return settings.models_dir / pointer.read_text().strip()


def set_current(models_dir: Path, folder: Path) -> None:
    """Point `current` at `folder`, atomically (temp file + rename)."""
    fd, tmp = tempfile.mkstemp(prefix=".current-", dir=models_dir)
    with os.fdopen(fd, "w") as handle:
        handle.write(folder.name + "\n")
    os.replace(tmp, models_dir / CURRENT)


def student_version(teacher_version: str, window_end: pd.Timestamp) -> str:
    """Deterministic per (teacher, window), so a resumed cycle finds its own checkpoints."""
    tag = hashlib.sha1(teacher_version.encode()).hexdigest()[:6]
    return f"s{window_end:%Y%m%d}-{tag}"


def make_promoter(settings: TrainerSettings) -> Promoter | None:
    if settings.promotion == "embedded":
        return EmbeddedPromoter(settings.policy_url)
    if settings.promotion == "cluster":
        return ClusterPromoter(
            release=settings.helm_release,
            chart=settings.helm_chart,
            namespace=settings.namespace,
            storage_uri=lambda folder: f"pvc://{settings.models_claim}/{folder.name}",
            ready_timeout_s=settings.ready_timeout_s,
        )
    return None


def ppo_args(settings: TrainerSettings) -> ppo.PPOArgs:
    """A fresh copy of the settings' PPO hyperparameters: ppo.train derives fields in place."""
    return dataclasses.replace(settings.ppo)


def feedback_set(student: Any, records: list[FeedbackRecord], args: ppo.PPOArgs) -> ppo.FeedbackSet:
    """RLMF addition: D_MF for PPO's L_MF from the window's feedback records, encoded once by
    the student's frozen base. Empty when L_MF has no weight or samples no D_MF."""
    used = records if args.mf_coef and args.mf_minibatch_size else []
    examples = market_feedback_set(used, args.mf_flat_threshold)
    inputs = [student.encode_texts(ex.prefix, [ex.suffix]) for ex in examples]
    return ppo.encode_feedback(student, inputs, [ACTIONS.index(ex.label) for ex in examples])


# ---------------------------------------------------------------------------------------------
# The cycle
# ---------------------------------------------------------------------------------------------


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

    @property
    def times(self) -> pd.Index:
        return self.prices.index

    @property
    def teacher_version(self) -> str:
        return str(self.teacher.model_version)


def run_cycle(
    settings: TrainerSettings,
    *,
    prices: pd.DataFrame | None = None,
    feedback: FeedbackLog | list[FeedbackRecord] | None = None,
    promoter: Promoter | None = None,
    producer: Any = None,
    stop_after_ppo_iterations: int | None = None,
) -> CycleResult:
    """Run one cycle on the newest window of `prices` (default: from settings). `promoter`
    defaults to the one settings name; `producer` (a services.common.bus.Producer) publishes
    models.promotions.v1 when given. `stop_after_ppo_iterations` simulates a kill (tests)."""
    _seed_torch(settings)
    prices = load_prices(settings) if prices is None else prices
    records = feedback.records() if isinstance(feedback, FeedbackLog) else list(feedback or [])
    plan = plan_cycle(settings, prices)
    training = _feature_stats(plan.bar_features)
    student, resumed_from = _student(settings, plan, records, training, stop_after_ppo_iterations)
    student_eval = _evaluate_held_out(settings, plan, student)
    teacher_eval = _evaluate_held_out(settings, plan, plan.teacher)
    _save_student(settings, plan, student, student_eval)
    gate = _gate(settings, plan, student_eval, teacher_eval, training)
    promoted, detail = _promote(settings, plan, gate, promoter)
    cycle = _result(
        plan,
        gate,
        promoted=promoted,
        detail=detail,
        evaluations=(student_eval, teacher_eval),
        resumed_from=resumed_from,
        training=training,
    )
    if producer is not None:
        publish(producer, cycle)
    checkpoint.clear(plan.work / "ppo")
    log.info("cycle done: %s", detail, extra={"fields": cycle.to_dict()})
    return cycle


def _seed_torch(settings: TrainerSettings) -> None:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    torch.manual_seed(settings.seed)


def plan_cycle(settings: TrainerSettings, prices: pd.DataFrame) -> CyclePlan:
    """The newest window of `prices`, the teacher, the student's version and folders, and the
    bars' features."""
    from services.policy.artifacts import load_artifact

    # Walk-forward over bars: PPO steps on bars train_start..train_end (outcomes up to
    # train_end's close); the gate's held-out decisions are on bars train_end..last, later.
    window = newest_window(list(range(len(prices))), settings.train_days + 1, settings.eval_days)
    train_start, train_end, last = window.train[0], window.train[-1], window.evaluate[-1]
    teacher_dir = current_teacher(settings)
    teacher = load_artifact(teacher_dir)
    version = student_version(teacher.model_version, prices.index[train_end])
    log.info(
        "cycle: teacher %s -> student %s, window %s..%s, held out ..%s",
        teacher.model_version,
        version,
        prices.index[train_start].date(),
        prices.index[train_end].date(),
        prices.index[last].date(),
    )
    return CyclePlan(
        prices=prices,
        train_start=train_start,
        train_end=train_end,
        last=last,
        teacher_dir=teacher_dir,
        teacher=teacher,
        version=version,
        out=settings.models_dir / version,
        work=settings.work_dir / "cycles" / version,
        bar_features=load_bar_features(settings.features_source, prices, settings.ticker),
    )


def _feature_stats(bar_features: BarFeatures | None) -> dict[str, float]:
    """The training metrics a cycle starts with: how many Feast columns its states carry."""
    if bar_features is None:
        return {}
    return {"features/feast_columns": float(bar_features.numeric.shape[1])}


def _student(
    settings: TrainerSettings,
    plan: CyclePlan,
    records: list[FeedbackRecord],
    training: dict[str, float],
    stop_after_ppo_iterations: int | None,
) -> tuple[Any, int]:
    """The student and the PPO iteration it resumed from: the saved one when a killed cycle
    got as far as saving it (the artifact is written atomically), else trained now."""
    from services.policy.artifacts import load_artifact

    if plan.out.is_dir():
        return load_artifact(plan.out), 0
    student = copy.deepcopy(plan.teacher)
    # Training data only if its outcome was known by the window's end (no look-ahead).
    window_records = feedback_in_window(
        records, plan.times[plan.train_start], plan.times[plan.train_end]
    )
    _supervised(settings, student, plan.teacher_dir, window_records, plan.work, training)
    resumed_from = _train_ppo(
        settings, plan, student, window_records, training, stop_after_ppo_iterations
    )
    return student, resumed_from


def _train_ppo(
    settings: TrainerSettings,
    plan: CyclePlan,
    student: Any,
    window_records: list[FeedbackRecord],
    training: dict[str, float],
    stop_after_ppo_iterations: int | None,
) -> int:
    """PPO + RLMF on the training bars; returns the iteration it resumed from."""
    from services.market.envs import DiscreteTradingEnv

    args = ppo_args(settings)
    mf_set = feedback_set(student, window_records, args)
    training["mf/feedback_examples"] = len(mf_set)
    env = DiscreteTradingEnv(
        plan.prices,
        ticker=settings.ticker,
        start=plan.train_start,
        end=plan.train_end,
        max_episode_steps=args.max_episode_steps,
        random_start=True,
        **state_inputs(plan.bar_features),
    )
    result = ppo.train(
        student,
        plan.teacher,
        env,
        lambda s: student.encode([s]),
        args,
        checkpoint_dir=plan.work / "ppo",
        stop_after_iterations=stop_after_ppo_iterations,
        feedback=mf_set,
    )
    student.mark_weights_changed()
    if result.iterations_done < args.num_iterations:
        raise CycleError(
            f"stopped after PPO iteration {result.iterations_done} (as asked); rerun resumes"
        )
    training.update({k: v for k, v in result.metrics.items()})
    training["ppo/update_tokens_per_s"] = result.update_tokens_per_s
    return result.resumed_from


def _evaluate_held_out(settings: TrainerSettings, plan: CyclePlan, model: Any) -> Evaluation:
    """`model` trades the held-out bars train_end..last (student and teacher the same ones)."""
    return evaluate(
        model,
        plan.prices,
        plan.train_end,
        plan.last,
        ticker=settings.ticker,
        seed=settings.seed,
        features=plan.bar_features,
    )


def _save_student(
    settings: TrainerSettings, plan: CyclePlan, student: Any, student_eval: Evaluation
) -> None:
    """The student's artifact, once: a resumed cycle that saved it already keeps that one."""
    from services.policy.artifacts import REWARD_MODEL, save_artifact

    if plan.out.is_dir():
        return
    reward_model = plan.work / REWARD_MODEL  # trained by _supervised when rm_steps > 0
    save_artifact(
        student,
        plan.out,
        {
            "version": plan.version,
            "parent_version": plan.teacher_version,
            "base_model": plan.teacher.manifest.base_model,
            "training_window": {
                "start": plan.times[plan.train_start].to_pydatetime(),
                "end": plan.times[plan.train_end].to_pydatetime(),
            },
            "eval_metrics": {k: v for k, v in student_eval.policy.items() if math.isfinite(v)},
            "notes": (
                f"RLMF cycle: PPO {settings.ppo.total_timesteps} steps, "
                f"mf_coef {settings.ppo.mf_coef}"
            ),
        },
        # A reward model the cycle trained travels with the student: the policy server
        # ranks the student's explanations with it (best-of-n).
        reward_model=reward_model if reward_model.is_dir() else None,
    )


def _gate(
    settings: TrainerSettings,
    plan: CyclePlan,
    student_eval: Evaluation,
    teacher_eval: Evaluation,
    training: dict[str, float],
) -> GateDecision:
    """The gate on the held-out metrics, the saved artifact's manifest and the training
    numbers (a NaN loss refuses)."""
    from services.policy.artifacts import ArtifactError, verify_artifact

    manifest_error = None
    try:
        verify_artifact(plan.out)
    except ArtifactError as exc:
        manifest_error = str(exc)
    finite = all(math.isfinite(v) for v in training.values())
    return decide(student_eval.policy, teacher_eval.policy, settings.gate, manifest_error, finite)


def _promote(
    settings: TrainerSettings, plan: CyclePlan, gate: GateDecision, promoter: Promoter | None
) -> tuple[bool, str]:
    """Promote a student the gate passed and point `current` at it; count the outcome.
    Returns whether the student now serves (is the teacher) and the reason in words."""
    promoter = promoter if promoter is not None else make_promoter(settings)
    promotion: PromotionOutcome | None = None
    if gate.promoted and promoter is not None:
        promotion = promoter.promote(plan.out, plan.version)
    promoted = promotion.promoted if promotion is not None else gate.promoted
    detail = f"{gate.reason}; {promotion.detail}" if promotion is not None else gate.reason
    if promoted:
        set_current(settings.models_dir, plan.out)
    PROMOTIONS.labels(_outcome(gate.promoted, promotion)).inc()
    return promoted, detail


def _result(
    plan: CyclePlan,
    gate: GateDecision,
    *,
    promoted: bool,
    detail: str,
    evaluations: tuple[Evaluation, Evaluation],
    resumed_from: int,
    training: dict[str, float],
) -> CycleResult:
    """The cycle's numbers and decision, as models.promotions.v1 and the CLI report them."""
    student_eval, teacher_eval = evaluations
    return CycleResult(
        student_version=plan.version,
        teacher_version=plan.teacher_version,
        promoted=promoted,
        reason=detail,
        failed_guards=gate.failed_guards,
        student_metrics=student_eval.policy,
        teacher_metrics=teacher_eval.policy,
        buy_and_hold_metrics=student_eval.buy_and_hold,
        artifact_path=str(plan.out),
        window_start=plan.times[plan.train_start].to_pydatetime(),
        window_end=plan.times[plan.train_end].to_pydatetime(),
        eval_start=plan.times[plan.train_end].to_pydatetime(),
        eval_end=plan.times[plan.last].to_pydatetime(),
        resumed_from=resumed_from,
        training=training,
        promotion_detail=detail,
    )


def _supervised(
    settings: TrainerSettings,
    student: Any,
    teacher_dir: Path,
    records: list[FeedbackRecord],
    work: Path,
    training: dict[str, float],
) -> None:
    """SFT on correct answers, then the reward model on reflection pairs; each stage once."""
    from services.policy.artifacts import REWARD_MODEL
    from services.policy.prompt import prompt_prefix
    from services.trainer.reward_model import train_reward_model
    from services.trainer.sft import run_sft

    if not records:
        return
    done = work / "sft.pt"
    if settings.sft_steps and done.is_file():
        student.load_state_dict(torch.load(done, map_location="cpu"), strict=False)
    elif settings.sft_steps:
        rows = sft_set(
            records, student, prompt_prefix(), settings.max_sft_examples, settings.explain_tokens
        )
        report = run_sft(
            student,
            rows,
            max_steps=settings.sft_steps,
            learning_rate=settings.sft_learning_rate,
            batch_size=4,
            seed=settings.seed,
        )
        training.update({"sft/steps": report.steps, "sft/examples": report.examples})
        if report.steps:  # no correct answers in the window: no steps and no loss to report
            training["sft/loss"] = report.loss
        work.mkdir(parents=True, exist_ok=True)
        trainable = {n: p.detach() for n, p in student.named_parameters() if p.requires_grad}
        torch.save(trainable, work / ".sft.tmp")
        os.replace(work / ".sft.tmp", done)
    rm_dir = work / REWARD_MODEL
    if settings.rm_steps and not rm_dir.is_dir():
        pairs, stats = preference_pairs(
            records,
            student,
            prompt_prefix(),
            settings.max_pairs,
            settings.explain_tokens,
            settings.reflection_tries,
            settings.seed,
        )
        training.update(
            {"rm/wrong": stats.wrong, "rm/pairs": stats.pairs, "rm/unresolved": stats.unresolved}
        )
        report = train_reward_model(
            teacher_dir,
            pairs,
            rm_dir,
            max_steps=settings.rm_steps,
            learning_rate=settings.rm_learning_rate,
            batch_size=4,
            seed=settings.seed,
        )
        training["rm/steps"] = report.steps
        if report.steps:  # no resolved pair: no steps, and no NaN loss for the gate to refuse
            training["rm/loss"] = report.loss


def _outcome(gate_passed: bool, promotion: PromotionOutcome | None) -> str:
    """The label of rlmf_promotions_total: promoted, rejected (by the gate), rolled_back or
    failed (the gate passed but the promotion itself did not take)."""
    if not gate_passed:
        return "rejected"
    if promotion is None or promotion.promoted:
        return "promoted"  # promotion "none": the gate's word is the promotion
    return "rolled_back" if promotion.rolled_back else "failed"


def publish(producer: Any, cycle: CycleResult) -> None:
    """models.promotions.v1 with the decision and every number, promoted or not."""
    from services.common.envelope import set_time
    from services.common.pb.rlmf.v1 import payloads_pb2 as pb
    from services.common.topics import MODELS_PROMOTIONS

    message = pb.ModelPromotion(
        student_version=cycle.student_version,
        teacher_version=cycle.teacher_version,
        promoted=cycle.promoted,
        reason=cycle.reason,
        failed_guards=cycle.failed_guards,
        artifact_path=cycle.artifact_path,
    )
    for target, values in (
        (message.student_metrics, cycle.student_metrics),
        (message.teacher_metrics, cycle.teacher_metrics),
        (message.buy_and_hold_metrics, cycle.buy_and_hold_metrics),
    ):
        target.update({k: float(v) for k, v in values.items()})
    set_time(message.window_start, cycle.window_start)
    set_time(message.window_end, cycle.window_end)
    producer.publish(
        MODELS_PROMOTIONS,
        message,
        key=cycle.student_version,
        event_time=cycle.eval_end if cycle.eval_end.tzinfo else cycle.eval_end.replace(tzinfo=UTC),
    )
    producer.flush()

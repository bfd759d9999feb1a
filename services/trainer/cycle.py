"""One RLMF cycle: newest window -> student from teacher by the recipe (services/trainer/
recipe.py: SFT / RM / market feedback / PPO+RLMF) -> held-out evaluation beside Buy & Hold ->
gate -> promotion -> models.promotions.v1, the numbers either way. This module orchestrates;
the training itself is the recipe's.

Resumable: PPO checkpoints and per-stage markers live under work_dir/cycles/<student version>/,
and a rerun after a kill picks up where it stopped. The teacher's folder is only ever read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from services.common.device import resolve_placement
from services.common.metrics import PROMOTIONS
from services.market.walk_forward import WalkForwardSplit, walk_forward_folds
from services.policy.approval import withdraw_approval
from services.trainer import checkpoint, market_source, ppo
from services.trainer.approvals import approve_promotion, gate_evidence, load_teacher
from services.trainer.cluster_shadow import PointerStager
from services.trainer.datasets import FeedbackLog, FeedbackRecord
from services.trainer.evaluate import (
    Evaluation,
    evaluate,
    held_out_returns,
    pool_folds,
    pool_tickers,
)
from services.trainer.gate import GateDecision, HeldOutReturns, decide
from services.trainer.offline_features import (
    BarFeatures,
    first_bar_with_features,
    load_bar_features,
)
from services.trainer.peers import PeerBars, with_peers
from services.trainer.plan import CycleError as CycleError
from services.trainer.plan import CycleInterrupted as CycleInterrupted
from services.trainer.plan import CyclePlan, TrainingClock, student_version
from services.trainer.promotion import ClusterPromoter, EmbeddedPromoter, Promoter, PromotionOutcome
from services.trainer.promotions_topic import publish_decision
from services.trainer.recipe import RunControl, train_student
from services.trainer.serving_pointer import CURRENT as CURRENT
from services.trainer.serving_pointer import set_current as set_current
from services.trainer.settings import TrainerSettings
from services.trainer.shadow import ShadowFiles, ShadowPromoter, stage_candidate
from services.trainer.warm_up import warm_up_settings

log = logging.getLogger(__name__)


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
    outcome: str = ""
    """promoted, rejected (by the gate), rolled_back or failed: rlmf_promotions_total's label."""
    inputs_sha256: str = ""
    """sha256 of the bars and the states' features and news the cycle trained and evaluated on."""
    torch_threads: int = 0
    sharpe_test: dict[str, float] = field(default_factory=dict)
    """The gate's paired bootstrap: sharpe_diff, its interval, p_value, confidence, holdout_bars."""
    budget_cut: bool = False
    """The wall-clock cap (RLMF_TRAINER_CYCLE_MINUTES) stopped some training short of the
    recipe's steps and epochs: this student is not the one the seed alone makes."""
    tickers: list[str] = field(default_factory=list)
    """Every ticker the student trained and was judged on, the cycle's own first."""

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()
        }


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def load_prices(settings: TrainerSettings) -> pd.DataFrame:
    return market_source.load_prices(settings)  # csv, kafka history or synthetic (asked for)


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


def make_promoter(settings: TrainerSettings) -> Promoter | None:
    if settings.promotion == "embedded":
        return EmbeddedPromoter(settings.policy_url)
    if settings.promotion == "cluster":
        return ClusterPromoter.from_settings(settings)  # canary, live check, then promote
    return None


def run_cycle(
    settings: TrainerSettings,
    *,
    prices: pd.DataFrame | None = None,
    feedback: FeedbackLog | list[FeedbackRecord] | None = None,
    promoter: Promoter | None = None,
    producer: Any = None,
    stop_after_ppo_iterations: int | None = None,
    bar_features: BarFeatures | None = None,
    stop_requested: Callable[[], bool] | None = None,
    progress: Callable[[ppo.Progress], None] = ppo.log_progress,
    peers: Mapping[str, pd.DataFrame] | None = None,
    warm_up: bool = False,
) -> CycleResult:
    """Run one cycle on the newest window of `prices` (default: from settings). `promoter`
    defaults to the one settings name; `producer` (a services.common.bus.Producer) publishes
    models.promotions.v1 when given. `stop_after_ppo_iterations` simulates a kill (tests).
    `bar_features` gives the states' features and news directly (a benchmark's synthetic
    news) instead of reading them as settings.features_source says. `stop_requested` (the
    service's SIGTERM) stops PPO after its iteration, checkpointed: CycleInterrupted.
    `progress` hears from PPO at least every 30 s (default: a log line; the CLI adds a bar).
    `peers`: other tickers' bars; the one student then learns from every ticker and the gate
    judges it on all of them, pooled (plan_cycle, evaluate.pool_tickers). `warm_up`: the
    warm-up cycle on the history before live trading, with its longer held-out block
    (services/trainer/warm_up.py)."""
    _seed_torch(settings)
    prices = load_prices(settings) if prices is None else prices
    if warm_up:
        if bar_features is None:
            bar_features = load_bar_features(settings.features_source, prices, settings.ticker)
        usable = len(prices) - first_bar_with_features(bar_features)
        settings = warm_up_settings(settings, usable)
        log.info(
            "warm-up cycle on %d bars: %d held out in %d walk-forward fold(s)",
            usable, settings.eval_days, settings.walk_forward_folds,
        )  # fmt: skip
    records = feedback.records() if isinstance(feedback, FeedbackLog) else list(feedback or [])
    plan = plan_cycle(settings, prices, bar_features, peers)
    training = _feature_stats(plan.bar_features)
    # One wall-clock cap for the whole cycle, every fold's training together.
    clock = TrainingClock(settings.cycle_minutes)
    control = RunControl(clock, None, stop_requested, progress)
    earlier = [_earlier_fold(settings, fold, records, control) for fold in plan.earlier_folds]
    control = dataclasses.replace(control, stop_after_ppo_iterations=stop_after_ppo_iterations)
    student, resumed_from = train_student(settings, plan, records, training, control)
    student_eval = _evaluate_held_out(settings, plan, student)
    teacher_eval = _evaluate_held_out(settings, plan, plan.teacher)
    _save_student(settings, plan, student, student_eval)
    if earlier:
        training["gate/walk_forward_folds"] = float(len(earlier) + 1)
        student_eval = pool_folds([*(s for s, _ in earlier), student_eval])
        teacher_eval = pool_folds([*(t for _, t in earlier), teacher_eval])
    gate = _gate(settings, plan, student_eval, teacher_eval, training)
    returns = held_out_returns(student_eval, teacher_eval)
    promoted, detail, outcome = _promote(settings, plan, gate, promoter, returns)
    cycle = _result(
        plan,
        gate,
        promoted=promoted,
        detail=detail,
        evaluations=(student_eval, teacher_eval),
        resumed_from=resumed_from,
        training=training,
    )
    cycle.outcome = outcome
    cycle.budget_cut = clock.cut
    if producer is not None:
        publish_decision(producer, cycle)
    checkpoint.clear(plan.work / "ppo")
    log.info("cycle done: %s", detail, extra={"fields": cycle.to_dict()})
    return cycle


def _seed_torch(settings: TrainerSettings) -> None:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    torch.manual_seed(settings.seed)


def plan_cycle(
    settings: TrainerSettings,
    prices: pd.DataFrame,
    bar_features: BarFeatures | None = None,
    peers: Mapping[str, pd.DataFrame] | None = None,
) -> CyclePlan:
    """The newest window of `prices` (settings.ticker's bars), the teacher, the student's
    version and folders, and the bars' features. `peers`: other tickers' bars, which the one
    student learns from and is judged on too, each over the same stretch of time."""
    features = bar_features or load_bar_features(settings.features_source, prices, settings.ticker)
    # The expanding window starts at the first bar whose state carries features or news: bars
    # before it (years of a CSV the features service never saw) would teach states that the
    # policy is never served, at the frozen base's full cost per day.
    first = first_bar_with_features(features)
    # Walk-forward over bars (López de Prado): PPO steps on bars train_start..train_end, whose
    # outcomes are known by train_end's close; then a purge and an embargo; the gate's held-out
    # decisions are on bars eval_start..last, all later than anything trained on. With folds,
    # each fold is such a split of the bars up to its own end.
    splits = walk_forward_folds(
        len(prices) - first,
        settings.eval_days,
        settings.embargo_days,
        settings.train_days,
        settings.walk_forward_folds,
        max_train=None if settings.expanding_window else settings.train_days,
    )
    train_start, train_end, eval_start, last = _bars(splits[-1], first)
    teacher_dir = current_teacher(settings)
    placement = resolve_placement(settings.device)
    teacher = load_teacher(settings, teacher_dir, placement.dtype)
    teacher.to(placement.device)
    teacher.attach_day_cache(settings.day_cache_memory_mb << 20, settings.day_cache_dir)
    plan = CyclePlan(
        prices=prices,
        train_start=train_start,
        train_end=train_end,
        last=last,
        teacher_dir=teacher_dir,
        teacher=teacher,
        version="",
        out=settings.models_dir,
        work=settings.work_dir,
        bar_features=features,
        eval_start=eval_start,
        ticker=settings.ticker,
    )
    peer_bars = _peer_bars(settings, plan, peers or {})
    plan = with_peers(plan, peer_bars, settings.train_days)
    plan = _named(plan, settings)
    log.info(
        "cycle: teacher %s -> student %s of %s, window %s..%s, held out ..%s",
        teacher.model_version,
        plan.version,
        ", ".join(plan.tickers),
        prices.index[train_start].date(),
        prices.index[train_end].date(),
        prices.index[last].date(),
    )
    folds = _earlier_fold_plans(plan, splits[:-1], first)
    return dataclasses.replace(
        plan,
        earlier_folds=tuple(with_peers(fold, peer_bars, settings.train_days) for fold in folds),
    )


def _named(plan: CyclePlan, settings: TrainerSettings) -> CyclePlan:
    """`plan` and its peers with the cycle's inputs hash, the student's version that names it,
    and the folders named after the version."""
    inputs = inputs_sha256(plan)
    version = student_version(
        plan.teacher.model_version,
        plan.prices.index[plan.train_end],
        settings.seed,
        settings.recipe.sha256(),
        tuple(plan.tickers),
        inputs,
    )

    def name(one: CyclePlan) -> CyclePlan:
        return dataclasses.replace(
            one,
            version=version,
            out=settings.models_dir / version,
            work=settings.work_dir / "cycles" / version,
            inputs_sha256=inputs,
        )

    return dataclasses.replace(name(plan), peers=tuple(name(peer) for peer in plan.peers))


def _peer_bars(
    settings: TrainerSettings, plan: CyclePlan, peers: Mapping[str, pd.DataFrame]
) -> PeerBars:
    """Each peer's bars up to the plan's last bar, with the features its states carry."""
    out = {}
    for ticker, bars in peers.items():
        known = bars[bars.index <= plan.times[plan.last]]
        if ticker == plan.ticker or len(known) < 2:
            continue
        out[ticker] = (known, load_bar_features(settings.features_source, known, ticker))
    return out


def _bars(split: WalkForwardSplit, first: int) -> tuple[int, int, int, int]:
    """train_start, train_end, eval_start and last of `split` as bar indices of the prices."""
    return (
        first + split.train.start,
        first + split.train.stop,
        first + split.holdout.start,
        first + split.holdout.stop,
    )


def _earlier_fold_plans(
    plan: CyclePlan, splits: list[WalkForwardSplit], first: int
) -> tuple[CyclePlan, ...]:
    """The folds before the last as plans of their own: the same teacher, prices and features;
    their students are only evaluated, never saved (`out` is never written)."""
    plans = []
    for number, split in enumerate(splits, start=1):
        train_start, train_end, eval_start, last = _bars(split, first)
        work = plan.work / f"fold-{number}"
        plans.append(
            dataclasses.replace(
                plan,
                train_start=train_start,
                train_end=train_end,
                eval_start=eval_start,
                last=last,
                version=f"{plan.version}-fold-{number}",
                out=work / "student",
                work=work,
            )
        )
        log.info(
            "walk-forward fold %d of %d: trains ..%s, held out %s..%s",
            number,
            len(splits) + 1,
            plan.times[train_end].date(),
            plan.times[eval_start].date(),
            plan.times[last].date(),
        )
    return tuple(plans)


def _earlier_fold(
    settings: TrainerSettings,
    fold: CyclePlan,
    records: list[FeedbackRecord],
    control: RunControl,
) -> tuple[Evaluation, Evaluation]:
    """Train a walk-forward fold's student with the cycle's recipe (and under its one cap),
    and evaluate it and the teacher on the fold's held-out bars. Its training numbers stay in
    the log."""
    training: dict[str, float] = {}
    student, _ = train_student(settings, fold, records, training, control)
    evaluations = (
        _evaluate_held_out(settings, fold, student),
        _evaluate_held_out(settings, fold, fold.teacher),
    )
    checkpoint.clear(fold.work / "ppo")
    log.info(
        "walk-forward fold %s: student Sharpe %.3f, teacher %.3f over %d bars",
        fold.version,
        evaluations[0].policy["sharpe"],
        evaluations[1].policy["sharpe"],
        len(evaluations[0].daily_returns),
        extra={"fields": {"training": training}},
    )
    return evaluations


def _feature_stats(bar_features: BarFeatures | None) -> dict[str, float]:
    """The training metrics a cycle starts with: how many Feast columns its states carry."""
    if bar_features is None:
        return {}
    return {"features/feast_columns": float(bar_features.numeric.shape[1])}


def _evaluate_held_out(settings: TrainerSettings, plan: CyclePlan, model: Any) -> Evaluation:
    """`model` trades the held-out bars eval_start..last of each of the plan's tickers (student
    and teacher the same ones), pooled as an equal-weight book of the tickers."""
    return pool_tickers(
        [
            evaluate(
                model,
                one.prices,
                one.eval_start,
                one.last,
                ticker=one.ticker,
                seed=settings.seed,
                features=one.bar_features,
            )
            for one in plan.ticker_plans
        ]
    )


def _save_student(
    settings: TrainerSettings, plan: CyclePlan, student: Any, student_eval: Evaluation
) -> None:
    """The student's artifact, once: a resumed cycle that saved it already keeps that one."""
    from services.policy.artifacts import REWARD_MODEL, save_artifact

    if plan.out.is_dir():
        return
    reward_model = plan.work / REWARD_MODEL  # trained by run_sep_stages when rm_steps > 0
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
                f"RLMF cycle: PPO {settings.recipe.ppo.total_timesteps} steps, "
                f"mf_coef {settings.recipe.ppo.mf_coef}, seed {settings.seed}, "
                f"recipe {settings.recipe.sha256()[:8]}"
            ),
        },
        # A reward model the cycle trained travels with the student: the policy server
        # ranks the student's explanations with it (best-of-n).
        reward_model=reward_model if reward_model.is_dir() else None,
        signing_key=settings.artifact_signing_key_file,
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
    return decide(
        student_eval.policy,
        teacher_eval.policy,
        settings.gate,
        manifest_error,
        finite,
        returns=held_out_returns(student_eval, teacher_eval),
    )


def _promote(
    settings: TrainerSettings,
    plan: CyclePlan,
    gate: GateDecision,
    promoter: Promoter | None,
    returns: HeldOutReturns | None = None,
) -> tuple[bool, str, str]:
    """Promote a student the gate passed and point `current` at it; count the outcome.
    With shadow bars set, the student instead becomes the candidate and trades in shadow
    (services/trainer/shadow.py decides later). Returns whether the student now serves (is the
    teacher), the reason in words and the outcome's label."""
    promoter = promoter if promoter is not None else make_promoter(settings)
    if gate.promoted and settings.shadow_bars and returns is not None:
        return _stage(settings, plan, gate, promoter, returns)
    promotion: PromotionOutcome | None = None
    if gate.promoted:
        # Approved before the server is asked: it serves only an approved version. A
        # promotion that then does not take withdraws the approval.
        try:
            approve_promotion(settings, plan.out, gate_evidence(gate))
        except CycleError as exc:
            promotion = PromotionOutcome(False, str(exc))
    if gate.promoted and promoter is not None and promotion is None:
        promotion = promoter.promote(plan.out, plan.version)
    promoted = promotion.promoted if promotion is not None else gate.promoted
    detail = f"{gate.reason}; {promotion.detail}" if promotion is not None else gate.reason
    if promoted:
        set_current(settings.models_dir, plan.out)
    elif gate.promoted:
        withdraw_approval(plan.out)
    outcome = _outcome(gate.promoted, promotion)
    PROMOTIONS.labels(outcome).inc()
    return promoted, detail, outcome


def _stage(
    settings: TrainerSettings,
    plan: CyclePlan,
    gate: GateDecision,
    promoter: Promoter | None,
    returns: HeldOutReturns,
) -> tuple[bool, str, str]:
    """The student passed the backtest gate: stage it as the candidate (outcome "candidate"):
    through the policy server's route on one machine, by the pointer file on a cluster."""
    stager = shadow_promoter(settings, promoter)
    staged = stage_candidate(
        ShadowFiles(settings.work_dir),
        stager,
        folder=plan.out,
        version=plan.version,
        teacher_version=plan.teacher_version,
        returns=returns,
        needed=settings.shadow_bars,
        p_value=gate.p_value,
    )
    outcome = "candidate" if staged.promoted else "failed"
    PROMOTIONS.labels(outcome).inc()
    return False, f"{gate.reason}; {staged.detail}", outcome


def shadow_promoter(settings: TrainerSettings, promoter: Promoter | None) -> ShadowPromoter:
    """Who stages, promotes and retires a candidate: the embedded promoter (the policy
    server's routes), or on a cluster the pointer file and the cluster promoter."""
    if isinstance(promoter, EmbeddedPromoter):
        return promoter
    if settings.promotion == "cluster" and promoter is not None:
        return PointerStager(settings.models_dir, promoter)
    raise CycleError("shadow trading needs embedded or cluster promotion (RLMF_TRAINER_PROMOTION)")


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
        eval_start=plan.times[plan.held_out_start].to_pydatetime(),
        eval_end=plan.times[plan.last].to_pydatetime(),
        resumed_from=resumed_from,
        training=training,
        promotion_detail=detail,
        sharpe_test=_sharpe_test(gate),
        inputs_sha256=plan.inputs_sha256,
        torch_threads=torch.get_num_threads(),
        tickers=plan.tickers,
    )


def inputs_sha256(plan: CyclePlan) -> str:
    """The cycle's data as one hash: the bars up to its last, and the features, sentiment and
    news its states carry. Two runs of one seed that train different students either differ
    here (the data did) or not (the arithmetic did: thread counts, kernels)."""
    digest = hashlib.sha256()
    for one in plan.ticker_plans:  # a single ticker's hash is what it always was
        frames = [one.prices]
        if one.bar_features is not None:
            f = one.bar_features
            frames += [f.numeric, f.sentiment.to_frame("sentiment"), f.summaries.to_frame("news")]
        for frame in frames:
            rows = frame.iloc[: one.last + 1]
            digest.update(pd.util.hash_pandas_object(rows).to_numpy().tobytes())
    return digest.hexdigest()


def _sharpe_test(gate: GateDecision) -> dict[str, float]:
    """The bootstrap's interval and p-value, where the held-out returns allowed the test."""
    fields = ("sharpe_diff", "sharpe_diff_low", "sharpe_diff_high", "p_value", "confidence")
    test = {name: getattr(gate, name) for name in fields if getattr(gate, name) is not None}
    return {**test, "holdout_bars": float(gate.holdout_bars)} if test else {}


def _outcome(gate_passed: bool, promotion: PromotionOutcome | None) -> str:
    """The label of rlmf_promotions_total: promoted, rejected (by the gate), rolled_back or
    failed (the gate passed but the promotion itself did not take)."""
    if not gate_passed:
        return "rejected"
    if promotion is None or promotion.promoted:
        return "promoted"  # promotion "none": the gate's word is the promotion
    return "rolled_back" if promotion.rolled_back else "failed"

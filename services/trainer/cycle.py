"""One RLMF cycle: newest window -> student from teacher -> SFT / RM / PPO+RLMF -> held-out
evaluation beside Buy & Hold -> gate -> promotion -> models.promotions.v1, the numbers either way.

Resumable: PPO checkpoints and per-stage markers live under work_dir/cycles/<student version>/,
and a rerun after a kill picks up where it stopped. The teacher's folder is only ever read.
"""

from __future__ import annotations

import copy
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
from services.trainer.evaluate import evaluate
from services.trainer.gate import GateConfig, decide
from services.trainer.offline_features import load_bar_features, state_inputs
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
    return ppo.PPOArgs(
        seed=settings.seed,
        total_timesteps=max(settings.ppo_steps, settings.ppo_num_steps),
        learning_rate=settings.ppo_learning_rate,
        num_steps=settings.ppo_num_steps,
        minibatch_size=settings.ppo_minibatch_size,
        gradient_accumulation_steps=settings.ppo_gradient_accumulation_steps,
        update_epochs=settings.ppo_update_epochs,
        mf_coef=settings.mf_coef,
        mf_minibatch_size=settings.ppo_mf_minibatch_size,
        kl_coef=settings.kl_coef,
        ent_coef=settings.ent_coef,
    )


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
    from services.market.envs import DiscreteTradingEnv
    from services.policy.artifacts import (
        REWARD_MODEL,
        ArtifactError,
        load_artifact,
        save_artifact,
        verify_artifact,
    )

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    torch.manual_seed(settings.seed)
    prices = load_prices(settings) if prices is None else prices
    records = feedback.records() if isinstance(feedback, FeedbackLog) else list(feedback or [])
    # Walk-forward over bars: PPO steps on bars train_start..train_end (outcomes up to
    # train_end's close); the gate's held-out decisions are on bars train_end..last, later.
    window = newest_window(list(range(len(prices))), settings.train_days + 1, settings.eval_days)
    train_start, train_end, last = window.train[0], window.train[-1], window.evaluate[-1]
    times = prices.index

    teacher_dir = current_teacher(settings)
    teacher = load_artifact(teacher_dir)
    teacher_version = teacher.model_version
    version = student_version(teacher_version, times[train_end])
    out = settings.models_dir / version
    work = settings.work_dir / "cycles" / version
    log.info(
        "cycle: teacher %s -> student %s, window %s..%s, held out ..%s",
        teacher_version,
        version,
        times[train_start].date(),
        times[train_end].date(),
        times[last].date(),
    )

    # The live states' features, read once for the whole cycle (training and held-out bars).
    bar_features = load_bar_features(settings.features_source, prices, settings.ticker)
    training: dict[str, float] = {}
    if bar_features is not None:
        training["features/feast_columns"] = float(bar_features.numeric.shape[1])
    resumed_from = 0
    reward_model = work / REWARD_MODEL  # trained by _supervised when rm_steps > 0
    if out.is_dir():  # killed after saving: the artifact is complete (atomic), reuse it
        student = load_artifact(out)
    else:
        student = copy.deepcopy(teacher)
        # Training data only if its outcome was known by the window's end (no look-ahead).
        window_records = feedback_in_window(records, times[train_start], times[train_end])
        _supervised(settings, student, teacher_dir, window_records, work, training)
        args = ppo_args(settings)
        mf_set = feedback_set(student, window_records, args)
        training["mf/feedback_examples"] = len(mf_set)
        env = DiscreteTradingEnv(
            prices,
            ticker=settings.ticker,
            start=train_start,
            end=train_end,
            max_episode_steps=ppo.PPOArgs.max_episode_steps,
            random_start=True,
            **state_inputs(bar_features),
        )
        result = ppo.train(
            student,
            teacher,
            env,
            lambda s: student.encode([s]),
            args,
            checkpoint_dir=work / "ppo",
            stop_after_iterations=stop_after_ppo_iterations,
            feedback=mf_set,
        )
        student.mark_weights_changed()
        resumed_from = result.resumed_from
        if result.iterations_done < args.num_iterations:
            raise CycleError(
                f"stopped after PPO iteration {result.iterations_done} (as asked); rerun resumes"
            )
        training.update({k: v for k, v in result.metrics.items()})
        training["ppo/update_tokens_per_s"] = result.update_tokens_per_s

    student_eval = evaluate(
        student,
        prices,
        train_end,
        last,
        ticker=settings.ticker,
        seed=settings.seed,
        features=bar_features,
    )
    teacher_eval = evaluate(
        teacher,
        prices,
        train_end,
        last,
        ticker=settings.ticker,
        seed=settings.seed,
        features=bar_features,
    )
    if not out.is_dir():
        save_artifact(
            student,
            out,
            {
                "version": version,
                "parent_version": teacher_version,
                "base_model": teacher.manifest.base_model,  # type: ignore[attr-defined]
                "training_window": {
                    "start": times[train_start].to_pydatetime(),
                    "end": times[train_end].to_pydatetime(),
                },
                "eval_metrics": {k: v for k, v in student_eval.policy.items() if math.isfinite(v)},
                "notes": f"RLMF cycle: PPO {settings.ppo_steps} steps, mf_coef {settings.mf_coef}",
            },
            # A reward model the cycle trained travels with the student: the policy server
            # ranks the student's explanations with it (best-of-n).
            reward_model=reward_model if reward_model.is_dir() else None,
        )
    manifest_error = None
    try:
        verify_artifact(out)
    except ArtifactError as exc:
        manifest_error = str(exc)
    finite = all(math.isfinite(v) for v in training.values())
    gate = decide(
        student_eval.policy,
        teacher_eval.policy,
        GateConfig(
            settings.gate_metric,
            settings.gate_margin,
            settings.gate_max_drawdown_worsening,
            settings.gate_entropy_floor,
        ),
        manifest_error,
        finite,
    )

    promoted, detail = gate.promoted, gate.reason
    promoter = promoter if promoter is not None else make_promoter(settings)
    if gate.promoted and promoter is not None:
        outcome: PromotionOutcome = promoter.promote(out, version)
        promoted, detail = outcome.promoted, f"{gate.reason}; {outcome.detail}"
    if promoted:
        set_current(settings.models_dir, out)
    PROMOTIONS.labels(_outcome(gate.promoted, promoted, detail)).inc()
    cycle = CycleResult(
        student_version=version,
        teacher_version=teacher_version,
        promoted=promoted,
        reason=detail,
        failed_guards=gate.failed_guards,
        student_metrics=student_eval.policy,
        teacher_metrics=teacher_eval.policy,
        buy_and_hold_metrics=student_eval.buy_and_hold,
        artifact_path=str(out),
        window_start=times[train_start].to_pydatetime(),
        window_end=times[train_end].to_pydatetime(),
        eval_start=times[train_end].to_pydatetime(),
        eval_end=times[last].to_pydatetime(),
        resumed_from=resumed_from,
        training=training,
        promotion_detail=detail,
    )
    if producer is not None:
        publish(producer, cycle)
    checkpoint.clear(work / "ppo")
    log.info("cycle done: %s", detail, extra={"fields": cycle.to_dict()})
    return cycle


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


def _outcome(gate_passed: bool, promoted: bool, detail: str) -> str:
    """The label of rlmf_promotions_total: promoted, rejected (by the gate), rolled_back or
    failed (the gate passed but the promotion itself did not take)."""
    if promoted:
        return "promoted"
    if not gate_passed:
        return "rejected"
    return "rolled_back" if "rolled back" in detail else "failed"


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

"""A cycle's decision as models.promotions.v1: the verdict, every number, the gate's bootstrap
and what made the student, promoted or not."""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.trainer.cycle import CycleResult


def publish_decision(producer: Any, cycle: CycleResult) -> None:
    """models.promotions.v1 with the decision and every number, promoted or not."""
    from services.common.envelope import derived_id, set_time
    from services.common.pb.rlmf.v1 import payloads_pb2 as pb
    from services.common.topics import MODELS_PROMOTIONS

    message = pb.ModelPromotion(
        student_version=cycle.student_version,
        teacher_version=cycle.teacher_version,
        promoted=cycle.promoted,
        reason=cycle.reason,
        failed_guards=cycle.failed_guards,
        artifact_path=cycle.artifact_path,
        outcome=cycle.outcome,
    )
    for target, values in (
        (message.student_metrics, cycle.student_metrics),
        (message.teacher_metrics, cycle.teacher_metrics),
        (message.buy_and_hold_metrics, cycle.buy_and_hold_metrics),
    ):
        target.update({k: float(v) for k, v in values.items()})
    message.inputs_sha256 = cycle.inputs_sha256
    message.torch_threads = cycle.torch_threads
    message.ppo_iterations = int(cycle.training.get("ppo/iterations", 0))
    message.budget_cut = cycle.budget_cut
    for name, value in cycle.sharpe_test.items():
        setattr(message, name, int(value) if name == "holdout_bars" else float(value))
    set_time(message.window_start, cycle.window_start)
    set_time(message.window_end, cycle.window_end)
    producer.publish(
        MODELS_PROMOTIONS,
        message,
        # The same decision gets the same id, so a cycle re-run after a crash (or a run of the
        # same seed and data) republishes it as a duplicate that readers drop, not a new event.
        id=derived_id(cycle.student_version, cycle.teacher_version, cycle.outcome, "promotion"),
        key=cycle.student_version,
        event_time=cycle.eval_end if cycle.eval_end.tzinfo else cycle.eval_end.replace(tzinfo=UTC),
    )
    producer.flush()

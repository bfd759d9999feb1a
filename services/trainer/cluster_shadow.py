"""Shadow trading on a cluster, trainer side. There the trainer is a CronJob, not a consumer
that runs all day, and it cannot reach each policy pod:

- **Staging.** A student the backtest gate passes is staged by writing `<models>/candidate`
  (its folder's name) on the models volume; every policy pod follows that pointer
  (services/policy/candidate_pointer.py) and serves it as `policy-candidate`, and the
  simulator trades it in shadow on every live bar (trading.shadow.v1).
- **Judging.** Each run of the CronJob first reads what trading.shadow.v1 got since its last
  run (its own consumer group) into the same shadow files the one-machine trainer keeps, and
  the same ShadowJudge decides once the candidate has RLMF_TRAINER_SHADOW_BARS bar times.
  While the candidate still waits, the run trains nothing: one candidate at a time.
- **Promoting.** A candidate the pooled gate passes is promoted through the cluster promoter:
  the canary then checks only errors and latency; the P&L was judged in shadow. Either way the
  pointer is removed, which retires the candidate on every pod.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from services.common.bus import ConsumerLoop, Incoming, Outgoing, one_by_one
from services.common.settings import BusSettings
from services.common.topics import TRADING_SHADOW
from services.trainer.promotion import Promoter
from services.trainer.promotion_outcome import PromotionOutcome
from services.trainer.serving_pointer import write_pointer
from services.trainer.shadow import ShadowJudge, Verdict

log = logging.getLogger(__name__)

CANDIDATE_POINTER = "candidate"
"""File in models_dir naming the candidate's folder: the policy pods'
RLMF_POLICY_CANDIDATE_POINTER."""

SHADOW_GROUP_SUFFIX = "-shadow"
"""The CronJob reads trading.shadow.v1 under history_group + this: a group of its own, so the
bars and feedback it reads under history_group keep their offsets."""


class PointerStager:
    """The ShadowPromoter of a cluster: stage and retire by the pointer file, promote through
    the cluster promoter (Helm, the canary's operational checks)."""

    def __init__(self, models_dir: Path, promoter: Promoter) -> None:
        self.pointer = models_dir / CANDIDATE_POINTER
        self.promoter = promoter

    def stage(self, folder: Path, version: str) -> PromotionOutcome:
        write_pointer(self.pointer, folder)  # atomic: a pod reads the old name or the new
        return PromotionOutcome(
            True, f"staged {version} in shadow: the policy pods follow {self.pointer}"
        )

    def promote(self, folder: Path, version: str) -> PromotionOutcome:
        return self.promoter.promote(folder, version)

    def retire(self) -> None:
        self.pointer.unlink(missing_ok=True)


def judge_from_bus(
    judge: ShadowJudge, bus: BusSettings, group_id: str, idle_timeout_s: float = 5.0
) -> Verdict | None:
    """Read trading.shadow.v1 from the group's committed offsets until it is quiet, keeping
    the staged candidate's shadow bars (another version's are ignored); then, with the loop
    closed (a canary takes minutes, longer than a consumer may go without polling), decide
    once the candidate has the bars it waits for."""

    def keep(incoming: Incoming) -> list[Outgoing]:
        judge.record(incoming.payload, incoming.payload.decision.ticker)
        return []

    loop = ConsumerLoop(
        service="trainer",
        topics=[TRADING_SHADOW],
        settings=bus,
        handle_batch=one_by_one(keep),
        group_id=group_id,
    )
    loop.run(idle_timeout_s=idle_timeout_s)  # commits what it kept: the files hold the bars
    return judge.decide_if_complete()


def waiting(judge: ShadowJudge) -> dict[str, Any] | None:
    """The candidate still in shadow (version, bars, needed), or None."""
    candidate = judge.files.read_candidate()
    if candidate is None:
        return None
    from services.trainer.shadow import shadow_series

    times, _ = shadow_series(judge.files.shadow_bars(candidate.version))
    return {"version": candidate.version, "bars": len(times), "needed": candidate.needed}


def shadow_before_cycle(
    settings: Any, bus: BusSettings, promoter: Promoter, producer: Any = None
) -> dict[str, Any] | None:
    """The CronJob's first step with shadow trading on: judge the candidate on what
    trading.shadow.v1 got since the last run. Returns the candidate still waiting (this run
    trains nothing), or None when no candidate is in shadow (any verdict was just acted on)."""
    from services.policy.approval import withdraw_approval
    from services.trainer.approvals import approve_promotion, gate_evidence
    from services.trainer.serving_pointer import set_current
    from services.trainer.shadow import ShadowFiles

    judge = ShadowJudge(
        ShadowFiles(settings.work_dir),
        settings.gate,
        PointerStager(settings.models_dir, promoter),
        on_promoted=lambda folder: set_current(settings.models_dir, folder),
        producer=producer,
        # Approved before the Helm upgrade: the policy pods serve only an approved version.
        approve=lambda folder, decision: approve_promotion(
            settings, folder, gate_evidence(decision)
        ),
        withdraw=withdraw_approval,
    )
    if judge.files.read_candidate() is None:
        return None
    verdict = judge_from_bus(judge, bus, settings.history_group + SHADOW_GROUP_SUFFIX)
    if verdict is not None:
        log.info("shadow verdict: %s", verdict.outcome, extra={"fields": verdict.to_dict()})
    return waiting(judge)

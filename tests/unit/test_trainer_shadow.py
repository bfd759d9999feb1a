"""The trainer's side of shadow trading (services/trainer/shadow.py): a candidate is staged with
the evidence it was chosen on, its shadow bars are collected once each, and the verdict comes
once the planned stretch is in: promoted when the pooled evidence and the shadow bars agree,
retired otherwise. The promoter here records calls in place of the policy server, whose
candidate routes tests/integration/test_policy_server.py exercises for real."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.common.envelope import set_time
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.policy.approval import APPROVAL, Approval, read_approval, withdraw_approval
from services.policy.artifacts import MANIFEST, init_artifact, teacher_config
from services.trainer.cycle_log import CycleLog, CycleRecord
from services.trainer.gate import GateConfig, HeldOutReturns
from services.trainer.promotion import PromotionOutcome
from services.trainer.settings import TrainerSettings
from services.trainer.shadow import ShadowFiles, ShadowJudge, shadow_series, stage_candidate

START = datetime(2024, 1, 2, 21, tzinfo=UTC)
NEEDED = 40


@dataclass
class RecordingPromoter:
    calls: list[tuple[str, str]] = field(default_factory=list)

    def stage(self, folder: Path, version: str) -> PromotionOutcome:
        self.calls.append(("stage", version))
        return PromotionOutcome(True, f"{version} trades in shadow", version)

    def promote(self, folder: Path, version: str) -> PromotionOutcome:
        self.calls.append(("promote", version))
        return PromotionOutcome(True, f"switched to {version}", version)

    def retire(self) -> None:
        self.calls.append(("retire", ""))


def _returns(edge: float, bars: int, seed: int) -> HeldOutReturns:
    rng = np.random.default_rng(seed)
    teacher = rng.normal(0.0003, 0.01, bars)
    return HeldOutReturns(teacher + edge + rng.normal(0, 0.002, bars), teacher)


def _message(version: str, day: int, shadow: float, live: float) -> pb.ShadowDecision:
    msg = pb.ShadowDecision(shadow_return=shadow, live_return=live, teacher_version="v0")
    msg.decision.model_version = version
    msg.decision.ticker = "ACME"
    set_time(msg.decision.decision_time, START + timedelta(days=day))
    return msg


def _judge(tmp_path: Path, edge: float) -> tuple[ShadowJudge, RecordingPromoter, list[Path]]:
    files, promoter, promoted = ShadowFiles(tmp_path), RecordingPromoter(), []
    staged = stage_candidate(
        files, promoter, folder=tmp_path / "s1", version="s1", teacher_version="v0",
        returns=_returns(edge, 80, seed=1), needed=NEEDED, p_value=0.01,
    )  # fmt: skip
    assert staged.promoted and files.read_candidate() is not None
    judge = ShadowJudge(files, GateConfig(), promoter, on_promoted=promoted.append)
    return judge, promoter, promoted


def _feed(judge: ShadowJudge, edge: float, seed: int) -> list[object]:
    stretch = _returns(edge, NEEDED, seed)
    verdicts = []
    for day, (shadow, live) in enumerate(zip(stretch.student, stretch.teacher, strict=True)):
        message = _message("s1", day, float(shadow), float(live))
        verdicts.append(judge.add(message, "ACME"))
        if day == 5:
            assert judge.add(message, "ACME") is None  # a re-delivery counts once
        assert judge.add(_message("old", day, 1.0, 0.0), "ACME") is None  # another version
    return verdicts


def test_a_candidate_that_keeps_its_edge_in_shadow_is_promoted(tmp_path: Path) -> None:
    judge, promoter, promoted = _judge(tmp_path, edge=0.004)
    verdicts = _feed(judge, edge=0.004, seed=2)
    assert all(v is None for v in verdicts[:-1]), "no verdict before the planned stretch"
    verdict = verdicts[-1]
    assert verdict is not None and verdict.outcome == "promoted", verdict
    assert verdict.shadow_bars == NEEDED and verdict.decision.shadow is not None
    assert promoter.calls == [("stage", "s1"), ("promote", "s1"), ("retire", "")]
    assert promoted == [tmp_path / "s1"]
    assert ShadowFiles(tmp_path).read_candidate() is None, "judged once, then gone"


def test_a_candidate_whose_shadow_bars_disagree_is_retired(tmp_path: Path) -> None:
    judge, promoter, promoted = _judge(tmp_path, edge=0.004)
    verdict = _feed(judge, edge=-0.003, seed=3)[-1]
    assert verdict is not None and verdict.outcome == "retired", verdict
    assert promoter.calls == [("stage", "s1"), ("retire", "")] and promoted == []


def test_the_verdict_becomes_its_cycles_outcome_in_the_cycle_log(tmp_path: Path) -> None:
    log = CycleLog(tmp_path / "cycles.jsonl")
    prices = pd.DataFrame({"close": [1.0, 2.0]}, index=pd.DatetimeIndex([START, START]))
    record = CycleRecord.starting(START.date(), "kafka", ["ACME"], prices)
    log.add(
        record.__class__(**{**record.__dict__, "outcome": "candidate", "student_version": "s1"})
    )
    log.add_verdict({"version": "s1", "outcome": "retired", "shadow_bars": 40})
    (only,) = log.records()
    assert only["outcome"] == "retired" and only["shadow"]["shadow_bars"] == 40


def test_several_tickers_pool_into_one_series_by_bar_time() -> None:
    when = [(START + timedelta(days=d)).isoformat() for d in range(2)]
    bars = {("A", when[0]): (0.02, 0.01), ("B", when[0]): (0.0, 0.01), ("A", when[1]): (0.01, 0.0)}
    times, series = shadow_series(bars)
    assert times == when
    assert series.student.tolist() == pytest.approx([0.01, 0.01])
    assert series.teacher.tolist() == pytest.approx([0.01, 0.0])


@dataclass
class ApprovalReadingPromoter(RecordingPromoter):
    """Reads the candidate's approval when asked to promote it, as the policy server does;
    `swap_fails` answers as a server that refused the reload."""

    swap_fails: bool = False
    seen: list[Approval] = field(default_factory=list)

    def promote(self, folder: Path, version: str) -> PromotionOutcome:
        self.seen.append(read_approval(folder, (folder / MANIFEST).read_bytes(), None))
        if self.swap_fails:
            return PromotionOutcome(False, "policy server refused the reload")
        return super().promote(folder, version)


@pytest.mark.parametrize("swap_fails", [False, True])
def test_the_trainers_shadow_judge_approves_before_the_swap_and_withdraws_a_failed_one(
    tiny_llama_dir: Path, tmp_path: Path, swap_fails: bool
) -> None:
    """The judge the trainer service builds writes the candidate's approval (stage shadow, the
    pooled p-value, the next sequence) before the server is asked to serve it: the server
    serves only approved versions. A swap that fails leaves no approval behind."""
    from services.trainer.service import _shadow_judge

    models = tmp_path / "models"
    init_artifact(tiny_llama_dir, models / "v0", "v0", teacher_config())  # approval 0
    init_artifact(tiny_llama_dir, models / "s1", "s1", teacher_config())
    withdraw_approval(models / "s1")  # a student: built, not approved
    settings = TrainerSettings(
        models_dir=models, work_dir=tmp_path / "work", promotion="embedded", shadow_bars=NEEDED
    )
    judge = _shadow_judge(settings, None)
    assert judge is not None
    promoter = ApprovalReadingPromoter(swap_fails=swap_fails)
    judge.promoter = promoter
    stage_candidate(
        judge.files, promoter, folder=models / "s1", version="s1", teacher_version="v0",
        returns=_returns(0.004, 80, seed=1), needed=NEEDED, p_value=0.01,
    )  # fmt: skip
    verdict = _feed(judge, edge=0.004, seed=2)[-1]
    assert verdict is not None
    (approval,) = promoter.seen
    assert approval.version == "s1" and approval.sequence == 1
    assert approval.evidence.stage == "shadow"
    assert approval.evidence.p_value == pytest.approx(verdict.decision.p_value)  # type: ignore[attr-defined]
    assert "shadow_p_value" in approval.evidence.figures
    if swap_fails:
        assert verdict.outcome == "failed"  # type: ignore[attr-defined]
        assert not (models / "s1" / APPROVAL).exists()
        assert not (models / "current").exists()
    else:
        assert verdict.outcome == "promoted"  # type: ignore[attr-defined]
        assert (models / "current").read_text().strip() == "s1"
        assert (models / "s1" / APPROVAL).exists()

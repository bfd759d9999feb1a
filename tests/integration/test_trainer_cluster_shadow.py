"""Shadow trading on a cluster, trainer side (services/trainer/cluster_shadow.py), on the
real broker: the CronJob stages a candidate by the pointer file the policy pods follow, reads
trading.shadow.v1 under a consumer group of its own on each run, trains nothing while the
candidate waits, and once the candidate has its bars promotes it through the cluster promoter
and removes the pointer. The cluster promoter (Helm, KServe's canary) cannot run here: a
recording promoter stands in for it, as the recorded fakes do in test_trainer_promotion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from services.common.bus import Producer, ensure_topics
from services.common.envelope import set_time
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.common.topics import TRADING_SHADOW
from services.policy.approval import read_approval
from services.policy.artifacts import init_artifact
from services.trainer.cluster_shadow import CANDIDATE_POINTER, PointerStager, shadow_before_cycle
from services.trainer.gate import GateConfig, HeldOutReturns
from services.trainer.promotion import PromotionOutcome
from services.trainer.settings import TrainerSettings
from services.trainer.shadow import ShadowFiles, stage_candidate

pytestmark = pytest.mark.slow  # broker round trips

START = datetime(2024, 3, 1, 21, tzinfo=UTC)
NEEDED = 20


class RecordingPromoter:
    """Stands in for ClusterPromoter (Helm upgrade + canary: needs a cluster)."""

    def __init__(self) -> None:
        self.promoted: list[str] = []

    def promote(self, folder: Path, version: str) -> PromotionOutcome:
        self.promoted.append(version)
        return PromotionOutcome(True, "canary passed (recorded)", served_version=version)


def _shadow(version: str, day: int, edge: float, rng: np.random.Generator) -> pb.ShadowDecision:
    live = float(rng.normal(0.0003, 0.01))
    msg = pb.ShadowDecision(shadow_return=live + edge, live_return=live, teacher_version="v0")
    msg.decision.model_version = version
    msg.decision.ticker = "ACME"
    set_time(msg.decision.decision_time, START + timedelta(days=day))
    return msg


def test_the_cronjob_judges_the_candidate_from_the_shadow_topic_across_runs(
    bus_settings: BusSettings, unique: str, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    models = tmp_path / "models"
    init_artifact(tiny_llama_dir, models / "v0", "v0")  # approved at init
    init_artifact(tiny_llama_dir, models / "s1", "s1")  # the student: approved on promotion
    settings = TrainerSettings(
        work_dir=tmp_path / "work", models_dir=models, promotion="cluster",
        canary={"prometheus_url": "http://prometheus.invalid"}, shadow_bars=NEEDED,
        history_group=f"history-{unique}", gate=GateConfig(bootstrap=False),
    )  # fmt: skip
    promoter = RecordingPromoter()
    rng = np.random.default_rng(0)
    teacher = rng.normal(0.0003, 0.01, 80)
    staged = stage_candidate(
        ShadowFiles(settings.work_dir), PointerStager(models, promoter), folder=models / "s1",
        version="s1", teacher_version="v0", returns=HeldOutReturns(teacher + 0.002, teacher),
        needed=NEEDED, p_value=0.01,
    )  # fmt: skip
    pointer = models / CANDIDATE_POINTER
    assert staged.promoted and pointer.read_text().strip() == "s1"
    ensure_topics(bus_settings, [TRADING_SHADOW], "test")
    producer = Producer(bus_settings, "test")

    def publish(days: range, version: str = "s1") -> None:
        for day in days:
            producer.publish(TRADING_SHADOW, _shadow(version, day, 0.002, rng), key="ACME",
                             event_time=START + timedelta(days=day))  # fmt: skip
        producer.flush()

    publish(range(10))
    publish(range(3), version="s0-judged-before")  # another candidate's bars: ignored
    first_run = shadow_before_cycle(settings, bus_settings, promoter)
    assert first_run == {"version": "s1", "bars": 10, "needed": NEEDED}, "it must wait"
    assert pointer.is_file() and promoter.promoted == []

    publish(range(8, NEEDED))  # two bars again (a re-delivery), then the rest
    assert shadow_before_cycle(settings, bus_settings, promoter) is None
    producer.close()
    assert promoter.promoted == ["s1"], "promoted through the cluster promoter once"
    assert not pointer.exists(), (
        "the pointer must go after the verdict: it retires the candidate on every pod"
    )
    assert (models / "current").read_text().strip() == "s1"
    verdict = ShadowFiles(settings.work_dir).verdict("s1")
    assert verdict.is_file() and '"outcome": "promoted"' in verdict.read_text()
    manifest = (models / "s1" / "manifest.json").read_bytes()
    approval = read_approval(models / "s1", manifest, None)
    assert approval.evidence.stage == "shadow", "approved on the shadow verdict"

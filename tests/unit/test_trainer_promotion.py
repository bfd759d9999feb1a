"""Cluster promotion against a recorded fake of its two calls.

There is no Kubernetes API server on these machines (no cluster, no Docker), so the cluster
promoter is tested against fakes that record what it sends to Helm (helm-python-sdk's
Config.upgrade / rollback) and answer the kubernetes client's InferenceService read with
recorded KServe status objects. The embedded promoter runs against a real policy server in
tests/integration/test_trainer_cycle.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.trainer.promotion import ClusterPromoter, PromotionOutcome, inference_service_ready

NOT_READY = {
    "metadata": {"generation": 4},
    "status": {"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "True"}]},
}  # still the old generation's Ready
PREDICTOR_FAILED = {
    "metadata": {"generation": 4},
    "status": {
        "observedGeneration": 4,
        "conditions": [
            {"type": "PredictorReady", "status": "False", "reason": "RevisionMissing"},
            {"type": "Ready", "status": "False", "reason": "RevisionMissing"},
        ],
    },
}
READY = {
    "metadata": {"generation": 4},
    "status": {
        "observedGeneration": 4,
        "conditions": [
            {"type": "PredictorReady", "status": "True"},
            {"type": "Ready", "status": "True"},
        ],
    },
}


class RecordingHelm:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def upgrade(
        self, chart: Any, name: str, values: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        self.calls.append(("upgrade", (chart, name, values), kwargs))
        return {"name": name, "version": 5, "info": {"status": "deployed"}}

    def rollback(self, name: str, **kwargs: Any) -> None:
        self.calls.append(("rollback", (name,), kwargs))


class RecordedInferenceServices:
    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.reads: list[tuple[str, ...]] = []

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any:
        self.reads.append((group, version, namespace, plural, name))
        return self.answers[min(len(self.reads) - 1, len(self.answers) - 1)]


def _promoter(
    answers: list[dict[str, Any]], **kwargs: Any
) -> tuple[ClusterPromoter, RecordingHelm, RecordedInferenceServices]:
    helm, k8s = RecordingHelm(), RecordedInferenceServices(answers)
    promoter = ClusterPromoter(
        release="prod",
        chart="charts/rlmf",
        namespace="trading",
        storage_uri=lambda folder: f"pvc://prod-rlmf-models/{folder.name}",
        helm=helm,
        k8s=k8s,
        ready_timeout_s=10,
        poll_s=5,
        sleep=lambda _s: None,
        **kwargs,
    )
    return promoter, helm, k8s


def test_upgrade_moves_student_to_teacher_and_waits_for_ready() -> None:
    promoter, helm, k8s = _promoter([NOT_READY, READY])
    outcome = promoter.promote(Path("/models/s20240301-abc123"), "s20240301-abc123")
    assert outcome.promoted, outcome.detail
    ((name, args, kwargs),) = helm.calls
    assert name == "upgrade" and args[1] == "prod"
    assert args[2] == {
        "policy": {
            "teacher": {"storageUri": "pvc://prod-rlmf-models/s20240301-abc123"},
            "student": {"storageUri": "", "canaryTrafficPercent": 0},
        }
    }
    assert kwargs["reuse_values"] is True and kwargs["namespace"] == "trading"
    assert k8s.reads[-1] == (
        "serving.kserve.io",
        "v1beta1",
        "trading",
        "inferenceservices",
        "prod-rlmf-policy",
    )
    assert len(k8s.reads) == 2


def test_rolls_back_when_never_ready() -> None:
    promoter, helm, k8s = _promoter([PREDICTOR_FAILED])
    outcome = promoter.promote(Path("/models/s1"), "s1")
    assert not outcome.promoted and outcome.rolled_back and "rolled back" in outcome.detail
    assert [c[0] for c in helm.calls] == ["upgrade", "rollback"]
    assert helm.calls[1][1] == ("prod",) and helm.calls[1][2] == {}  # previous revision
    assert len(k8s.reads) == 3  # t=0, 5, 10 s, then the timeout


def test_rolls_back_when_live_metrics_lag_the_teacher() -> None:
    promoter, helm, _ = _promoter([READY], live_check=lambda: False)
    outcome = promoter.promote(Path("/models/s1"), "s1")
    assert not outcome.promoted and outcome.rolled_back and "live metrics" in outcome.detail
    assert [c[0] for c in helm.calls] == ["upgrade", "rollback"]


def test_ready_reads_kserve_conditions() -> None:
    assert inference_service_ready(READY)
    assert not inference_service_ready(NOT_READY)
    assert not inference_service_ready(PREDICTOR_FAILED)
    assert not inference_service_ready({})


@pytest.mark.parametrize(
    ("gate_passed", "outcome", "label"),
    [
        (False, None, "rejected"),
        (True, None, "promoted"),  # promotion "none": the gate's word stands
        (True, PromotionOutcome(True, "switched"), "promoted"),
        # The label comes from the fields, whatever the words say.
        (True, PromotionOutcome(False, "not Ready in time", rolled_back=True), "rolled_back"),
        (True, PromotionOutcome(False, "refused, nothing rolled back"), "failed"),
    ],
)
def test_promotion_metric_label_reads_the_outcome_fields(
    gate_passed: bool, outcome: PromotionOutcome | None, label: str
) -> None:
    from services.trainer.cycle import _outcome

    assert _outcome(gate_passed, outcome) == label

"""Cluster promotion (KServe's canary rollout through Helm) against recorded fakes of its calls.

There is no Kubernetes API server on these machines (no cluster, no Docker), so the cluster
promoter is tested against fakes that record what it sends to Helm (helm-python-sdk's
Config.upgrade / rollback) and to the API server (the kubernetes client's InferenceService
read and merge patch), and answer each read with the recorded KServe object of the step the
rollout is at: spec, metadata and status in the shapes KServe v0.15 to v0.20 write them
(inference_service_status.go PropagateStatus, ksvc_reconciler.go). Helm's and the API
server's calls go into one ordered log, so a test can say what came before what. The live
check is a function here; its PromQL runs against a real Prometheus in
tests/integration/test_canary_live_check.py. The embedded promoter runs against a real policy
server in tests/integration/test_trainer_cycle.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from services.trainer.canary import CanaryConfig, Verdict
from services.trainer.isvc_status import (
    DEPLOYMENT_MODE,
    KNATIVE,
    STANDARD,
    Revisions,
    canary_revisions,
    deployment_mode,
    inference_service_ready,
    readiness,
)
from services.trainer.promotion import HELM_BUSY, ClusterPromoter, PromotionOutcome

STUDENT = Path("/models/s20240301-abc123")
VERSION = "s20240301-abc123"
PARENT = "s20240229-fff000"  # the teacher's version, as the student's manifest names it
R0, R1, R2, R3 = (f"policy-predictor-0000{n}" for n in range(4))
TEACHER_URI, STUDENT_URI = f"pvc://prod-rlmf-models/{PARENT}", f"pvc://prod-rlmf-models/{VERSION}"


def route(revision: str, percent: int, latest: bool, tag: str = "") -> dict[str, Any]:
    """One entry of status.components.predictor.traffic, as KServe copies it from Knative."""
    entry: dict[str, Any] = {"revisionName": revision, "percent": percent, "latestRevision": latest}
    return entry | ({"tag": tag} if tag else {})


def isvc(
    gen: int,
    observed: int,
    ready: bool = True,
    *,
    created: str = R1,
    ready_rev: str | None = None,
    rolled_out: str = R1,
    prev: str = R0,
    traffic: list[dict[str, Any]] | None = None,
    mode: str = "Serverless",
    uri: str = TEACHER_URI,
    canary: int | None = None,
) -> dict[str, Any]:
    """A recorded KServe InferenceService with its own generation, spec and status: KServe's
    ComponentStatusSpec (latestRolledoutRevision is the last revision rolled out whole,
    previousRolledoutRevision the one before it) and Knative's traffic routes."""
    state = "True" if ready else "False"
    predictor: dict[str, Any] = {"containers": [{"env": [{"name": "STORAGE_URI", "value": uri}]}]}
    if canary is not None:
        predictor["canaryTrafficPercent"] = canary
    return {
        "metadata": {"generation": gen, "annotations": {DEPLOYMENT_MODE: mode}},
        "spec": {"predictor": predictor},
        "status": {
            "observedGeneration": observed,
            "conditions": [
                {"type": "PredictorReady", "status": state, "reason": "" if ready else "Failed"},
                {"type": "Ready", "status": state},
            ],
            "components": {
                "predictor": {
                    "latestCreatedRevision": created,
                    "latestReadyRevision": ready_rev if ready_rev is not None else created,
                    "latestRolledoutRevision": rolled_out,
                    "previousRolledoutRevision": prev,
                    "traffic": traffic if traffic is not None else [route(created, 100, True)],
                }
            },
        },
    }


# The second promotion on this InferenceService: R1 is the teacher (rolled out whole), R0 its
# predecessor with 0% of the traffic, R2 the student's canary revision.
TEACHER = isvc(4, 4)
CANARY = isvc(
    5, 5, created=R2, uri=STUDENT_URI, canary=20,
    traffic=[route(R2, 20, True), route(R1, 80, False, "prev")],
)  # fmt: skip
PINNED = isvc(
    6, 6, created=R2, uri=STUDENT_URI, canary=0,
    traffic=[route(R2, 0, True), route(R1, 100, False, "prev")],
)  # fmt: skip
PROMOTED = isvc(6, 6, created=R2, rolled_out=R2, prev=R1, uri=STUDENT_URI)
# `helm rollback` restores the teacher's spec: Knative builds a new revision, R3. A client-side-
# applied release drops the pin with it; the trainer pins again until R3 is Ready, then unpins.
ROLLED_BACK = isvc(7, 7, created=R3, rolled_out=R1)
REPINNED = isvc(
    8, 8, created=R3, canary=0, traffic=[route(R3, 0, True), route(R1, 100, False, "prev")]
)
UNPINNED = isvc(9, 9, created=R3, rolled_out=R3, prev=R1)


class Events(list[tuple[str, Any]]):
    """Every call to Helm and to the API server, in order, shared by the two fakes."""

    def names(self) -> list[str]:
        return [name for name, _ in self if name != "read"]


class RecordedInferenceServices:
    """The API server's InferenceService, a recorded fake: it answers reads with the recorded
    object of the step the rollout is at (`states`), and a patch or Helm call moves the step:
    "canary", "promote" and "rollback" after those Helm calls, "pin"/"unpin" after a patch of
    canaryTrafficPercent to 0/away. A step with no recorded object leaves the object as it is."""

    def __init__(self, states: dict[str, dict[str, Any]], events: Events | None = None) -> None:
        self.states, self.events = states, events if events is not None else Events()
        self.current = states["before"]
        self.reads: list[tuple[str, ...]] = []
        self.restored = False

    def step(self, name: str) -> None:
        if name == "pin" and self.restored:
            name = "repin"
        self.restored = self.restored or name == "rollback"
        self.current = self.states.get(name, self.current)

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any:
        self.reads.append((group, version, namespace, plural, name))
        self.events.append(("read", name))
        return copy.deepcopy(self.current)

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Any,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        self.events.append(("patch", (body, kwargs)))
        percent = body["spec"]["predictor"]["canaryTrafficPercent"]
        self.step("pin" if percent == 0 else "unpin")
        return copy.deepcopy(self.current)


class RecordingHelm:
    """helm-python-sdk's Config: records every call; `fail` maps a call number to an error,
    raised before the call reaches the cluster, or after it did with `partly` (Helm applies
    object by object and fails on a later one)."""

    def __init__(
        self, fail: dict[int, Exception] | None = None, first_revision: int = 7,
        partly: bool = False,
    ) -> None:  # fmt: skip
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.fail, self.partly = fail or {}, partly
        self.revision = first_revision
        self.cluster: RecordedInferenceServices | None = None

    def _record(self, call: tuple[str, tuple[Any, ...], dict[str, Any]], step: str) -> None:
        self.calls.append(call)
        if self.cluster is not None:
            self.cluster.events.append((call[0], call[1:]))
        error = self.fail.get(len(self.calls))
        if error is not None and not self.partly:
            raise error
        if self.cluster is not None:
            self.cluster.step(step)
        if error is not None:
            raise error

    def upgrade(
        self, chart: Any, name: str, values: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        canary = bool((values or {}).get("policy", {}).get("student", {}).get("storageUri"))
        self._record(
            ("upgrade", (chart, name, copy.deepcopy(values)), kwargs),
            "canary" if canary else "promote",
        )
        self.revision += 1
        return {"name": name, "version": self.revision, "info": {"status": "deployed"}}

    def rollback(self, name: str, **kwargs: Any) -> None:
        self._record(("rollback", (name,), kwargs), "rollback")


class LiveFigures:
    """The live check the promoter calls after the canary window; records what it was asked."""

    def __init__(self, healthy: bool) -> None:
        self.healthy = healthy
        self.asked: list[tuple[Revisions, str, str]] = []

    def __call__(self, revisions: Revisions, version: str, teacher_version: str) -> Verdict:
        self.asked.append((revisions, version, teacher_version))
        word = "passed" if self.healthy else "failed (error rate above the teacher's)"
        return Verdict(self.healthy, f"live check {word}")


STATES = {
    "before": TEACHER, "canary": CANARY, "pin": PINNED, "rollback": ROLLED_BACK,
    "repin": REPINNED, "unpin": UNPINNED, "promote": PROMOTED,
}  # fmt: skip


def _promoter(
    states: dict[str, dict[str, Any]] | None = None,
    helm: RecordingHelm | None = None,
    healthy: bool = True,
    shadow: str | None = None,
) -> tuple[ClusterPromoter, RecordingHelm, RecordedInferenceServices, LiveFigures, list[float]]:
    helm = helm or RecordingHelm()
    k8s, live = RecordedInferenceServices(STATES | (states or {})), LiveFigures(healthy)
    helm.cluster = k8s
    slept: list[float] = []
    promoter = ClusterPromoter(
        release="prod",
        chart="charts/rlmf",
        namespace="trading",
        storage_uri=lambda folder: f"pvc://prod-rlmf-models/{folder.name}",
        canary=CanaryConfig(traffic_percent=20, window_s=900, prometheus_url="http://prom:9090"),
        helm=helm,
        k8s=k8s,
        ready_timeout_s=10,
        poll_s=5,
        live_check=live,
        teacher_version=lambda folder: PARENT,
        shadow_evidence=lambda version: shadow,
        sleep=slept.append,
    )
    return promoter, helm, k8s, live, slept


def test_canary_first_then_promote() -> None:
    promoter, helm, k8s, live, slept = _promoter()
    outcome = promoter.promote(STUDENT, VERSION)
    assert outcome.promoted and not outcome.rolled_back, outcome.detail
    assert outcome.stage == "promote" and "20%" in outcome.detail
    canary, promote = helm.calls
    assert canary[0] == "upgrade" and canary[1][1] == "prod"
    assert canary[1][2] == {
        "policy": {"student": {"storageUri": STUDENT_URI, "canaryTrafficPercent": 20}}
    }
    assert promote[1][2] == {
        "policy": {
            "teacher": {"storageUri": STUDENT_URI},
            "student": {"storageUri": "", "canaryTrafficPercent": 0},
        }
    }
    for _, _, kwargs in helm.calls:
        assert kwargs["reuse_values"] is True and kwargs["namespace"] == "trading"
    assert k8s.reads[0] == (
        "serving.kserve.io", "v1beta1", "trading", "inferenceservices", "prod-rlmf-policy",
    )  # fmt: skip
    # The live check came after the watch window, about the canary's and the teacher's
    # revisions and versions.
    assert 900 in slept
    assert live.asked == [(Revisions(R2, R1), VERSION, PARENT)]


def test_the_second_promotion_compares_with_the_prev_revision_not_its_predecessor() -> None:
    """KServe keeps the teacher in latestRolledoutRevision and routes its share tagged `prev`;
    previousRolledoutRevision (R0 here) is the teacher's predecessor, at 0% since the first
    promotion. Reading it made every canary from the second promotion on compare with a
    revision that serves nothing."""
    assert canary_revisions(CANARY) == Revisions(R2, R1)
    no_routes = copy.deepcopy(CANARY)  # before Knative reports its routes
    no_routes["status"]["components"]["predictor"]["traffic"] = []
    assert canary_revisions(no_routes) == Revisions(R2, R1)
    assert canary_revisions(TEACHER).teacher == ""  # no canary: nothing to compare with
    promoter, _, _, live, _ = _promoter()
    assert promoter.promote(STUDENT, VERSION).promoted
    assert live.asked[0][0].teacher == R1


def test_a_bad_live_check_pins_prev_before_anything_else_then_restores_the_record() -> None:
    promoter, helm, k8s, live, _ = _promoter(healthy=False)
    outcome = promoter.promote(STUDENT, VERSION)
    assert not outcome.promoted and outcome.rolled_back and outcome.stage == "live_check"
    assert "error rate above the teacher's" in outcome.detail
    assert f"pinned to {R1}" in outcome.detail and "previous teacher is Ready" in outcome.detail
    # After the verdict, the first write is the pin; the record is restored only once the
    # status routes 100% to prev.
    after = k8s.events[k8s.events.index(("read", "prod-rlmf-policy"), 0) :]
    writes = [e for e in after if e[0] != "read"]
    assert [w[0] for w in writes] == ["upgrade", "patch", "rollback", "patch", "patch"], writes
    body, kwargs = writes[1][1]
    assert body == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}
    assert kwargs["_content_type"] == "application/merge-patch+json"
    pin_at = k8s.events.index(writes[1])
    assert any(e[0] == "read" for e in k8s.events[pin_at : k8s.events.index(writes[2])])
    # The canary upgrade made revision 8: back to 7, the release before the canary.
    assert helm.calls[1][1] == ("prod",) and helm.calls[1][2] == {"version": 7}
    assert len(live.asked) == 1


def test_the_record_is_not_restored_before_the_pin_shows() -> None:
    """A pin the status never shows is waited for (the ready timeout), and said."""
    promoter, helm, k8s, _, slept = _promoter({"pin": CANARY}, healthy=False)
    outcome = promoter.promote(STUDENT, VERSION)
    assert "the pin to prev is not shown yet" in outcome.detail
    assert slept.count(5) >= 2  # polled for the pin until the timeout
    assert k8s.events.names()[:3] == ["upgrade", "patch", "rollback"]


def test_a_restore_that_drops_the_pin_is_pinned_again_until_the_teacher_is_ready() -> None:
    """A client-side-applied release removes canaryTrafficPercent with the restore: the
    trainer pins again at once, waits for the teacher's new revision to be Ready, and only
    then lets the latest revision take the traffic."""
    promoter, _, k8s, _, _ = _promoter(healthy=False)
    outcome = promoter.promote(STUDENT, VERSION)
    assert outcome.rolled_back and "previous teacher is Ready" in outcome.detail, outcome.detail
    patches = [e[1][0]["spec"]["predictor"]["canaryTrafficPercent"] for e in k8s.events
               if e[0] == "patch"]  # fmt: skip
    assert patches == [0, 0, None]
    repin, unpin = [i for i, e in enumerate(k8s.events) if e[0] == "patch"][1:]
    assert k8s.events.index(("rollback", (("prod",), {"version": 7}))) < repin < unpin


def test_a_pin_the_restore_left_is_dropped_once_the_teacher_is_ready() -> None:
    """Helm's server-side apply leaves canaryTrafficPercent (the trainer's field) in place."""
    kept = copy.deepcopy(ROLLED_BACK)
    kept["spec"]["predictor"]["canaryTrafficPercent"] = 0
    promoter, _, k8s, _, _ = _promoter({"rollback": kept}, healthy=False)
    outcome = promoter.promote(STUDENT, VERSION)
    assert outcome.rolled_back and "previous teacher is Ready" in outcome.detail, outcome.detail
    assert k8s.events.names() == ["upgrade", "patch", "rollback", "patch"]
    patches = [e[1][0]["spec"]["predictor"]["canaryTrafficPercent"] for e in k8s.events
               if e[0] == "patch"]  # fmt: skip
    assert patches == [0, None]


def test_a_rollback_that_leaves_the_student_serving_is_said() -> None:
    still = isvc(9, 9, created=R3, traffic=[route(R2, 100, True)])  # R2 (the student's) serves
    promoter, _, _, _, _ = _promoter({"unpin": still}, healthy=False)
    outcome = promoter.promote(STUDENT, VERSION)
    assert not outcome.rolled_back and f"revision {R2} (the student) still serves" in outcome.detail


def test_canary_never_ready_rolls_back_without_judging_it() -> None:
    broken = isvc(5, 5, ready=False, created=R2, ready_rev=R1, uri=STUDENT_URI, canary=20)
    promoter, helm, _, live, _ = _promoter({"canary": broken})
    outcome = promoter.promote(STUDENT, VERSION)
    assert not outcome.promoted and outcome.rolled_back and outcome.stage == "canary"
    assert "not Ready in time" in outcome.detail and "PredictorReady" in outcome.detail
    assert [c[0] for c in helm.calls] == ["upgrade", "rollback"] and not live.asked


def test_rollback_that_does_not_get_ready_is_said() -> None:
    broken = isvc(5, 5, ready=False, created=R2, ready_rev="", canary=20)
    stuck = isvc(7, 7, ready=False, created=R3, ready_rev=R1, canary=0,
                 traffic=[route(R1, 0, True), route(R1, 100, False, "prev")])  # fmt: skip
    promoter, _, _, _, _ = _promoter({"canary": broken, "rollback": stuck})
    outcome = promoter.promote(STUDENT, VERSION)
    assert "not Ready yet" in outcome.detail and "prev keeps every request" in outcome.detail


def test_serverless_without_revisions_is_not_judged_on_empty_figures() -> None:
    blind = isvc(5, 5, created="")
    blind["status"]["components"] = {}
    promoter, helm, _, live, _ = _promoter({"canary": blind})
    outcome = promoter.promote(STUDENT, VERSION)
    assert outcome.rolled_back and "no canary and teacher revisions" in outcome.detail
    assert [c[0] for c in helm.calls] == ["upgrade", "rollback"] and not live.asked


@pytest.mark.parametrize(
    ("annotation", "mode"),
    [("Serverless", KNATIVE), ("Knative", KNATIVE), ("RawDeployment", STANDARD),
     ("Standard", STANDARD)],
)  # fmt: skip
def test_both_names_of_each_deployment_mode_are_recognised(annotation: str, mode: str) -> None:
    """KServe 0.17+'s defaulting webhook rewrites Serverless to Knative and RawDeployment to
    Standard on the live object, whatever the chart wrote."""
    assert deployment_mode(isvc(4, 4, mode=annotation)) == mode
    promoter, helm, _, live, _ = _promoter(
        {"before": isvc(4, 4, mode=annotation), "promote": isvc(6, 6, mode=annotation,
         uri=STUDENT_URI), "canary": CANARY | {"metadata": {"generation": 5,
         "annotations": {DEPLOYMENT_MODE: annotation}}}},
        shadow="400 shadow bars",
    )  # fmt: skip
    outcome = promoter.promote(STUDENT, VERSION)
    assert outcome.promoted, outcome.detail
    canary_step = [c for c in helm.calls if c[1][2]["policy"]["student"]["storageUri"]]
    assert bool(live.asked) == (mode == KNATIVE) and bool(canary_step) == (mode == KNATIVE)


def test_an_unknown_deployment_mode_changes_nothing() -> None:
    promoter, helm, _, _, _ = _promoter({"before": isvc(4, 4, mode="ModelMesh")})
    outcome = promoter.promote(STUDENT, VERSION)
    assert not outcome.promoted and outcome.stage == "mode" and not helm.calls


def _standard(gen: int, uri: str = TEACHER_URI) -> dict[str, Any]:
    obj = isvc(gen, gen, mode="Standard", uri=uri)
    obj["status"]["components"] = {}
    return obj


def test_standard_mode_promotes_on_shadow_evidence_verified_ready() -> None:
    """No canary split in Standard mode: the shadow verdict, one upgrade, a readiness wait for
    the new generation, and the live predictor runs the student's model location."""
    states = {"before": _standard(4), "promote": _standard(5, STUDENT_URI)}
    promoter, helm, _, live, slept = _promoter(states, shadow="400 shadow bars")
    outcome = promoter.promote(STUDENT, VERSION)
    assert outcome.promoted and "no canary stage" in outcome.detail, outcome.detail
    assert "400 shadow bars" in outcome.detail
    ((name, args, _),) = helm.calls
    assert name == "upgrade" and args[2] == promoter.values(STUDENT) and not live.asked
    assert 900 not in slept


def test_standard_mode_without_shadow_evidence_changes_nothing() -> None:
    promoter, helm, _, _, _ = _promoter({"before": _standard(4)}, shadow=None)
    outcome = promoter.promote(STUDENT, VERSION)
    assert not outcome.promoted and outcome.stage == "shadow" and not helm.calls
    assert "nothing changed" in outcome.detail


def test_standard_mode_rollback_is_verified_on_the_live_spec() -> None:
    states = {"before": _standard(4), "promote": _standard(4), "rollback": _standard(5)}
    promoter, helm, _, _, _ = _promoter(states, shadow="400 shadow bars")
    outcome = promoter.promote(STUDENT, VERSION)  # the upgrade never reached it
    assert outcome.rolled_back and f"running {TEACHER_URI}" in outcome.detail
    assert [c[0] for c in helm.calls] == ["upgrade", "rollback"]
    wrong = _standard(5, STUDENT_URI)  # the rollback left the student running
    states |= {"rollback": wrong}
    promoter, _, _, _, _ = _promoter(states, shadow="400 shadow bars")
    outcome = promoter.promote(STUDENT, VERSION)
    assert not outcome.rolled_back and f"runs {STUDENT_URI!r}" in outcome.detail


def test_helm_busy_changes_nothing_and_says_so() -> None:
    busy = RuntimeError(f"UPGRADE FAILED: {HELM_BUSY}")
    promoter, helm, _, live, _ = _promoter(helm=RecordingHelm(fail={1: busy}))
    outcome = promoter.promote(STUDENT, VERSION)
    assert not outcome.promoted and not outcome.rolled_back and outcome.stage == "helm_busy"
    assert "in progress on release prod" in outcome.detail and "nothing changed" in outcome.detail
    assert "read back" in outcome.detail
    assert [c[0] for c in helm.calls] == ["upgrade"] and not live.asked


def test_helm_busy_leaves_another_operations_change_alone() -> None:
    """The release is busy with someone else's upgrade, which already changed the object: the
    trainer reports what it reads and neither pins nor rolls back another's rollout."""
    busy = RuntimeError(f"UPGRADE FAILED: {HELM_BUSY}")
    helm = RecordingHelm(fail={1: busy}, partly=True)
    promoter, _, k8s, _, _ = _promoter(helm=helm)
    outcome = promoter.promote(STUDENT, VERSION)
    assert outcome.stage == "helm_busy" and not outcome.rolled_back
    assert "generation 4 -> 5" in outcome.detail and "left alone" in outcome.detail
    assert k8s.events.names() == ["upgrade"]


def test_a_partly_failed_upgrade_is_read_back_and_repaired() -> None:
    """Helm applies the release object by object: the InferenceService took the canary, a
    later object was refused (forbidden), and the upgrade failed. The live object is read
    back: it changed, so it is never reported as "nothing changed"; it is pinned to prev and
    the record restored."""
    forbidden = RuntimeError(
        "server-side apply failed for object trading/prod-rlmf-ingest apps/v1, Kind=Deployment: "
        'deployments.apps "prod-rlmf-ingest" is forbidden: User '
        '"system:serviceaccount:trading:prod-rlmf-trainer" cannot patch resource "deployments"'
    )
    helm = RecordingHelm(fail={1: forbidden}, partly=True)
    promoter, _, k8s, live, _ = _promoter(helm=helm)
    outcome = promoter.promote(STUDENT, VERSION)
    assert not outcome.promoted and outcome.stage == "helm" and not live.asked
    assert "nothing changed" not in outcome.detail
    assert "prod-rlmf-policy changed (generation 4 -> 5" in outcome.detail
    assert f"model {TEACHER_URI} -> {STUDENT_URI}" in outcome.detail
    assert k8s.events.names() == ["upgrade", "patch", "rollback", "patch", "patch"]
    assert helm.calls[1][2] == {}  # the failed record is the latest: back to the one before


def test_helm_failing_at_the_promote_step_rolls_back() -> None:
    broken = RuntimeError("template: rlmf/templates/policy.yaml: nil pointer")
    promoter, helm, _, _, _ = _promoter(helm=RecordingHelm(fail={2: broken}))
    outcome = promoter.promote(STUDENT, VERSION)
    assert outcome.rolled_back and outcome.stage == "helm" and "nil pointer" in outcome.detail
    assert [c[0] for c in helm.calls] == ["upgrade", "upgrade", "rollback"]
    assert helm.calls[2][2] == {"version": 7}


def test_failing_rollback_is_an_outcome_not_a_crash() -> None:
    helm = RecordingHelm(fail={2: RuntimeError("rollback: connection refused")})
    promoter, _, _, _, _ = _promoter(helm=helm, healthy=False)
    outcome = promoter.promote(STUDENT, VERSION)
    assert not outcome.promoted and not outcome.rolled_back
    assert "helm rollback failed too" in outcome.detail and f"pinned to {R1}" in outcome.detail


def test_an_api_error_is_an_outcome_not_a_crash() -> None:
    class Unreachable(RecordedInferenceServices):
        def get_namespaced_custom_object(self, *args: str) -> Any:
            raise ConnectionError("api server unreachable")

    promoter, _, _, _, _ = _promoter()
    promoter._k8s = Unreachable(STATES)
    outcome = promoter.promote(STUDENT, VERSION)
    assert not outcome.promoted and outcome.stage == "error" and "unreachable" in outcome.detail


# -- readiness of the right generation ---------------------------------------------------------


def test_ready_of_the_old_generation_is_not_ready() -> None:
    """KServe reports the previous generation's Ready until it has reconciled the upgrade."""
    stale = isvc(5, 4)
    assert not readiness(stale, after_generation=4).ready
    assert "observes generation 4 of 5" in readiness(stale, after_generation=4).why
    # The upgrade has not reached the InferenceService yet: same generation as before.
    assert not readiness(TEACHER, after_generation=4).ready
    assert readiness(CANARY, after_generation=4).ready


def test_canary_needs_a_new_ready_revision() -> None:
    same = isvc(5, 5, created="policy-predictor-00001")
    assert "no new revision" in readiness(same, new_revision_after="policy-predictor-00001").why
    pending = isvc(5, 5, created="policy-predictor-00002", ready_rev="policy-predictor-00001")
    assert "not ready" in readiness(pending, new_revision_after="policy-predictor-00001").why
    assert readiness(CANARY, new_revision_after="policy-predictor-00001").ready


def test_hpa_scaling_does_not_change_the_verdict() -> None:
    """An HPA moves the Deployment's generation, which KServe copies into the predictor
    component; the InferenceService's own generation and conditions decide."""
    scaled = copy.deepcopy(CANARY)
    scaled["status"]["components"]["predictor"]["observedGeneration"] = 2
    scaled["status"]["components"]["predictor"]["generation"] = 9
    assert readiness(scaled, after_generation=4).ready


def test_ready_reads_kserve_conditions() -> None:
    assert inference_service_ready(CANARY)
    assert not inference_service_ready(isvc(5, 4))
    assert not inference_service_ready(isvc(5, 5, ready=False))
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


def test_cluster_promotion_without_prometheus_is_refused() -> None:
    from services.trainer.settings import TrainerSettings

    with pytest.raises(ValueError, match="RLMF_TRAINER_CANARY__PROMETHEUS_URL"):
        ClusterPromoter.from_settings(TrainerSettings(promotion="cluster"))
    promoter = ClusterPromoter.from_settings(
        TrainerSettings(promotion="cluster", canary={"prometheus_url": "http://prom:9090"})
    )
    assert promoter.live_check is not None


def test_each_upgrade_renders_what_it_says() -> None:
    """The two upgrades' values pass the chart's schema and render as KServe's canary (the
    student's revision at 20%) and then as the student serving alone."""
    from services.trainer.promotion import ClusterPromoter as Promoter
    from tests.helpers import EXTERNAL, POLICY_NAMESPACE, documents, load_policy_chart, named

    promoter, _, _, _, _ = _promoter()
    assert isinstance(promoter, Promoter)

    def predictor(values: dict[str, Any]) -> dict[str, Any]:
        # The policy's own release (charts/rlmf-policy), the one the trainer upgrades.
        rendered = load_policy_chart().render(
            copy.deepcopy(EXTERNAL) | values,
            name="prod",
            namespace=POLICY_NAMESPACE,
            is_upgrade=True,
        )
        isvc = named(documents(rendered), "InferenceService", promoter.isvc_name)
        return dict(isvc["spec"]["predictor"])

    def storage_uri(spec: dict[str, Any]) -> str:
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        return str(env["STORAGE_URI"])

    canary = predictor(promoter.canary_values(STUDENT))
    assert canary["canaryTrafficPercent"] == 20
    assert storage_uri(canary) == f"pvc://prod-rlmf-models/{VERSION}"
    promoted = predictor(promoter.values(STUDENT))
    assert "canaryTrafficPercent" not in promoted
    assert storage_uri(promoted) == f"pvc://prod-rlmf-models/{VERSION}"


def test_the_charts_canary_setting_reaches_the_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CronJob's RLMF_TRAINER_CANARY (one JSON value) and data settings parse into
    TrainerSettings as values.yaml gives them."""
    from services.trainer.settings import TrainerSettings
    from tests.helpers import named, render

    cron = named(render("external-kafka"), "CronJob", "rlmf-trainer")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for name, value in env.items():
        if name.startswith("RLMF_TRAINER_"):
            monkeypatch.setenv(name, value)
    settings = TrainerSettings()
    assert settings.canary.traffic_percent == 10 and settings.canary.window_s == 1800
    assert settings.canary.prometheus_url.startswith("http://prometheus-operated.")
    assert settings.data_source == "kafka" and str(settings.work_dir) == "/work"
    assert settings.ticker == "MSFT" and settings.promotion == "cluster"


class RecordingApiServer:
    """A loopback HTTP server that answers as a Kubernetes API server with no objects and
    records each request's path: there is no API server here, and this is what lets the real
    helm-python-sdk show which kind it keeps its release records in."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.paths: list[str] = []
        paths = self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                paths.append(self.path)
                empty = {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []}
                version = {"major": "1", "minor": "30", "gitVersion": "v1.30.0"}
                body = json.dumps(version if self.path.startswith("/version") else empty)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kubeconfig(self) -> str:
        return (
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
            f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{self.server.server_port}'}}}}]\n"
            "users: [{name: u, user: {token: t}}]\n"
            "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_helm_keeps_its_release_records_in_configmaps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's Role (charts/rlmf/templates/trainer-rbac.yaml) grants ConfigMaps and no
    Secrets, so the helm client the promoter builds itself must use Helm's configmap driver.
    The real helm-python-sdk runs against RecordingApiServer; only the address differs from a
    pod (which finds its API server through the in-cluster config)."""
    import helm_python

    api = RecordingApiServer()
    real_config = helm_python.Config
    built: list[dict[str, Any]] = []

    def config(**kwargs: Any) -> Any:
        built.append(kwargs)
        return real_config(**kwargs, kubeconfig_content=api.kubeconfig())

    monkeypatch.setattr(helm_python, "Config", config)
    try:
        promoter, _, _, live, _ = _promoter()
        promoter._helm = None  # the promoter builds its own client, as from_settings does
        outcome = promoter.promote(STUDENT, VERSION)
        with pytest.raises(helm_python.HelmNotFoundError):
            promoter.helm.rollback("prod")
    finally:
        api.close()
    assert not outcome.promoted and outcome.stage == "helm" and "nothing changed" in outcome.detail
    assert not live.asked
    records = [p for p in api.paths if "owner%3Dhelm" in p]
    assert len(records) >= 2, api.paths  # the upgrade's and the rollback's look-ups
    assert all(p.startswith("/api/v1/namespaces/trading/configmaps?") for p in records), records
    assert not [p for p in api.paths if "/secrets" in p], api.paths
    assert built == [{"namespace": "trading", "storage_driver": "configmap"}]


def test_standard_mode_evidence_is_a_completed_shadow_stretch(tmp_path: Path) -> None:
    """The shadow files the trainer keeps (services/trainer/shadow.py), real: a candidate of
    this version with all the bar times it waits for is evidence; fewer bars, or another
    version, is none."""
    import json

    from services.trainer.promotion import shadow_evidence
    from services.trainer.shadow import Candidate, ShadowFiles

    files = ShadowFiles(tmp_path)
    assert shadow_evidence(tmp_path, VERSION) is None
    files.write_candidate(
        Candidate(version=VERSION, folder=str(STUDENT), teacher_version=PARENT, needed=3,
                  staged_at="2024-03-01T21:00:00+00:00", backtest_student=[0.0],
                  backtest_teacher=[0.0], periods_per_year=252.0)
    )  # fmt: skip
    files.bars(VERSION).parent.mkdir(parents=True)
    for day in (1, 2, 3):
        assert shadow_evidence(tmp_path, VERSION) is None  # the stretch is not complete
        row = {"ticker": "MSFT", "time": f"2024-03-0{day}T21:00:00+00:00",
               "shadow_return": 0.01, "live_return": 0.0}  # fmt: skip
        with files.bars(VERSION).open("a") as handle:
            handle.write(json.dumps(row) + "\n")
    assert shadow_evidence(tmp_path, VERSION) == (
        "3 shadow bars (2024-03-01T21:00:00+00:00 to 2024-03-03T21:00:00+00:00)"
    )
    assert shadow_evidence(tmp_path, "s-other") is None


def test_the_teacher_version_is_the_students_parent(tmp_path: Path) -> None:
    """The live check selects the teacher's figures by the version the student's manifest
    says it was trained from (services/policy/artifacts.py's Manifest, written by the cycle)."""
    from services.policy.artifacts import MANIFEST, Manifest
    from services.trainer.promotion import _parent_version

    student = tmp_path / VERSION
    student.mkdir()
    manifest = Manifest(version=VERSION, parent_version=PARENT, base_model="tiny-llama")
    (student / MANIFEST).write_text(manifest.model_dump_json())
    assert _parent_version(student) == PARENT

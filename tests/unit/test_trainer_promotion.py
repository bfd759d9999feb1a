"""Cluster promotion (KServe's canary rollout through Helm) against recorded fakes of its calls.

There is no Kubernetes API server on these machines (no cluster, no Docker), so the cluster
promoter is tested against fakes that record what it sends to Helm (helm-python-sdk's
Config.upgrade / rollback) and answer the kubernetes client's InferenceService reads with
recorded KServe status objects, one per read, in order. The live check is a function here;
its Prometheus queries are tested in tests/unit/test_trainer_live_checks.py. The embedded
promoter runs against a real policy server in tests/integration/test_trainer_cycle.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from services.trainer.canary import CanaryConfig, Verdict
from services.trainer.isvc_status import Revisions, inference_service_ready, readiness
from services.trainer.promotion import HELM_BUSY, ClusterPromoter, PromotionOutcome

STUDENT = Path("/models/s20240301-abc123")
VERSION = "s20240301-abc123"


def isvc(
    gen: int,
    observed: int,
    ready: bool = True,
    *,
    created: str = "policy-predictor-00001",
    ready_rev: str | None = None,
    prev: str = "",
) -> dict[str, Any]:
    """A recorded KServe InferenceService (serverless) with its own generation and status."""
    state = "True" if ready else "False"
    return {
        "metadata": {"generation": gen},
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
                    "previousRolledoutRevision": prev,
                }
            },
        },
    }


TEACHER = isvc(4, 4)  # before the upgrade: revision 00001 serves, Ready
CANARY = isvc(5, 5, created="policy-predictor-00002", prev="policy-predictor-00001")
PROMOTED = isvc(6, 6, created="policy-predictor-00002", prev="policy-predictor-00001")
ROLLED_BACK = isvc(6, 6, created="policy-predictor-00003", prev="policy-predictor-00002")


class RecordingHelm:
    """helm-python-sdk's Config: records every call; `fail` maps a call number to an error."""

    def __init__(self, fail: dict[int, Exception] | None = None, first_revision: int = 7) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.fail = fail or {}
        self.revision = first_revision

    def _record(self, call: tuple[str, tuple[Any, ...], dict[str, Any]]) -> None:
        self.calls.append(call)
        error = self.fail.get(len(self.calls))
        if error is not None:
            raise error

    def upgrade(
        self, chart: Any, name: str, values: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        self._record(("upgrade", (chart, name, copy.deepcopy(values)), kwargs))
        self.revision += 1
        return {"name": name, "version": self.revision, "info": {"status": "deployed"}}

    def rollback(self, name: str, **kwargs: Any) -> None:
        self._record(("rollback", (name,), kwargs))


class RecordedInferenceServices:
    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.reads: list[tuple[str, ...]] = []

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any:
        self.reads.append((group, version, namespace, plural, name))
        return self.answers[min(len(self.reads) - 1, len(self.answers) - 1)]


class LiveFigures:
    """The live check the promoter calls after the canary window; records what it was asked."""

    def __init__(self, healthy: bool) -> None:
        self.healthy = healthy
        self.asked: list[tuple[Revisions, str]] = []

    def __call__(self, revisions: Revisions, version: str) -> Verdict:
        self.asked.append((revisions, version))
        word = "passed" if self.healthy else "failed (realised edge below the teacher's)"
        return Verdict(self.healthy, f"live check {word}")


def _promoter(
    answers: list[dict[str, Any]], helm: RecordingHelm | None = None, healthy: bool = True
) -> tuple[ClusterPromoter, RecordingHelm, RecordedInferenceServices, LiveFigures, list[float]]:
    helm = helm or RecordingHelm()
    k8s, live = RecordedInferenceServices(answers), LiveFigures(healthy)
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
        sleep=slept.append,
    )
    return promoter, helm, k8s, live, slept


def test_canary_first_then_promote() -> None:
    promoter, helm, k8s, live, slept = _promoter([TEACHER, CANARY, CANARY, PROMOTED])
    outcome = promoter.promote(STUDENT, VERSION)
    assert outcome.promoted and not outcome.rolled_back, outcome.detail
    assert outcome.stage == "promote" and "20%" in outcome.detail
    canary, promote = helm.calls
    assert canary[0] == "upgrade" and canary[1][1] == "prod"
    assert canary[1][2] == {
        "policy": {
            "student": {
                "storageUri": f"pvc://prod-rlmf-models/{VERSION}",
                "canaryTrafficPercent": 20,
            }
        }
    }
    assert promote[1][2] == {
        "policy": {
            "teacher": {"storageUri": f"pvc://prod-rlmf-models/{VERSION}"},
            "student": {"storageUri": "", "canaryTrafficPercent": 0},
        }
    }
    for _, _, kwargs in helm.calls:
        assert kwargs["reuse_values"] is True and kwargs["namespace"] == "trading"
    assert k8s.reads[0] == (
        "serving.kserve.io", "v1beta1", "trading", "inferenceservices", "prod-rlmf-policy",
    )  # fmt: skip
    # The live check came after the watch window, about the canary's and the teacher's revisions.
    assert 900 in slept
    assert live.asked == [(Revisions("policy-predictor-00002", "policy-predictor-00001"), VERSION)]


def test_canary_then_a_bad_live_check_rolls_back_to_before_the_canary() -> None:
    promoter, helm, _, live, _ = _promoter(
        [TEACHER, CANARY, CANARY, CANARY, ROLLED_BACK], healthy=False
    )
    outcome = promoter.promote(STUDENT, VERSION)
    assert not outcome.promoted and outcome.rolled_back and outcome.stage == "live_check"
    assert "realised edge below the teacher's" in outcome.detail
    assert "previous teacher is Ready" in outcome.detail  # the rollback was waited on
    assert [c[0] for c in helm.calls] == ["upgrade", "rollback"]
    # The canary upgrade made revision 8: back to 7, the release before the canary.
    assert helm.calls[1][1] == ("prod",) and helm.calls[1][2] == {"version": 7}
    assert len(live.asked) == 1


def test_canary_never_ready_rolls_back_without_judging_it() -> None:
    broken = isvc(5, 5, ready=False, created="policy-predictor-00002", ready_rev="")
    promoter, helm, k8s, live, _ = _promoter([TEACHER, broken, broken, broken, broken, ROLLED_BACK])
    outcome = promoter.promote(STUDENT, VERSION)
    assert not outcome.promoted and outcome.rolled_back and outcome.stage == "canary"
    assert "not Ready in time" in outcome.detail and "PredictorReady" in outcome.detail
    assert [c[0] for c in helm.calls] == ["upgrade", "rollback"] and not live.asked
    assert len(k8s.reads) == 1 + 3 + 1 + 1  # before, t=0/5/10 s, rollback start, rollback Ready


def test_rollback_that_does_not_get_ready_is_said() -> None:
    broken = isvc(5, 5, ready=False, created="policy-predictor-00002", ready_rev="")
    promoter, _, _, _, _ = _promoter([TEACHER, broken])
    outcome = promoter.promote(STUDENT, VERSION)
    assert outcome.rolled_back and "not Ready yet" in outcome.detail


def test_serverless_without_revisions_is_not_judged_on_empty_figures() -> None:
    blind = isvc(5, 5, created="", prev="")
    blind["status"]["components"] = {}
    promoter, helm, _, live, _ = _promoter([TEACHER, blind, blind, blind, ROLLED_BACK])
    outcome = promoter.promote(STUDENT, VERSION)
    assert outcome.rolled_back and "no canary and teacher revisions" in outcome.detail
    assert [c[0] for c in helm.calls] == ["upgrade", "rollback"] and not live.asked


def test_raw_deployment_promotes_without_a_canary_stage() -> None:
    """KServe splits traffic only between Knative revisions: in RawDeployment one upgrade
    makes the student the teacher, verified Ready for the new generation."""
    raw = "serving.kserve.io/deploymentMode"
    before, after = isvc(4, 4), isvc(5, 5)
    for obj in (before, after):
        obj["metadata"]["annotations"] = {raw: "RawDeployment"}
        obj["status"]["components"] = {}
    promoter, helm, _, live, slept = _promoter([before, after])
    outcome = promoter.promote(STUDENT, VERSION)
    assert outcome.promoted and "no canary stage" in outcome.detail, outcome.detail
    ((name, args, _),) = helm.calls
    assert name == "upgrade" and args[2] == promoter.values(STUDENT) and not live.asked
    assert 900 not in slept
    stale = copy.deepcopy(before)  # the upgrade never reached it: rolled back
    promoter, helm, _, _, _ = _promoter([before, stale])
    assert promoter.promote(STUDENT, VERSION).rolled_back


def test_helm_busy_changes_nothing_and_says_so() -> None:
    busy = RuntimeError(f"UPGRADE FAILED: {HELM_BUSY}")
    promoter, helm, _, live, _ = _promoter([TEACHER], RecordingHelm(fail={1: busy}))
    outcome = promoter.promote(STUDENT, VERSION)
    assert not outcome.promoted and not outcome.rolled_back and outcome.stage == "helm_busy"
    assert "in progress on release prod" in outcome.detail and "nothing changed" in outcome.detail
    assert [c[0] for c in helm.calls] == ["upgrade"] and not live.asked


def test_helm_failing_at_the_promote_step_rolls_back() -> None:
    broken = RuntimeError("template: rlmf/templates/policy.yaml: nil pointer")
    promoter, helm, _, _, _ = _promoter(
        [TEACHER, CANARY, CANARY, CANARY, ROLLED_BACK], RecordingHelm(fail={2: broken})
    )
    outcome = promoter.promote(STUDENT, VERSION)
    assert outcome.rolled_back and outcome.stage == "helm" and "nil pointer" in outcome.detail
    assert [c[0] for c in helm.calls] == ["upgrade", "upgrade", "rollback"]
    assert helm.calls[2][2] == {"version": 7}


def test_failing_rollback_is_an_outcome_not_a_crash() -> None:
    helm = RecordingHelm(fail={2: RuntimeError("rollback: connection refused")})
    promoter, _, _, _, _ = _promoter([TEACHER, CANARY], helm, healthy=False)
    outcome = promoter.promote(STUDENT, VERSION)
    assert not outcome.promoted and not outcome.rolled_back
    assert "helm rollback failed too" in outcome.detail


def test_an_api_error_is_an_outcome_not_a_crash() -> None:
    class Unreachable(RecordedInferenceServices):
        def get_namespaced_custom_object(self, *args: str) -> Any:
            raise ConnectionError("api server unreachable")

    promoter, _, _, _, _ = _promoter([])
    promoter._k8s = Unreachable([])
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

    promoter, _, _, _, _ = _promoter([TEACHER])
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
        promoter, _, _, live, _ = _promoter([TEACHER])
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

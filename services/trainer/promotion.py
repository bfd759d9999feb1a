"""Promotion, one interface and two ways: embedded (the policy server reloads a folder) and cluster
(KServe's canary rollout through Helm: the student serves a share of requests as canary, its live
figures are judged against the teacher's, then it becomes the teacher or is rolled back)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.trainer.canary import CanaryConfig, Verdict
from services.trainer.isvc_status import (
    Readiness,
    Revisions,
    canary_revisions,
    generation,
    predictor_status,
    readiness,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionOutcome:
    promoted: bool
    """The new model serves."""
    detail: str
    """What happened, for people; code reads the fields, never these words."""
    served_version: str = ""
    rolled_back: bool = False
    """The new model was rolled out, then the previous one restored (cluster: `helm rollback`)."""
    stage: str = ""
    """Cluster: the step that decided it (canary, ready, live_check, promote, helm_busy, helm)."""


class Promoter(Protocol):
    """Make the artifact at `folder` (version `version`) the teacher that serves."""

    def promote(self, folder: Path, version: str) -> PromotionOutcome: ...


class EmbeddedPromoter:
    """Tells the local policy server to load, verify and swap in the new folder."""

    def __init__(self, policy_url: str, timeout_s: float = 300.0) -> None:
        self.policy_url = policy_url
        self.timeout_s = timeout_s

    def promote(self, folder: Path, version: str) -> PromotionOutcome:
        from services.policy.client import PolicyClientError, request_reload

        try:
            answer = request_reload(self.policy_url, folder, timeout=self.timeout_s)
        except PolicyClientError as exc:  # the server refused; the teacher keeps serving
            return PromotionOutcome(False, f"policy server refused the reload: {exc}")
        served = str(answer.get("model_version", ""))
        if served != version:
            return PromotionOutcome(
                False, f"server serves {served!r} after reload, expected {version!r}", served
            )
        return PromotionOutcome(
            True, f"policy server switched {answer.get('previous_version')} -> {served}", served
        )

    def stage(self, folder: Path, version: str) -> PromotionOutcome:
        """Load `folder` as the candidate beside the teacher, for shadow trading."""
        from services.policy.client import PolicyClientError, request_reload

        try:
            answer = request_reload(
                self.policy_url, folder, timeout=self.timeout_s, model_name=CANDIDATE_MODEL
            )
        except PolicyClientError as exc:
            return PromotionOutcome(False, f"policy server refused the candidate: {exc}")
        staged = str(answer.get("model_version", ""))
        if staged != version:
            return PromotionOutcome(False, f"candidate {staged!r} staged, expected {version!r}")
        return PromotionOutcome(True, f"{staged} trades in shadow", staged)

    def retire(self) -> None:
        """Take the candidate out of shadow (after its verdict, either way)."""
        import httpx

        url = f"{self.policy_url.rstrip('/')}/v1/models/{CANDIDATE_MODEL}:retire"
        httpx.post(url, timeout=self.timeout_s).raise_for_status()


CANDIDATE_MODEL = "policy-candidate"
"""The policy server's candidate (services/policy/candidate.py names it <model>-candidate)."""


class HelmClient(Protocol):
    """The two helm-python-sdk calls the cluster promoter makes (helm_python.Config)."""

    def upgrade(
        self, chart: Any, name: str, values: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any: ...

    def rollback(self, name: str, **kwargs: Any) -> None: ...


class InferenceServiceReader(Protocol):
    """kubernetes.client.CustomObjectsApi's read of one InferenceService."""

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any: ...


LiveCheck = Callable[[Revisions, str], Verdict]
"""Judges the canary (its Knative revisions and model version) against the teacher."""

HELM_BUSY = "another operation (install/upgrade/rollback) is in progress"
"""Helm's whole answer when a release is pending another operation. Helm reports it as text
only (its Go errPending), so the promoter recognises it by these words."""


HELM_STORAGE_DRIVER = "configmap"
"""Where Helm keeps this release's records; the chart's install docs (docs/cluster.md) install
with the same HELM_DRIVER, or the trainer would not see the release."""


class HelmBusy(RuntimeError):
    """The release is in the middle of another install, upgrade or rollback."""


class PromotionAborted(RuntimeError):
    """A step failed; `outcome` is what the promotion ends with (rollback already done)."""

    def __init__(self, outcome: PromotionOutcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome


def _revision(release: Any) -> int | None:
    """The release revision helm-python-sdk's upgrade answered with, where it says."""
    version = release.get("version") if isinstance(release, dict) else None
    version = version if version is not None else getattr(release, "version", None)
    return int(version) if isinstance(version, int | str) and str(version).isdigit() else None


def _raw_deployment(obj: dict[str, Any]) -> bool:
    annotations = obj.get("metadata", {}).get("annotations", {}) or {}
    return bool(annotations.get("serving.kserve.io/deploymentMode") == "RawDeployment")


class ClusterPromoter:
    """KServe's canary rollout of the student, through Helm upgrades of `release`:

    1. upgrade: the student serves `canary.traffic_percent` of the requests as canary; wait
       until the InferenceService is Ready with a new ready revision for the new generation;
    2. watch for `canary.window_s`, then judge its live figures against the teacher's
       (`live_check`: error rate, p99 latency, realised edge);
    3. upgrade again: the student becomes the teacher and the canary is cleared; wait Ready.

    Any failed step rolls the release back to the revision before step 1 and waits until the
    InferenceService is Ready again. Helm busy with another operation changes nothing and says
    so. Every way out is a PromotionOutcome, so the cycle publishes it on models.promotions.v1.
    """

    def __init__(
        self,
        *,
        release: str,
        chart: str | Path,
        namespace: str,
        storage_uri: Callable[[Path], str],
        canary: CanaryConfig | None = None,
        helm: HelmClient | None = None,
        k8s: InferenceServiceReader | None = None,
        ready_timeout_s: float = 600.0,
        poll_s: float = 5.0,
        live_check: LiveCheck | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.release, self.chart, self.namespace = release, chart, namespace
        self.storage_uri = storage_uri
        self.canary = canary or CanaryConfig()
        self._helm, self._k8s = helm, k8s
        self.ready_timeout_s, self.poll_s = ready_timeout_s, poll_s
        self.live_check = live_check
        self.sleep = sleep

    @property
    def helm(self) -> HelmClient:
        if self._helm is None:
            import helm_python

            # Helm's release records are ConfigMaps (HELM_DRIVER=configmap): the trainer's Role
            # (charts/rlmf/templates/trainer-rbac.yaml) grants them and no Secrets, which Helm's
            # default driver would read and write.
            self._helm = helm_python.Config(  # type: ignore[assignment]
                namespace=self.namespace, storage_driver=HELM_STORAGE_DRIVER
            )
        assert self._helm is not None
        return self._helm

    @property
    def k8s(self) -> InferenceServiceReader:
        if self._k8s is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._k8s = client.CustomObjectsApi()
        return self._k8s

    @property
    def isvc_name(self) -> str:
        # rlmf.fullname in the chart's _helpers.tpl
        base = self.release if "rlmf" in self.release else f"{self.release}-rlmf"
        return f"{base[:63].rstrip('-')}-policy"

    def canary_values(self, folder: Path) -> dict[str, Any]:
        """Step 1: the student as canary beside the teacher."""
        return {
            "policy": {
                "student": {
                    "storageUri": self.storage_uri(folder),
                    "canaryTrafficPercent": self.canary.traffic_percent,
                }
            }
        }

    def values(self, folder: Path) -> dict[str, Any]:
        """Step 3: the student is the teacher, the canary cleared."""
        return {
            "policy": {
                "teacher": {"storageUri": self.storage_uri(folder)},
                "student": {"storageUri": "", "canaryTrafficPercent": 0},
            }
        }

    def promote(self, folder: Path, version: str) -> PromotionOutcome:
        try:
            return self._rollout(folder, version)
        except PromotionAborted as exc:
            log.warning("promotion of %s ended: %s", version, exc.outcome.detail)
            return exc.outcome
        except Exception as exc:  # an API error no step expected: still an outcome to publish
            log.exception("promotion of %s failed", version)
            return PromotionOutcome(
                False,
                f"promotion failed: {exc!r}; see `helm history {self.release}` for what serves",
                stage="error",
            )

    def _rollout(self, folder: Path, version: str) -> PromotionOutcome:
        before = self._read()
        if _raw_deployment(before):
            return self._promote_without_canary(before, folder, version)
        serving_revision = str(predictor_status(before).get("latestCreatedRevision") or "")
        revision = self._upgrade(self.canary_values(folder), f"canary {version}", None)
        canary = self._wait_ready(generation(before), serving_revision, "canary", revision)
        if self.live_check is None:
            self._roll_back(revision, "live_check", "no live check configured to judge it")
        assert self.live_check is not None
        log.info("canary %s Ready; watching it for %.0f s", version, self.canary.window_s)
        self.sleep(self.canary.window_s)
        revisions = canary_revisions(self._read())
        if not revisions.canary or not revisions.teacher:
            self._roll_back(
                revision,
                "live_check",
                "the InferenceService reports no canary and teacher revisions to compare "
                "(Knative has not reported the revisions it routes to)",
            )
        verdict = self.live_check(revisions, version)
        if not verdict.healthy:
            self._roll_back(revision, "live_check", verdict.detail)
        self._upgrade(self.values(folder), f"promote {version}", revision)
        self._wait_ready(canary.generation, None, "promote", revision)
        return PromotionOutcome(
            True,
            f"release {self.release} serves {version} as teacher after its canary at "
            f"{self.canary.traffic_percent}%: {verdict.detail}",
            version,
            stage="promote",
        )

    def _promote_without_canary(
        self, before: dict[str, Any], folder: Path, version: str
    ) -> PromotionOutcome:
        """RawDeployment has no canary split (KServe splits traffic between Knative revisions
        only): one upgrade makes the student the teacher, and a rollback follows unless it
        gets Ready."""
        revision = self._upgrade(self.values(folder), f"promote {version}", None)
        self._wait_ready(generation(before), None, "promote", revision)
        return PromotionOutcome(
            True,
            f"release {self.release} serves {version} as teacher (RawDeployment: no canary "
            "split, so no canary stage)",
            version,
            stage="promote",
        )

    # -- steps ------------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        obj = self.k8s.get_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", self.namespace, "inferenceservices", self.isvc_name
        )
        return dict(obj)

    def _upgrade(self, values: dict[str, Any], what: str, canary_revision: int | None) -> Any:
        """One `helm upgrade --reuse-values`; returns the new release revision. A failure
        before the canary exists changes nothing to undo; after it, the release goes back."""
        try:
            answer = self.helm.upgrade(
                self.chart,
                self.release,
                values,
                namespace=self.namespace,
                reuse_values=True,
                description=f"rlmf trainer: {what}",
            )
        except Exception as exc:  # helm-python-sdk raises its own and subprocess errors
            busy = HELM_BUSY in str(exc)
            stage = "helm_busy" if busy else "helm"
            why = (
                f"helm: {HELM_BUSY} on release {self.release}; try the next cycle"
                if busy
                else f"helm upgrade ({what}) failed: {exc}"
            )
            if canary_revision is None:
                raise PromotionAborted(
                    PromotionOutcome(False, f"{why}; nothing changed", stage=stage)
                ) from exc
            self._roll_back(canary_revision, stage, why)
        return _revision(answer)

    def _wait_ready(
        self, after_generation: int, serving_revision: str | None, stage: str, revision: int | None
    ) -> Readiness:
        state = self._poll_ready(after_generation, serving_revision)
        if not state.ready:
            self._roll_back(revision, stage, f"{self.isvc_name} not Ready in time: {state.why}")
        return state

    def _poll_ready(self, after_generation: int, serving_revision: str | None) -> Readiness:
        waited = 0.0
        while True:
            state = readiness(
                self._read(), after_generation=after_generation, new_revision_after=serving_revision
            )
            if state.ready or waited >= self.ready_timeout_s:
                return state
            self.sleep(self.poll_s)
            waited += self.poll_s

    def _roll_back(self, canary_revision: int | None, stage: str, why: str) -> None:
        """Back to the revision before the canary; wait until it serves; then abort."""
        log.warning("rolling back %s: %s", self.release, why)
        generation_before = generation(self._read())
        target = {"version": canary_revision - 1} if canary_revision else {}
        try:
            self.helm.rollback(self.release, **target)  # no revision: the previous one
        except Exception as exc:  # the rollback itself failed: people must step in
            raise PromotionAborted(
                PromotionOutcome(False, f"{why}; helm rollback failed too: {exc}", stage=stage)
            ) from exc
        back = self._poll_ready(generation_before, None)
        waited = "the previous teacher is Ready" if back.ready else f"not Ready yet: {back.why}"
        raise PromotionAborted(
            PromotionOutcome(
                False,
                f"{why}; rolled back to the previous revision ({waited})",
                rolled_back=True,
                stage=stage,
            )
        )

    @classmethod
    def from_settings(cls, settings: Any) -> ClusterPromoter:
        """From TrainerSettings: the canary's live figures come from Prometheus."""
        from services.trainer.live_checks import LiveCheck as PrometheusLiveCheck
        from services.trainer.live_checks import prometheus_query

        canary: CanaryConfig = settings.canary
        if not canary.prometheus_url:
            raise ValueError(
                "cluster promotion needs RLMF_TRAINER_CANARY__PROMETHEUS_URL: a canary that "
                "is never judged would be promoted blind"
            )
        return cls(
            release=settings.helm_release,
            chart=settings.helm_chart,
            namespace=settings.namespace,
            storage_uri=lambda folder: f"pvc://{settings.models_claim}/{folder.name}",
            canary=canary,
            ready_timeout_s=settings.ready_timeout_s,
            live_check=PrometheusLiveCheck(
                canary, settings.namespace, prometheus_query(canary.prometheus_url)
            ),
        )

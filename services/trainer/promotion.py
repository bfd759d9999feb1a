"""Promotion, one interface and two ways: embedded (the policy server reloads a folder) and cluster
(a Helm upgrade moves the student from canary to teacher; rolled back if it does not get Ready)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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


def inference_service_ready(obj: dict[str, Any]) -> bool:
    """KServe's Ready condition is True for the generation the upgrade produced."""
    status = obj.get("status", {})
    if status.get("observedGeneration", 0) < obj.get("metadata", {}).get("generation", 0):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
    )


class ClusterPromoter:
    """Helm upgrade of `release` making the student's storageUri the teacher's (canary cleared),
    then wait for the InferenceService to be Ready; `helm rollback` to the previous revision if
    it is not Ready in time or `live_check` says its live metrics are below the teacher's."""

    def __init__(
        self,
        *,
        release: str,
        chart: str | Path,
        namespace: str,
        storage_uri: Callable[[Path], str],
        helm: HelmClient | None = None,
        k8s: InferenceServiceReader | None = None,
        ready_timeout_s: float = 600.0,
        poll_s: float = 5.0,
        live_check: Callable[[], bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.release, self.chart, self.namespace = release, chart, namespace
        self.storage_uri = storage_uri
        self._helm, self._k8s = helm, k8s
        self.ready_timeout_s, self.poll_s = ready_timeout_s, poll_s
        self.live_check = live_check
        self.sleep = sleep

    @property
    def helm(self) -> HelmClient:
        if self._helm is None:
            import helm_python

            self._helm = helm_python.Config(namespace=self.namespace)  # type: ignore[assignment]
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

    def values(self, folder: Path) -> dict[str, Any]:
        return {
            "policy": {
                "teacher": {"storageUri": self.storage_uri(folder)},
                "student": {"storageUri": "", "canaryTrafficPercent": 0},
            }
        }

    def promote(self, folder: Path, version: str) -> PromotionOutcome:
        self.helm.upgrade(
            self.chart,
            self.release,
            self.values(folder),
            namespace=self.namespace,
            reuse_values=True,
            description=f"rlmf trainer: promote {version}",
        )
        ready = self._wait_ready()
        healthy = ready and (self.live_check is None or self.live_check())
        if healthy:
            return PromotionOutcome(
                True, f"release {self.release} serves {version}; {self.isvc_name} Ready", version
            )
        why = "not Ready in time" if not ready else "live metrics below the teacher's"
        log.warning("rolling back %s: %s", self.release, why)
        self.helm.rollback(self.release)  # None: the previous revision
        return PromotionOutcome(
            False, f"{self.isvc_name} {why}; rolled back to the previous revision", rolled_back=True
        )

    def _wait_ready(self) -> bool:
        waited = 0.0
        while True:
            obj = self.k8s.get_namespaced_custom_object(
                "serving.kserve.io", "v1beta1", self.namespace, "inferenceservices", self.isvc_name
            )
            if inference_service_ready(obj):
                return True
            if waited >= self.ready_timeout_s:
                return False
            self.sleep(self.poll_s)
            waited += self.poll_s

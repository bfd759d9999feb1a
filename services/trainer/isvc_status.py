"""Reading a KServe InferenceService's own status: is the generation a Helm upgrade produced Ready,
and which revisions serve the canary and the teacher.

KServe copies some generations from the Deployment it owns, and an HPA scaling that Deployment
moves them; so readiness here is judged from the InferenceService's own fields only:
metadata.generation against status.observedGeneration, its Ready and PredictorReady conditions,
and for a canary the predictor's latestCreatedRevision against latestReadyRevision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Readiness:
    """Whether the InferenceService serves the generation asked for, and if not, why."""

    ready: bool
    why: str
    generation: int = 0


def generation(obj: dict[str, Any]) -> int:
    return int(obj.get("metadata", {}).get("generation", 0) or 0)


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in obj.get("status", {}).get("conditions", []) or []}


def predictor_status(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status", {}).get("components", {}).get("predictor", {}) or {})


def readiness(
    obj: dict[str, Any], *, after_generation: int = 0, new_revision_after: str | None = None
) -> Readiness:
    """Ready for a generation newer than `after_generation` (the one before the upgrade).

    `new_revision_after`: a canary is asked for, so the predictor's latest created revision
    must differ from this one (the revision serving before the upgrade) and be the latest
    ready one. Knative revisions exist in Serverless mode only; without them (RawDeployment)
    the generation and conditions decide."""
    gen = generation(obj)
    observed = int(obj.get("status", {}).get("observedGeneration", 0) or 0)
    if gen <= after_generation:
        return Readiness(False, f"generation {gen} is not newer than {after_generation}", gen)
    if observed < gen:
        return Readiness(False, f"status observes generation {observed} of {gen}", gen)
    conditions = _conditions(obj)
    for name in ("PredictorReady", "Ready"):
        condition = conditions.get(name, {})
        if condition.get("status") != "True":
            reason = condition.get("reason") or condition.get("message") or "not reported"
            return Readiness(False, f"{name} is not True ({reason})", gen)
    if new_revision_after is not None:
        predictor = predictor_status(obj)
        created = predictor.get("latestCreatedRevision")
        if created is not None:
            if created == new_revision_after:
                return Readiness(False, f"no new revision yet ({created} serves)", gen)
            if predictor.get("latestReadyRevision") != created:
                return Readiness(False, f"revision {created} is not ready", gen)
    return Readiness(True, "Ready", gen)


def inference_service_ready(obj: dict[str, Any]) -> bool:
    """KServe's Ready and PredictorReady conditions are True for the InferenceService's current
    generation."""
    return readiness(obj).ready


@dataclass(frozen=True)
class Revisions:
    """The Knative revisions serving the canary and the teacher (empty in Standard mode)."""

    canary: str
    teacher: str


def _traffic(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(t) for t in predictor_status(obj).get("traffic", []) or []]


def canary_revisions(obj: dict[str, Any]) -> Revisions:
    """During a canary KServe routes `canaryTrafficPercent` to the latest revision and the rest
    to the last revision that was rolled out whole, tagged `prev` (ksvc_reconciler.go), and
    keeps that revision in `latestRolledoutRevision` (PropagateStatus moves it into
    `previousRolledoutRevision` only once a new revision has had 100%). So the teacher is the
    `prev` route's revision, else `latestRolledoutRevision`; `previousRolledoutRevision` is the
    teacher's own predecessor and serves nothing."""
    predictor = predictor_status(obj)
    routes = _traffic(obj)
    canary = next(
        (str(t.get("revisionName") or "") for t in routes if t.get("latestRevision") is True), ""
    )
    canary = canary or str(predictor.get("latestReadyRevision") or "")
    teacher = next((str(t.get("revisionName") or "") for t in routes if t.get("tag") == "prev"), "")
    teacher = teacher or str(predictor.get("latestRolledoutRevision") or "")
    # The latest revision rolled out whole is no teacher to compare a canary with.
    return Revisions(canary, "" if teacher == canary else teacher)


def pinned_to_prev(obj: dict[str, Any]) -> str:
    """The `prev` revision when every request goes to it (`canaryTrafficPercent: 0`, KServe's
    documented rollback): the route tagged `prev` has 100% and the latest revision 0%. Empty
    while any share still reaches the latest revision."""
    routes = _traffic(obj)
    prev = [t for t in routes if t.get("tag") == "prev" and t.get("percent") == 100]
    latest_share = sum(int(t.get("percent") or 0) for t in routes if t.get("latestRevision"))
    if len(prev) != 1 or latest_share != 0:
        return ""
    return str(prev[0].get("revisionName") or "")


def serving_revisions(obj: dict[str, Any]) -> set[str]:
    """The revisions that receive a share of the requests now."""
    return {
        str(t.get("revisionName") or "") for t in _traffic(obj) if int(t.get("percent") or 0) > 0
    }


DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
KNATIVE, STANDARD = "Knative", "Standard"
_MODES = {
    "Serverless": KNATIVE,
    "Knative": KNATIVE,
    "RawDeployment": STANDARD,
    "Standard": STANDARD,
}
"""KServe up to 0.16 writes Serverless / RawDeployment; from 0.17 its defaulting webhook rewrites
them to Knative / Standard (constants.ParseDeploymentMode), so the live object may carry either
name whatever the chart wrote."""


def deployment_mode(obj: dict[str, Any]) -> str:
    """Knative, Standard, or the unknown value as written (ModelMesh, empty): from the
    annotation the webhook sets, else status.deploymentMode (reported by newer KServe)."""
    annotations = obj.get("metadata", {}).get("annotations", {}) or {}
    raw = str(annotations.get(DEPLOYMENT_MODE) or obj.get("status", {}).get("deploymentMode") or "")
    return _MODES.get(raw, raw)


def storage_uri(obj: dict[str, Any]) -> str:
    """The model location the predictor's container runs with (STORAGE_URI, which KServe's
    storage initializer copies), else spec.predictor.model.storageUri."""
    predictor = obj.get("spec", {}).get("predictor", {}) or {}
    for container in predictor.get("containers", []) or []:
        for env in container.get("env", []) or []:
            if env.get("name") == "STORAGE_URI":
                return str(env.get("value") or "")
    return str((predictor.get("model") or {}).get("storageUri") or "")


def canary_percent(obj: dict[str, Any]) -> int | None:
    value = (obj.get("spec", {}).get("predictor", {}) or {}).get("canaryTrafficPercent")
    return None if value is None else int(value)

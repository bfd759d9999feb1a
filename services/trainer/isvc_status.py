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
    """The Knative revisions serving the canary and the teacher (empty in RawDeployment)."""

    canary: str
    teacher: str


def canary_revisions(obj: dict[str, Any]) -> Revisions:
    predictor = predictor_status(obj)
    teacher = str(predictor.get("previousRolledoutRevision") or "")
    for route in predictor.get("traffic", []) or []:
        if route.get("tag") == "prev" and not teacher:
            teacher = str(route.get("revisionName") or "")
    return Revisions(str(predictor.get("latestReadyRevision") or ""), teacher)

"""Promotion, one interface and two ways: embedded (the policy server reloads a folder) and cluster
(KServe's canary rollout through Helm: the student serves a share of requests as canary, its live
figures are judged against the teacher's, then it becomes the teacher or is rolled back)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from services.trainer.canary import CanaryConfig, Verdict
from services.trainer.isvc_status import (
    KNATIVE,
    STANDARD,
    Readiness,
    Revisions,
    canary_percent,
    canary_revisions,
    deployment_mode,
    generation,
    pinned_to_prev,
    predictor_status,
    readiness,
    serving_revisions,
    storage_uri,
)
from services.trainer.promotion_outcome import PromotionOutcome as PromotionOutcome

log = logging.getLogger(__name__)


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


class InferenceServiceApi(Protocol):
    """kubernetes.client.CustomObjectsApi's read and merge patch of one InferenceService."""

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any: ...

    def patch_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        **kwargs: Any,
    ) -> Any: ...


LiveCheck = Callable[[Revisions, str, str], Verdict]
"""Judges the canary (its Knative revisions, its model version, the teacher's model version):
errors and latency only; P&L is the backtest gate's and shadow trading's to judge."""

FIELD_MANAGER = "rlmf-trainer"
"""The trainer's name in the InferenceService's managedFields for its own patches (the pin)."""


def _parent_version(folder: Path) -> str:
    """The teacher's version: the student's manifest names the version it was trained from."""
    from services.policy.artifacts import read_manifest

    return read_manifest(folder).parent_version or ""


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


def _pre_canary_target(canary_revision: int | None) -> dict[str, int]:
    """`helm rollback` arguments back to the release before the canary. Unknown revision: the
    canary upgrade failed after Helm recorded it (Helm writes the new record before it changes
    any object), so the previous revision is the one before the failed record."""
    return {"version": canary_revision - 1} if canary_revision else {}


def _changes(before: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """What differs on the InferenceService since `before`, in words (empty: nothing)."""
    found = []
    if generation(live) != generation(before):
        found.append(f"generation {generation(before)} -> {generation(live)}")
    if storage_uri(live) != storage_uri(before):
        found.append(f"model {storage_uri(before) or '?'} -> {storage_uri(live) or '?'}")
    if canary_percent(live) != canary_percent(before):
        found.append(f"canaryTrafficPercent {canary_percent(before)} -> {canary_percent(live)}")
    return found


class ClusterPromoter:
    """A Helm upgrade of `release` makes the student serve. Which way depends on the live
    InferenceService's deployment mode (KServe writes Serverless/RawDeployment up to 0.16 and
    Knative/Standard from 0.17; both names are read):

    Knative (KServe's canary rollout, every KServe version):
    1. upgrade: the student serves `canary.traffic_percent` of the requests as canary; wait
       until the InferenceService is Ready with a new ready revision for the new generation;
    2. watch for `canary.window_s`, then judge the canary version's error rate and p99 latency
       against the teacher version's (`live_check`). An operational check: P&L is judged
       before, by the backtest gate and shadow trading, not by a canary window;
    3. upgrade again: the student becomes the teacher and the canary is cleared; wait Ready.

    Standard (a Deployment; KServe splits no traffic, `canaryTrafficPercent` does not exist): the
    student must bring shadow evidence (`shadow_evidence`); one upgrade, a readiness wait, and
    a check that the live predictor runs the student's model location.

    Any failed step rolls back (`_roll_back`): under Knative the canary is first pinned to 0%
    (`prev` takes every request, KServe's documented rollback) and only then is the release
    record restored. After any failed upgrade the live InferenceService is read back: what it
    shows is reported, and repaired where it changed. Helm busy with another operation changes
    nothing and says so. Every way out is a PromotionOutcome, published on models.promotions.v1.
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
        k8s: InferenceServiceApi | None = None,
        ready_timeout_s: float = 600.0,
        poll_s: float = 5.0,
        live_check: LiveCheck | None = None,
        teacher_version: Callable[[Path], str] = _parent_version,
        shadow_evidence: Callable[[str], str | None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.release, self.chart, self.namespace = release, chart, namespace
        self.storage_uri = storage_uri
        self.canary = canary or CanaryConfig()
        self._helm, self._k8s = helm, k8s
        self.ready_timeout_s, self.poll_s = ready_timeout_s, poll_s
        self.live_check = live_check
        self.teacher_version = teacher_version
        self.shadow_evidence = shadow_evidence
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
    def k8s(self) -> InferenceServiceApi:
        if self._k8s is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            # Its generated signatures are stricter than the two calls this class makes.
            self._k8s = client.CustomObjectsApi()  # type: ignore[assignment]
        assert self._k8s is not None
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
                f"promotion failed: {exc!r}; see `helm history {self.release}` and the "
                f"InferenceService {self.isvc_name} for what serves",
                stage="error",
            )

    def _rollout(self, folder: Path, version: str) -> PromotionOutcome:
        before = self._read()
        mode = deployment_mode(before)
        if mode == STANDARD:
            return self._promote_standard(before, folder, version)
        if mode != KNATIVE:
            raise PromotionAborted(
                PromotionOutcome(
                    False,
                    f"{self.isvc_name} runs in deployment mode {mode or 'unknown'!r}; the trainer "
                    "promotes under Knative/Serverless or Standard/RawDeployment only; nothing "
                    "changed",
                    stage="mode",
                )
            )
        teacher_version = self.teacher_version(folder)  # before anything changes: it can fail
        serving_revision = str(predictor_status(before).get("latestCreatedRevision") or "")
        revision = self._upgrade(self.canary_values(folder), f"canary {version}", None, before)
        canary = self._wait_ready(generation(before), serving_revision, "canary", revision, before)
        if self.live_check is None:
            self._roll_back(revision, "live_check", "no live check configured to judge it", before)
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
                before,
            )
        verdict = self.live_check(revisions, version, teacher_version)
        if not verdict.healthy:
            self._roll_back(revision, "live_check", verdict.detail, before)
        during = self._read()
        self._upgrade(self.values(folder), f"promote {version}", revision, before, during)
        self._wait_ready(canary.generation, None, "promote", revision, before)
        return PromotionOutcome(
            True,
            f"release {self.release} serves {version} as teacher after its canary at "
            f"{self.canary.traffic_percent}%: {verdict.detail}",
            version,
            stage="promote",
        )

    def _promote_standard(
        self, before: dict[str, Any], folder: Path, version: str
    ) -> PromotionOutcome:
        """Standard mode (RawDeployment) has no canary split: KServe splits traffic between
        Knative revisions only (`spec.canary[]` for Standard comes with KServe 0.20 and is not
        used). So the student is promoted only on its shadow evidence, then verified: Ready
        for the new generation and running the student's model location; else rolled back."""
        evidence = self.shadow_evidence(version) if self.shadow_evidence else None
        if not evidence:
            raise PromotionAborted(
                PromotionOutcome(
                    False,
                    f"{self.isvc_name} runs in Standard mode (no canary split): {version} is "
                    "promoted there only after it passed shadow trading, and no shadow verdict "
                    "for it was found (RLMF_TRAINER_SHADOW_BARS); nothing changed",
                    stage="shadow",
                )
            )
        revision = self._upgrade(self.values(folder), f"promote {version}", None, before)
        self._wait_ready(generation(before), None, "promote", revision, before)
        live = storage_uri(self._read())
        if live != self.storage_uri(folder):
            self._roll_back(
                revision, "promote", f"the predictor runs {live!r}, not the student", before
            )
        return PromotionOutcome(
            True,
            f"release {self.release} serves {version} as teacher (Standard mode: no canary "
            f"split, so no canary stage; promoted on {evidence})",
            version,
            stage="promote",
        )

    # -- steps ------------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        obj = self.k8s.get_namespaced_custom_object(*self._isvc)
        return dict(obj)

    @property
    def _isvc(self) -> tuple[str, str, str, str, str]:
        return ("serving.kserve.io", "v1beta1", self.namespace, "inferenceservices", self.isvc_name)

    def _upgrade(
        self,
        values: dict[str, Any],
        what: str,
        canary_revision: int | None,
        before: dict[str, Any],
        step_before: dict[str, Any] | None = None,
    ) -> Any:
        """One `helm upgrade --reuse-values`; returns the new release revision. On a failure
        the live InferenceService is read back: unchanged since the step began is said so;
        changed (Helm applies object by object, and stops or fails part way) is rolled back."""
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
            changed = _changes(step_before or before, self._read())
            if canary_revision is None and busy and changed:
                # Changed by the operation in progress, not by this upgrade: left to its owner.
                raise PromotionAborted(
                    PromotionOutcome(
                        False,
                        f"{why}; read back, {self.isvc_name} shows {', '.join(changed)} from "
                        "that operation, left alone",
                        stage=stage,
                    )
                ) from exc
            if canary_revision is None and not changed:
                raise PromotionAborted(
                    PromotionOutcome(
                        False,
                        f"{why}; read back, {self.isvc_name} is unchanged "
                        f"(generation {generation(before)}): nothing changed",
                        stage=stage,
                    )
                ) from exc
            if changed:
                why = f"{why}; yet {self.isvc_name} changed ({', '.join(changed)})"
            self._roll_back(canary_revision, stage, why, before)
        return _revision(answer)

    def _wait_ready(
        self,
        after_generation: int,
        serving_revision: str | None,
        stage: str,
        revision: int | None,
        before: dict[str, Any],
    ) -> Readiness:
        state = self._poll_ready(after_generation, serving_revision)
        if not state.ready:
            why = f"{self.isvc_name} not Ready in time: {state.why}"
            self._roll_back(revision, stage, why, before)
        return state

    def _poll(self, done: Callable[[dict[str, Any]], bool]) -> tuple[bool, dict[str, Any]]:
        """Read the InferenceService until `done` says so or the ready timeout passes."""
        waited = 0.0
        while True:
            obj = self._read()
            if done(obj) or waited >= self.ready_timeout_s:
                return done(obj), obj
            self.sleep(self.poll_s)
            waited += self.poll_s

    def _poll_ready(self, after_generation: int, serving_revision: str | None) -> Readiness:
        _, obj = self._poll(
            lambda o: (
                readiness(
                    o, after_generation=after_generation, new_revision_after=serving_revision
                ).ready
            )
        )
        return readiness(
            obj, after_generation=after_generation, new_revision_after=serving_revision
        )

    def _roll_back(
        self, canary_revision: int | None, stage: str, why: str, before: dict[str, Any]
    ) -> None:
        """Back to the release before the promotion, verified; then abort with what was seen."""
        log.warning("rolling back %s: %s", self.release, why)
        if deployment_mode(before) == KNATIVE:
            back, done = self._roll_back_knative(canary_revision, before)
        else:
            back, done = self._roll_back_standard(canary_revision, before)
        raise PromotionAborted(
            PromotionOutcome(False, f"{why}; {done}", rolled_back=back, stage=stage)
        )

    def _restore_record(self, canary_revision: int | None) -> str | None:
        """`helm rollback` to the release before the canary; the error in words, if any."""
        try:
            self.helm.rollback(self.release, **_pre_canary_target(canary_revision))
        except Exception as exc:  # the rollback itself failed: people must step in
            return f"helm rollback failed too: {exc}"
        return None

    def _roll_back_knative(
        self, canary_revision: int | None, before: dict[str, Any]
    ) -> tuple[bool, str]:
        """KServe's documented rollback, in this order:
        1. pin: `canaryTrafficPercent: 0` on the live InferenceService, so `prev` (the teacher's
           revision) takes every request; before anything else, because a restored spec
           without the field sends 100% to the latest *ready* revision (the student's) until
           the revision it builds is Ready;
        2. wait until the status routes 100% to `prev`;
        3. restore the release record (`helm rollback`). Server-side apply leaves the pin (the
           trainer's field); a client-side-applied release drops it, so it is put back at once;
        4. wait until the revision the restore built is Ready, then drop the pin;
        5. verify the student's revision receives no requests."""
        self._patch_canary_percent(0)
        pinned, obj = self._poll(lambda o: bool(pinned_to_prev(o)))
        student = str(predictor_status(obj).get("latestCreatedRevision") or "")
        new_student = student != str(predictor_status(before).get("latestCreatedRevision") or "")
        pin = f"pinned to {pinned_to_prev(obj)}" if pinned else "the pin to prev is not shown yet"
        failed = self._restore_record(canary_revision)
        if failed is not None:
            return False, f"{pin}; {failed}: the release record and {self.isvc_name} disagree"
        if canary_percent(self._read()) is None:
            self._patch_canary_percent(0)
        # Ready on a revision newer than the student's: the teacher's spec, built again.
        back = self._poll_ready(generation(obj), student if new_student else None)
        if back.ready and canary_percent(before) is None:
            self._patch_canary_percent(None)
            back = self._poll_ready(back.generation, None)
        live = self._read()
        if new_student and student in serving_revisions(live):
            return False, f"{pin}; rolled back, yet revision {student} (the student) still serves"
        state = (
            "the previous teacher is Ready"
            if back.ready
            else f"not Ready yet: {back.why}; prev keeps every request meanwhile"
        )
        return True, f"{pin}; rolled back to the previous revision ({state})"

    def _roll_back_standard(
        self, canary_revision: int | None, before: dict[str, Any]
    ) -> tuple[bool, str]:
        """Restore the release record, wait Ready, and verify the predictor runs the teacher's
        model location again (a Deployment rolls its pods; there is no revision to pin)."""
        generation_before = generation(self._read())
        failed = self._restore_record(canary_revision)
        if failed is not None:
            return False, failed
        back = self._poll_ready(generation_before, None)
        live = storage_uri(self._read())
        if live != storage_uri(before):
            return (
                False,
                f"rolled back, yet the predictor runs {live!r}, not {storage_uri(before)!r}",
            )
        state = "the previous teacher is Ready" if back.ready else f"not Ready yet: {back.why}"
        return True, f"rolled back to the previous revision ({state}, running {live})"

    def _patch_canary_percent(self, percent: int | None) -> None:
        """A JSON merge patch of the predictor's canaryTrafficPercent (None removes it), the
        one field besides the model location the trainer changes outside Helm."""
        body = {"spec": {"predictor": {"canaryTrafficPercent": percent}}}
        self.k8s.patch_namespaced_custom_object(
            *self._isvc,
            body,
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
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
            shadow_evidence=lambda version: shadow_evidence(settings.work_dir, version),
        )


def shadow_evidence(work_dir: Path, version: str) -> str | None:
    """The shadow stretch `version` completed, in words; None when it did not trade in shadow.
    The shadow judge (services/trainer/shadow.py) promotes only after its verdict passed, with
    the candidate still recorded: so a recorded candidate of this version with all the bars it
    waited for is the evidence Standard mode promotes on."""
    from services.trainer.shadow import ShadowFiles, shadow_series

    files = ShadowFiles(work_dir)
    candidate = files.read_candidate()
    if candidate is None or candidate.version != version:
        return None
    times, _ = shadow_series(files.shadow_bars(version))
    if len(times) < max(candidate.needed, 1):
        return None
    return f"{len(times)} shadow bars ({times[0]} to {times[-1]})"

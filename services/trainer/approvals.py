"""The trainer's side of artifact integrity: it trains only on a teacher whose manifest is
signed and whose approval is valid, and a promotion writes the student's signed approval
(services/policy/approval.py) before the policy server is asked to serve it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.trainer.gate import GateDecision
from services.trainer.plan import CycleError
from services.trainer.settings import TrainerSettings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from services.policy.approval import Evidence

log = logging.getLogger(__name__)


def approval_signing_key(settings: TrainerSettings) -> Path | None:
    return settings.approval_signing_key_file or settings.artifact_signing_key_file


def _keys(settings: TrainerSettings) -> tuple[Ed25519PublicKey | None, Ed25519PublicKey | None]:
    """The keys the teacher is checked with: its manifest's, its approval's."""
    from services.policy.artifact_signing import load_public_key, public_key_of

    manifest_key = None
    if settings.artifact_public_key_file is not None:
        manifest_key = load_public_key(settings.artifact_public_key_file)
    elif settings.artifact_signing_key_file is not None:
        manifest_key = public_key_of(settings.artifact_signing_key_file)
    approval_file = approval_signing_key(settings)
    return manifest_key, None if approval_file is None else public_key_of(approval_file)


@contextmanager
def verified_teacher(settings: TrainerSettings, folder: Path) -> Iterator[tuple[Any, Path]]:
    """(manifest, a private copy of the teacher at `folder`), once its manifest's hashes and
    signature and its approval have been checked; the copy is removed on exit. Read the
    teacher only from the copy: `current` sits on a volume other pods can write, and a student
    built on a forged teacher would be signed as the trainer's own.

    Raises:
        CycleError: naming the folder and what failed.
    """
    from services.policy.approval import ApprovalError, read_approval
    from services.policy.artifact_signing import SigningError
    from services.policy.artifacts import MANIFEST, ArtifactError, verified_copy

    try:
        manifest_key, approval_key = _keys(settings)
        with verified_copy(folder, manifest_key) as (manifest, copy):
            approval = read_approval(folder, (copy / MANIFEST).read_bytes(), approval_key)
            log.info("teacher %s verified (approval %d)", manifest.version, approval.sequence)
            yield manifest, copy
    except (ArtifactError, ApprovalError, SigningError) as exc:
        raise CycleError(f"teacher refused, nothing trained: {exc}") from exc


def load_teacher(settings: TrainerSettings, folder: Path, dtype: str | None) -> Any:
    """The teacher at `folder`, loaded from its verified copy (`verified_teacher`)."""
    from services.policy.artifacts import load_verified

    with verified_teacher(settings, folder) as (manifest, copy):
        return load_verified(copy, manifest, dtype=dtype, shown=folder)


def gate_evidence(gate: GateDecision) -> Evidence:
    """The backtest gate's decision as an approval's evidence."""
    from services.policy.approval import Evidence

    figures = {
        name: float(value)
        for name in ("sharpe_diff", "sharpe_diff_low", "sharpe_diff_high", "confidence")
        if (value := getattr(gate, name)) is not None
    }
    figures["holdout_bars"] = float(gate.holdout_bars)
    if gate.shadow is not None:
        figures["shadow_sharpe_diff"] = float(gate.shadow.point)
        figures["shadow_p_value"] = float(gate.shadow.p_value)
    stage = "shadow" if gate.shadow is not None else "gate"
    return Evidence(stage=stage, p_value=gate.p_value, figures=figures)


def approve_promotion(settings: TrainerSettings, folder: Path, evidence: Evidence) -> None:
    """Approve the student at `folder` to serve, numbered above every approval in models_dir
    (and the teacher's folder, when it lives elsewhere).

    Raises:
        CycleError: the approval could not be written (no manifest, an unusable key).
    """
    from services.policy.approval import ApprovalError, approve_artifact, next_sequence
    from services.policy.artifacts import ArtifactError

    roots = {settings.models_dir, folder.parent}
    if settings.teacher_dir is not None:
        roots.add(settings.teacher_dir.parent)
    try:
        approve_artifact(
            folder,
            sequence=next_sequence(*sorted(roots)),
            evidence=evidence,
            signing_key=approval_signing_key(settings),
        )
    except (ApprovalError, ArtifactError) as exc:
        raise CycleError(f"cannot approve {folder}: {exc}") from exc

"""Approval records: the promotion decision, signed apart from the artifact's origin.

A manifest signature (artifact_signing.py) shows who built a folder; every student carries one,
rejected ones too. An approval says that one version may serve: `approval.json` inside the
artifact folder names the version, its parent, the sha256 of the exact manifest it approves,
the evidence it was approved on (the stage that decided and its p-value) and a sequence number
that every new approval raises. `approval.sig` beside it is the Ed25519 signature of
approval.json's bytes. Neither file is listed in the manifest: a folder is built once and
approved later. The policy server serves as its model only an approved version whose sequence
is not lower than the one it served before, so an old, rejected or copied folder is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.policy.artifact_signing import SigningError, load_private_key, sign_bytes

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)

APPROVAL = "approval.json"
APPROVAL_SIGNATURE = "approval.sig"
APPROVAL_KIND: Final = "rlmf.policy.approval/v1"
"""Written into every record, so a signed approval can never pass for a signed manifest (and a
manifest, which has no such field, never for an approval)."""


class ApprovalError(RuntimeError):
    """A folder has no valid approval, or an approval cannot be written."""


class Evidence(BaseModel):
    """What the promotion was decided on."""

    model_config = ConfigDict(extra="forbid")

    stage: str = Field(min_length=1)
    """init (the version-0 teacher), gate (the backtest gate alone) or shadow (the backtest
    pooled with the shadow bars)."""
    p_value: float | None = None
    """The deciding test's p-value (the gate's, or the pooled one after shadow)."""
    figures: dict[str, float] = Field(default_factory=dict)
    """Further numbers of that decision (sharpe_diff, shadow_p_value, shadow_bars ...)."""


MANIFEST = "manifest.json"
"""The artifact's manifest (services/policy/artifacts.py's MANIFEST), named here too: the
artifact module imports approvals (init_artifact approves v0), so approvals read the manifest
as JSON rather than import it back."""


class Approval(BaseModel):
    """approval.json."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["rlmf.policy.approval/v1"] = APPROVAL_KIND
    version: str = Field(min_length=1)
    parent_version: str | None = None
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    sequence: int = Field(ge=0)
    evidence: Evidence
    approved_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def approve_artifact(
    folder: Path,
    *,
    sequence: int,
    evidence: Evidence,
    signing_key: Path | None = None,
) -> Approval:
    """Write `folder`'s approval (signed with `signing_key`, an Ed25519 private key PEM, when
    given). The signature is written before the record, so a signed record never appears
    unsigned; a reader that races the two writes sees a signature that does not match yet and
    refuses, which is the safe side.

    Raises:
        ApprovalError: no readable manifest, or the key cannot sign.
    """
    folder = Path(folder)
    try:
        manifest_bytes = (folder / MANIFEST).read_bytes()
        manifest = json.loads(manifest_bytes)
        version, parent = str(manifest["version"]), manifest.get("parent_version")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ApprovalError(f"cannot approve {folder}: no readable {MANIFEST} ({exc})") from exc
    record = Approval(
        version=version,
        parent_version=parent,
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        sequence=sequence,
        evidence=evidence,
    )
    data = record.model_dump_json(indent=2).encode()
    if signing_key is not None:
        try:
            key = load_private_key(signing_key)
        except SigningError as exc:
            raise ApprovalError(f"cannot approve {folder}: {exc}") from exc
        _write_atomically(folder / APPROVAL_SIGNATURE, sign_bytes(key, data))
    else:
        (folder / APPROVAL_SIGNATURE).unlink(missing_ok=True)
    _write_atomically(folder / APPROVAL, data)
    log.info("approved %s as sequence %d (%s)", version, sequence, evidence.stage)
    return record


def withdraw_approval(folder: Path) -> None:
    """Remove `folder`'s approval: its promotion did not happen (refused, rolled back)."""
    (Path(folder) / APPROVAL).unlink(missing_ok=True)
    (Path(folder) / APPROVAL_SIGNATURE).unlink(missing_ok=True)


def read_approval(
    folder: Path, manifest_bytes: bytes, public_key: Ed25519PublicKey | None
) -> Approval:
    """`folder`'s approval of exactly `manifest_bytes` (the verified manifest), its signature
    checked with `public_key` when given.

    Raises:
        ApprovalError: no approval, a bad signature, or a record for another manifest.
    """
    from services.policy.artifact_signing import verify_bytes

    folder = Path(folder)
    try:
        data = (folder / APPROVAL).read_bytes()
    except OSError as exc:
        raise ApprovalError(
            f"{folder}: not approved to serve (no {APPROVAL}: a promotion or `rlmf policy init` "
            "writes one, `rlmf policy sign FOLDER --approve` by hand)"
        ) from exc
    if public_key is not None:
        try:
            signature = (folder / APPROVAL_SIGNATURE).read_bytes()
        except OSError as exc:
            raise ApprovalError(
                f"{folder}: {APPROVAL} is not signed (no {APPROVAL_SIGNATURE})"
            ) from exc
        try:
            verify_bytes(public_key, data, signature)
        except SigningError as exc:
            raise ApprovalError(
                f"{folder}: {APPROVAL}'s signature does not verify with the approval public key"
            ) from exc
    try:
        record = Approval.model_validate_json(data)
    except ValidationError as exc:
        raise ApprovalError(f"{folder}: {APPROVAL} is not a valid approval record: {exc}") from exc
    if record.manifest_sha256 != hashlib.sha256(manifest_bytes).hexdigest():
        raise ApprovalError(
            f"{folder}: {APPROVAL} approves another manifest than the folder's "
            f"(version {record.version}): copied from another folder, or the folder was rebuilt"
        )
    return record


def check_sequence(folder: Path, record: Approval, floor: int | None) -> None:
    """Refuse an approval older than the last one served (`floor`): a downgrade.

    Raises:
        ApprovalError: record.sequence < floor.
    """
    if floor is not None and record.sequence < floor:
        raise ApprovalError(
            f"{folder}: version {record.version} was approved as sequence {record.sequence}, "
            f"older than sequence {floor} already served: a downgrade is refused"
        )


def next_sequence(*roots: Path) -> int:
    """One above the highest sequence of any approval in the artifact folders under `roots`
    (0 when there is none). A record is counted unverified: a planted high number can only
    raise the next sequence, never lower it."""
    highest = -1
    for root in roots:
        for path in Path(root).glob(f"*/{APPROVAL}"):
            try:
                highest = max(highest, Approval.model_validate_json(path.read_bytes()).sequence)
            except (OSError, ValidationError) as exc:
                log.warning("ignoring %s when numbering approvals: %s", path, exc)
    return highest + 1


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o644)  # a serving pod may run as another uid
    os.replace(tmp, path)

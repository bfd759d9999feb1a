"""Versioned policy artifacts: a folder of weights, tokenizer, config, value head and a manifest
holding every file's sha256, optionally signed (artifact_signing.py). Saving is atomic (staged
beside, then renamed); loading copies each file into a private folder while hashing it, checks
the hash (and the manifest's signature), and loads that copy: the bytes loaded are the bytes
checked, whatever happens to the original folder meanwhile.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file, save_model

from services.policy.actor_critic import ActorCriticConfig, LLMActorCritic
from services.policy.approval import APPROVAL, APPROVAL_SIGNATURE, Evidence, approve_artifact
from services.policy.approval import next_sequence as next_approval_sequence
from services.policy.artifact_signing import SIGNATURE, SigningError
from services.policy.prompt import PROMPT_VERSION

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VALUE_HEAD = "value_head.safetensors"
STATE_HEAD = "state_head.safetensors"
"""Only in artifacts whose actor_critic settings have state_head on."""
REWARD_MODEL = "reward-model"
"""Optional sub-folder: the reward model trained beside this policy (trl's RewardTrainer
layout); the policy server ranks explanations with it (best-of-n) when it is there."""
ARTIFACT_FORMAT = 1


class ArtifactError(RuntimeError):
    """An artifact folder is missing, incomplete, tampered with, or otherwise unusable."""


class UnverifiedArtifact(ArtifactError):
    """The folder could not be shown to be an artifact at all: missing, no readable manifest,
    or (with a public key) no valid signature. A server tells a caller no more than that."""


class TrainingWindow(BaseModel):
    start: datetime
    end: datetime


class Manifest(BaseModel):
    """manifest.json: who this model is, where it came from, and the hash of every file."""

    model_config = ConfigDict(extra="forbid")

    format: int = ARTIFACT_FORMAT
    name: str = "policy"
    version: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._\-]+$")
    parent_version: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    base_model: str
    training_window: TrainingWindow | None = None
    eval_metrics: dict[str, float] = Field(default_factory=dict)
    actor_critic: dict[str, Any] = Field(default_factory=dict)
    """ActorCriticConfig fields (trainable_top_k, use_lora, ...) the model was saved with."""
    notes: str = ""
    prompt_version: int = 1
    """The prompt layout the model was built and trained on (services/common/state_block.py
    PROMPT_VERSION). Manifests from before the field existed were built on version 1."""
    files: dict[str, str] = Field(default_factory=dict)
    """Relative path -> sha256 hex of every file in the folder except manifest.json."""

    @property
    def trainable_top_k(self) -> int:
        return int(self.actor_critic.get("trainable_top_k", 0))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


UNLISTED = (MANIFEST, SIGNATURE, APPROVAL, APPROVAL_SIGNATURE)
"""The files a manifest does not list: itself, its signature, and the approval written when
the version is promoted (approval.py), after the folder was built."""


def _listed_files(folder: Path) -> dict[str, Path]:
    return {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() not in UNLISTED
    }


def _write_model_files(model: LLMActorCritic, folder: Path) -> None:
    lm = model.merged_lm()
    # Written piece by piece rather than with save_pretrained, which refuses models whose
    # config still carries the GGUF quantization note of the prepared SmolLM2 folder, although
    # its weights are plain floats; the note is dropped so the artifact says what it holds.
    config = copy.deepcopy(lm.config)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    config.save_pretrained(folder)
    if getattr(lm, "generation_config", None) is not None:
        lm.generation_config.save_pretrained(folder)
    save_model(lm, str(folder / "model.safetensors"))
    model.tokenizer.save_pretrained(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.value_head.state_dict().items()}
    save_file(state, str(folder / VALUE_HEAD))
    if model.state_head is not None:
        head = {k: v.detach().cpu().contiguous() for k, v in model.state_head.state_dict().items()}
        save_file(head, str(folder / STATE_HEAD))


def save_artifact(
    model: LLMActorCritic,
    folder: str | Path,
    manifest_fields: dict[str, Any],
    overwrite: bool = False,
    reward_model: Path | None = None,
    signing_key: Path | None = None,
) -> Manifest:
    """Write `model` as an artifact at `folder`; returns its manifest.

    `signing_key`, an Ed25519 private key PEM file, signs the manifest (`sign_artifact`) before
    the folder appears, so a signed artifact is never seen unsigned.
    `manifest_fields` holds version, base_model and optionally parent_version, training_window,
    eval_metrics, notes, name. `reward_model`, a folder, is copied in as REWARD_MODEL; its files
    are hashed like every other. The folder appears complete or not at all: everything is
    written into a temporary sibling which is then renamed into place.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise ArtifactError(f"{folder} already exists; versions are immutable (pass overwrite)")
    fields = {
        "actor_critic": model.config_dict(),
        "prompt_version": PROMPT_VERSION,
        **manifest_fields,
    }
    try:
        Manifest(**fields)  # fail on bad fields before the expensive write
    except ValidationError as exc:
        raise ArtifactError(f"bad manifest fields: {exc}") from exc
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; a serving pod may run as another uid
    try:
        _write_model_files(model, staging)
        if reward_model is not None:
            shutil.copytree(reward_model, staging / REWARD_MODEL)
        files = {rel: sha256_file(p) for rel, p in _listed_files(staging).items()}
        manifest = Manifest(**fields, files=files)
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        if signing_key is not None:
            sign_artifact(staging, signing_key)
        _move_into_place(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("saved artifact %s version %s", folder, manifest.version)
    return manifest


def _move_into_place(staging: Path, folder: Path) -> None:
    if not folder.exists():
        staging.rename(folder)
        return
    # A non-empty folder cannot be replaced by one rename: move the old one aside first.
    trash = folder.with_name(f".{folder.name}.old-{datetime.now(UTC):%Y%m%d%H%M%S%f}")
    folder.rename(trash)
    staging.rename(folder)
    shutil.rmtree(trash, ignore_errors=True)


def sign_artifact(folder: str | Path, private_key_path: Path) -> None:
    """Sign `folder`'s manifest.json with the Ed25519 private key in `private_key_path` (PEM):
    the policy server given the public key serves only folders signed so.

    Raises:
        ArtifactError: no manifest, or the key file is missing or not an Ed25519 key.
    """
    from services.policy.artifact_signing import load_private_key, sign_bytes

    folder = Path(folder)
    try:
        key = load_private_key(private_key_path)
    except SigningError as exc:
        raise ArtifactError(f"cannot sign {folder}: {exc}") from exc
    signature = sign_bytes(key, _manifest_bytes(folder))
    tmp = folder / f".{SIGNATURE}.tmp"
    tmp.write_bytes(signature)
    tmp.replace(folder / SIGNATURE)


def _manifest_bytes(folder: Path) -> bytes:
    path = folder / MANIFEST
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UnverifiedArtifact(f"{path} is missing: {folder} is not a policy artifact") from exc


def _parse_manifest(folder: Path, data: bytes) -> Manifest:
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise UnverifiedArtifact(f"{folder / MANIFEST} is not a valid manifest: {exc}") from exc


def read_manifest(folder: str | Path) -> Manifest:
    return _parse_manifest(Path(folder), _manifest_bytes(Path(folder)))


def _check_signature(folder: Path, manifest: bytes, public_key: Ed25519PublicKey) -> None:
    from services.policy.artifact_signing import verify_bytes

    try:
        signature = (folder / SIGNATURE).read_bytes()
    except OSError as exc:
        raise UnverifiedArtifact(f"{folder}: no {SIGNATURE}: not a signed artifact") from exc
    try:
        verify_bytes(public_key, manifest, signature)
    except SigningError as exc:
        raise UnverifiedArtifact(f"{folder}: {exc}") from exc


def _hash_and_copy(src: Path, dst: Path | None) -> str:
    """sha256 of `src`, read once; with `dst`, those same bytes are written there."""
    if dst is None:
        return sha256_file(src)
    digest = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as f, dst.open("wb") as out:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _verify(folder: Path, public_key: Ed25519PublicKey | None, copy_to: Path | None) -> Manifest:
    if not folder.is_dir():
        raise UnverifiedArtifact(f"artifact folder {folder} does not exist")
    data = _manifest_bytes(folder)  # read once: the bytes signed are the bytes parsed
    if public_key is not None:
        _check_signature(folder, data, public_key)
    manifest = _parse_manifest(folder, data)
    present = _listed_files(folder)
    for rel, expected in manifest.files.items():
        if rel not in present:
            raise ArtifactError(f"{folder}: file {rel} listed in the manifest is missing")
        actual = _hash_and_copy(present[rel], None if copy_to is None else copy_to / rel)
        if actual != expected:
            raise ArtifactError(
                f"{folder}: file {rel} does not match its manifest hash "
                f"(expected {expected[:12]}..., found {actual[:12]}...)"
            )
    extra = sorted(set(present) - set(manifest.files))
    if extra:
        raise ArtifactError(f"{folder}: file {extra[0]} is not listed in the manifest")
    for required in ("config.json", VALUE_HEAD):
        if required not in manifest.files:
            raise ArtifactError(f"{folder}: the manifest lists no {required}")
    if copy_to is not None:
        (copy_to / MANIFEST).write_bytes(data)
    return manifest


def verify_artifact(folder: str | Path, public_key: Ed25519PublicKey | None = None) -> Manifest:
    """Check every file against the manifest's sha256 (and, given `public_key`, the manifest's
    signature); raise naming the first problem."""
    return _verify(Path(folder), public_key, None)


@contextmanager
def verified_copy(
    folder: str | Path,
    public_key: Ed25519PublicKey | None = None,
    staging_dir: Path | None = None,
) -> Iterator[tuple[Manifest, Path]]:
    """Verify `folder` into a private copy (owner-only, under `staging_dir` or the temp dir)
    and yield (manifest, copy); the copy is removed on exit. Load from the copy: a file
    swapped in the original after its hash was checked is never read."""
    copy = Path(tempfile.mkdtemp(prefix=".verified-", dir=staging_dir))
    try:
        yield _verify(Path(folder), public_key, copy), copy
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def check_prompt_version(folder: str | Path, manifest: Manifest) -> None:
    """A model trained on another prompt layout would be served prompts it never saw."""
    if manifest.prompt_version != PROMPT_VERSION:
        raise ArtifactError(
            f"{folder}: built for prompt version {manifest.prompt_version}, but this code renders "
            f"prompt version {PROMPT_VERSION}; build a new teacher (`rlmf policy init`) or "
            "retrain it rather than serve it prompts it was not trained on"
        )


def load_artifact(
    folder: str | Path,
    dtype: str | None = None,
    public_key: Ed25519PublicKey | None = None,
    staging_dir: Path | None = None,
) -> LLMActorCritic:
    """Verify, then load the actor-critic from the verified copy (`verified_copy`); its
    model_version is the manifest's version. An artifact built for another prompt version is
    refused (`check_prompt_version`)."""
    with verified_copy(folder, public_key, staging_dir) as (manifest, copy):
        return load_verified(copy, manifest, dtype, shown=Path(folder))


def load_verified(
    copy: Path, manifest: Manifest, dtype: str | None = None, shown: Path | None = None
) -> LLMActorCritic:
    """Load the actor-critic from a folder `verified_copy` made; errors name `shown`."""
    shown = shown or copy
    check_prompt_version(shown, manifest)
    fields = dict(manifest.actor_critic)
    if dtype:
        fields["dtype"] = dtype
    try:
        config = ActorCriticConfig(**fields)
    except TypeError as exc:
        raise ArtifactError(f"{shown}: manifest actor_critic settings are invalid: {exc}") from exc
    model = LLMActorCritic.from_pretrained(copy, config, model_version=manifest.version)
    model.value_head.load_state_dict(load_file(str(copy / VALUE_HEAD)))
    if model.state_head is not None:
        if not (copy / STATE_HEAD).is_file():
            raise ArtifactError(f"{shown}: actor_critic has state_head on but no {STATE_HEAD}")
        model.state_head.load_state_dict(load_file(str(copy / STATE_HEAD)))
    model.manifest = manifest
    return model


def teacher_config(seed: int = 0) -> ActorCriticConfig:
    """What a new teacher is built with (`rlmf policy init`, `rlmf up`, the demo): what the
    recipe sweep in docs/results.md chose. The split sits below the last layer, which runs
    frozen, and a standardised linear state head on the split's last state learns the market's
    feedback; retraining the top layer instead memorised the training days (held-out accuracy
    0.37)."""
    return ActorCriticConfig(trainable_top_k=1, state_head=True, train_lm_layers=False, seed=seed)


def init_artifact(
    base: str | Path,
    out: str | Path,
    version: str = "v0",
    config: ActorCriticConfig | None = None,
    overwrite: bool = False,
    signing_key: Path | None = None,
) -> Manifest:
    """Turn a plain Hugging Face folder into the version-0 teacher artifact (fresh value head)
    and approve it to serve: the first teacher has no promotion to approve it, so its approval
    (stage init) comes with it, numbered above any other approval beside it. `signing_key`
    signs both the manifest and the approval."""
    base = Path(base)
    if not (base / "config.json").is_file():
        raise ArtifactError(f"{base} has no config.json: not a Hugging Face model folder")
    model = LLMActorCritic.from_pretrained(base, config or ActorCriticConfig(), version)
    fields = {"version": version, "base_model": base.name, "notes": f"initialised from {base}"}
    manifest = save_artifact(model, out, fields, overwrite=overwrite, signing_key=signing_key)
    out = Path(out)
    approve_artifact(
        out,
        sequence=next_approval_sequence(out.parent),
        evidence=Evidence(stage="init"),
        signing_key=signing_key,
    )
    return manifest

"""Signed artifacts: the trainer's signature over the manifest, checked against a public key;
a folder whose hashes were recomputed by someone else fails, and the bytes loaded are the bytes
that were checked (a file swapped after its check is never read)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.policy import artifacts
from services.policy.actor_critic import ActorCriticConfig
from services.policy.artifact_signing import (
    SIGNATURE,
    generate_key_pair,
    load_public_key,
)
from services.policy.artifacts import (
    VALUE_HEAD,
    ArtifactError,
    UnverifiedArtifact,
    init_artifact,
    load_artifact,
    save_artifact,
    sha256_file,
    sign_artifact,
    verify_artifact,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    generate_key_pair(folder / "signing.pem", folder / "public.pem")
    return folder / "signing.pem", folder / "public.pem"


@pytest.fixture(scope="module")
def signed(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]
) -> Path:
    out = tmp_path_factory.mktemp("signed") / "v0"
    init_artifact(tiny_llama_dir, out, "v0", ActorCriticConfig(trainable_top_k=1))
    sign_artifact(out, keys[0])
    return out


def _recompute_manifest(folder: Path) -> None:
    """What an attacker with write access does: edit a file, then fix up its manifest hash."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {rel: sha256_file(folder / rel) for rel in manifest["files"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _swap_value_head(folder: Path, value: float) -> None:
    """A value head of the same shapes with every weight `value`: loads, but answers otherwise."""
    state = load_file(str(folder / VALUE_HEAD))
    save_file({k: torch.full_like(v, value) for k, v in state.items()}, str(folder / VALUE_HEAD))


def test_signed_artifact_verifies_and_loads(signed: Path, keys: tuple[Path, Path]) -> None:
    public = load_public_key(keys[1])
    assert (signed / SIGNATURE).is_file()
    assert verify_artifact(signed, public).version == "v0"
    assert load_artifact(signed, public_key=public).model_version == "v0"


def test_recomputed_hashes_without_the_key_are_refused(
    signed: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    forged = tmp_path / "forged"
    shutil.copytree(signed, forged)
    _swap_value_head(forged, 7.0)
    _recompute_manifest(forged)
    verify_artifact(forged)  # the manifest alone only checks the folder against itself
    with pytest.raises(UnverifiedArtifact, match="signature does not verify"):
        load_artifact(forged, public_key=load_public_key(keys[1]))


def test_unsigned_and_other_key_artifacts_are_refused(
    signed: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    unsigned = tmp_path / "unsigned"
    shutil.copytree(signed, unsigned)
    (unsigned / SIGNATURE).unlink()
    public = load_public_key(keys[1])
    with pytest.raises(UnverifiedArtifact, match="not a signed artifact"):
        verify_artifact(unsigned, public)
    other = generate_key_pair(tmp_path / "other.pem", tmp_path / "other.pub")
    with pytest.raises(UnverifiedArtifact, match="signature does not verify"):
        verify_artifact(signed, other)


def test_save_artifact_signs_before_the_folder_appears(
    signed: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    model = load_artifact(signed)
    save_artifact(
        model, tmp_path / "v1", {"version": "v1", "base_model": "tiny"}, signing_key=keys[0]
    )
    assert verify_artifact(tmp_path / "v1", load_public_key(keys[1])).version == "v1"
    with pytest.raises(ArtifactError, match="not a PEM private key"):
        sign_artifact(tmp_path / "v1", keys[1])


def test_the_bytes_loaded_are_the_bytes_checked(
    signed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer who swaps the value head between the hash check and the load (a race that
    a check-then-re-read loses) changes nothing: the load reads the private verified copy."""
    folder = tmp_path / "raced"
    shutil.copytree(signed, folder)
    honest = load_artifact(folder)
    real_from_pretrained = artifacts.LLMActorCritic.from_pretrained

    def swap_then_load(*args: object, **kwargs: object) -> object:
        _swap_value_head(folder, 9.0)  # the hashes were checked just before this
        return real_from_pretrained(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(artifacts.LLMActorCritic, "from_pretrained", swap_then_load)
    loaded = load_artifact(folder)
    for name, tensor in honest.value_head.state_dict().items():
        assert torch.equal(loaded.value_head.state_dict()[name], tensor), name
    assert sha256_file(folder / VALUE_HEAD) != verify_artifact(signed).files[VALUE_HEAD]

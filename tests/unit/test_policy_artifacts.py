"""Artifacts: atomic save, manifest with every file's sha256, verified load naming a bad file."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from services.common.market_state import MarketState
from services.policy import artifacts
from services.policy.actor_critic import ActorCriticConfig, LLMActorCritic
from services.policy.artifacts import (
    ArtifactError,
    init_artifact,
    load_artifact,
    save_artifact,
    sha256_file,
    verify_artifact,
)

STATE = MarketState(ticker="MSFT", as_of=datetime(2024, 1, 2, tzinfo=UTC), recent_closes=[1.0, 1.1])


@pytest.fixture(scope="module")
def v0(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "v0"
    init_artifact(tiny_llama_dir, out, "v0", ActorCriticConfig(trainable_top_k=3))
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_manifest_lists_every_file_with_its_hash(v0: Path, tiny_llama_dir: Path) -> None:
    manifest = verify_artifact(v0)
    # The approval init_artifact writes comes after the build: the manifest does not list it.
    unlisted = {"manifest.json", "approval.json"}
    on_disk = {p.name for p in v0.iterdir() if p.name not in unlisted}
    assert set(manifest.files) == on_disk
    assert (v0 / "approval.json").is_file()
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "value_head.safetensors",
    } <= on_disk
    for rel, digest in manifest.files.items():
        assert sha256_file(v0 / rel) == digest
    assert manifest.version == "v0" and manifest.parent_version is None
    assert manifest.trainable_top_k == 3 and manifest.base_model == tiny_llama_dir.name


def test_round_trip_keeps_weights_value_head_and_version(v0: Path, tmp_path: Path) -> None:
    model = load_artifact(v0)
    with torch.no_grad():
        model.value_head[0].bias.add_(0.5)  # a "trained" change the artifact must carry
    window = {"start": "2024-01-01T00:00:00Z", "end": "2024-03-01T00:00:00Z"}
    manifest = save_artifact(
        model,
        tmp_path / "v1",
        {
            "version": "v1",
            "parent_version": "v0",
            "base_model": "tiny-llama",
            "training_window": window,
            "eval_metrics": {"sharpe": 1.2},
        },
    )
    again = load_artifact(tmp_path / "v1")
    assert again.model_version == "v1" and manifest.eval_metrics == {"sharpe": 1.2}
    assert again.n_frozen == model.n_frozen
    a, b = model.decide([STATE])[0], again.decide([STATE])[0]
    assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    assert a.value == pytest.approx(b.value, abs=1e-6)


@pytest.mark.parametrize("victim", ["model.safetensors", "value_head.safetensors", "config.json"])
def test_tampered_file_is_refused_by_name(v0: Path, tmp_path: Path, victim: str) -> None:
    folder = _copy(v0, tmp_path / "bad")
    with (folder / victim).open("r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(ArtifactError, match=f"file {victim} does not match"):
        load_artifact(folder)


def test_missing_extra_and_unlisted_files_are_refused(v0: Path, tmp_path: Path) -> None:
    missing = _copy(v0, tmp_path / "missing")
    (missing / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer.json listed in the manifest is missing"):
        load_artifact(missing)
    extra = _copy(v0, tmp_path / "extra")
    (extra / "evil.py").write_text("print('hi')")
    with pytest.raises(ArtifactError, match="evil.py is not listed"):
        load_artifact(extra)
    no_manifest = _copy(v0, tmp_path / "nomanifest")
    (no_manifest / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        load_artifact(no_manifest)
    edited = _copy(v0, tmp_path / "edited")
    data = json.loads((edited / "manifest.json").read_text())
    data["files"]["model.safetensors"] = "0" * 64
    (edited / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="model.safetensors does not match"):
        load_artifact(edited)


def test_save_is_atomic_and_versions_are_immutable(
    v0: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_artifact(v0)
    fields = {"version": "v2", "base_model": "tiny-llama"}

    def crash(_model: LLMActorCritic, folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(artifacts, "_write_model_files", crash)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(model, tmp_path / "v2", fields)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a staging leftover
    monkeypatch.undo()
    with pytest.raises(ArtifactError, match="already exists"):
        save_artifact(model, v0, fields)
    with pytest.raises(ArtifactError, match="bad manifest fields"):
        save_artifact(model, tmp_path / "v3", {"version": "has space", "base_model": "x"})

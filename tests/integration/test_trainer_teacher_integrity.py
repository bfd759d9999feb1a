"""The trainer trains only on a teacher it can vouch for: its manifest signed with the trainer's
key, every file matching, and an approval to serve. A teacher forged on the shared volume
(files changed, hashes recomputed, re-signed with another key), a tampered one, or a signed
student that was never approved is refused before any training, by folder and reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.policy.approval import APPROVAL
from services.policy.artifact_signing import generate_key_pair
from services.policy.artifacts import init_artifact, sha256_file, sign_artifact, teacher_config
from services.trainer.cycle import CycleError, run_cycle, set_current
from services.trainer.gate import GateConfig
from services.trainer.settings import TrainerSettings


@pytest.fixture(scope="module")
def signed_teacher(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(a signed, approved v0; the trainer's private key)."""
    keys = tmp_path_factory.mktemp("keys")
    generate_key_pair(keys / "private.pem", keys / "public.pem")
    v0 = tmp_path_factory.mktemp("teacher") / "v0"
    init_artifact(tiny_llama_dir, v0, "v0", teacher_config(), signing_key=keys / "private.pem")
    return v0, keys / "private.pem"


def _settings(models: Path, work: Path, key: Path) -> TrainerSettings:
    return TrainerSettings(
        models_dir=models,
        work_dir=work,
        artifact_signing_key_file=key,
        market_days=80,
        train_days=30,
        eval_days=10,
        embargo_days=0,
        recipe={"mf_history": False, "ppo": {"total_timesteps": 16, "minibatch_size": 8}},
        gate=GateConfig(margin=1e9, bootstrap=False),  # never promotes: not what is tested here
        promotion="none",
        publish=False,
    )


def _as_current(src: Path, models: Path) -> Path:
    teacher = models / src.name
    shutil.copytree(src, teacher)
    set_current(models, teacher)
    return teacher


def _edit_value_head(folder: Path) -> None:
    with (folder / "value_head.safetensors").open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x3f")


def test_a_forged_teacher_is_refused_before_training(
    signed_teacher: tuple[Path, Path], tmp_path: Path
) -> None:
    v0, key = signed_teacher
    teacher = _as_current(v0, tmp_path / "models")
    _edit_value_head(teacher)
    manifest = json.loads((teacher / "manifest.json").read_text())
    manifest["files"] = {rel: sha256_file(teacher / rel) for rel in manifest["files"]}
    (teacher / "manifest.json").write_text(json.dumps(manifest))
    generate_key_pair(tmp_path / "forger.pem", tmp_path / "forger.pub")
    sign_artifact(teacher, tmp_path / "forger.pem")
    with pytest.raises(CycleError, match="teacher refused") as refused:
        run_cycle(_settings(tmp_path / "models", tmp_path / "work", key))
    assert str(teacher) in str(refused.value)
    assert "signature does not verify" in str(refused.value)
    assert not (tmp_path / "work" / "cycles").exists() or not any(
        (tmp_path / "work" / "cycles").rglob("ckpt-*")
    ), "nothing was trained"


def test_a_tampered_teacher_names_the_file(
    signed_teacher: tuple[Path, Path], tmp_path: Path
) -> None:
    v0, key = signed_teacher
    teacher = _as_current(v0, tmp_path / "models")
    _edit_value_head(teacher)
    with pytest.raises(CycleError, match="value_head.safetensors does not match") as refused:
        run_cycle(_settings(tmp_path / "models", tmp_path / "work", key))
    assert str(teacher) in str(refused.value)


def test_a_signed_but_unapproved_teacher_is_refused(
    signed_teacher: tuple[Path, Path], tmp_path: Path
) -> None:
    """Every student is signed, rejected ones too: `current` moved onto one is refused."""
    v0, key = signed_teacher
    teacher = _as_current(v0, tmp_path / "models")
    (teacher / APPROVAL).unlink()
    with pytest.raises(CycleError, match="not approved to serve") as refused:
        run_cycle(_settings(tmp_path / "models", tmp_path / "work", key))
    assert str(teacher) in str(refused.value)

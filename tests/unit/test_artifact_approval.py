"""Approval records apart from origin: a signed approval names one manifest and a sequence; an
edited, copied, unsigned or foreign-signed record is refused, and nothing older than the
served sequence passes. `rlmf policy keygen`, `sign` and `init --sign` through typer's runner."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.policy.approval import (
    APPROVAL,
    APPROVAL_SIGNATURE,
    Approval,
    ApprovalError,
    Evidence,
    approve_artifact,
    check_sequence,
    next_sequence,
    read_approval,
    withdraw_approval,
)
from services.policy.artifact_signing import SIGNATURE, generate_key_pair, load_public_key
from services.policy.artifacts import (
    MANIFEST,
    init_artifact,
    teacher_config,
    verify_artifact,
)
from services.policy.cli import app


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    generate_key_pair(folder / "private.pem", folder / "public.pem")
    return folder / "private.pem", folder / "public.pem"


@pytest.fixture(scope="module")
def teacher(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]
) -> Path:
    out = tmp_path_factory.mktemp("models") / "v0"
    init_artifact(tiny_llama_dir, out, "v0", teacher_config(), signing_key=keys[0])
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _read(folder: Path, public: Path | None) -> Approval:
    key = load_public_key(public) if public is not None else None
    return read_approval(folder, (folder / MANIFEST).read_bytes(), key)


def test_init_signs_and_approves_the_first_teacher(teacher: Path, keys: tuple[Path, Path]) -> None:
    assert verify_artifact(teacher, load_public_key(keys[1])).version == "v0"
    record = _read(teacher, keys[1])
    assert record.version == "v0" and record.sequence == 0
    assert record.evidence.stage == "init"


def test_an_edited_approval_is_refused(
    teacher: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """Raising one's own sequence (to beat the served version) breaks the signature."""
    folder = _copy(teacher, tmp_path / "v0")
    record = json.loads((folder / APPROVAL).read_text())
    record["sequence"] = 99
    (folder / APPROVAL).write_text(json.dumps(record))
    with pytest.raises(ApprovalError, match="signature does not verify"):
        _read(folder, keys[1])


def test_an_unsigned_or_foreign_signed_approval_is_refused(
    teacher: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = _copy(teacher, tmp_path / "v0")
    approve_artifact(folder, sequence=5, evidence=Evidence(stage="gate"))  # no key
    assert not (folder / APPROVAL_SIGNATURE).exists()
    with pytest.raises(ApprovalError, match="is not signed"):
        _read(folder, keys[1])
    generate_key_pair(tmp_path / "other.pem", tmp_path / "other.pub")
    approve_artifact(
        folder, sequence=5, evidence=Evidence(stage="gate"), signing_key=tmp_path / "other.pem"
    )
    with pytest.raises(ApprovalError, match="signature does not verify"):
        _read(folder, keys[1])
    assert _read(folder, tmp_path / "other.pub").sequence == 5


def test_an_approval_copied_onto_another_manifest_is_refused(
    teacher: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """An approval vouches for one manifest's bytes: a rejected student carrying a copy of
    the teacher's (signed) approval is refused."""
    student = _copy(teacher, tmp_path / "s1")
    manifest = json.loads((student / MANIFEST).read_text())
    manifest["version"] = "s1"
    (student / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ApprovalError, match="approves another manifest"):
        _read(student, keys[1])


def test_a_missing_approval_says_so_and_a_withdrawn_one_is_gone(
    teacher: Path, tmp_path: Path
) -> None:
    folder = _copy(teacher, tmp_path / "v0")
    withdraw_approval(folder)
    assert not (folder / APPROVAL).exists() and not (folder / APPROVAL_SIGNATURE).exists()
    with pytest.raises(ApprovalError, match=f"{folder}: not approved to serve"):
        _read(folder, None)


def test_sequences_only_rise(teacher: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    for name, sequence in (("a", 3), ("b", 7)):
        folder = _copy(teacher, root / name)
        approve_artifact(folder, sequence=sequence, evidence=Evidence(stage="gate"))
    (root / "c").mkdir()
    (root / "c" / APPROVAL).write_text("not json")  # ignored, with a warning
    assert next_sequence(root) == 8
    assert next_sequence(tmp_path / "empty") == 0
    record = _read(root / "a", None)
    check_sequence(root / "a", record, 3)  # the same sequence again: a reload, allowed
    with pytest.raises(ApprovalError, match="older than sequence 7 already served"):
        check_sequence(root / "a", record, 7)


# --- the CLI ---------------------------------------------------------------------------------


def test_keygen_writes_an_owner_only_private_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["keygen", "--out-dir", str(tmp_path / "keys")])
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "keys" / "private.pem", tmp_path / "keys" / "public.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    load_public_key(public)
    before = private.read_bytes()
    again = runner.invoke(app, ["keygen", "--out-dir", str(tmp_path / "keys")])
    assert again.exit_code == 2 and "exists" in again.output
    assert private.read_bytes() == before


def test_init_sign_builds_a_signed_approved_teacher_and_points_current_at_it(
    tiny_llama_dir: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "models" / "teacher"
    result = CliRunner().invoke(
        app,
        ["init", "--base", str(tiny_llama_dir), "--out", str(out), "--sign", "--current"],
        env={"RLMF_TRAINER_ARTIFACT_SIGNING_KEY_FILE": str(keys[0])},
    )
    assert result.exit_code == 0, result.output
    assert "signed and approved" in result.output
    assert verify_artifact(out, load_public_key(keys[1])).version == "v0"
    assert _read(out, keys[1]).evidence.stage == "init"
    assert (out.parent / "current").read_text() == "teacher\n"
    verified = CliRunner().invoke(app, ["verify", str(out), "--public-key", str(keys[1])])
    assert verified.exit_code == 0 and "approved: sequence 0, stage init" in verified.output


def test_init_sign_without_a_key_is_refused(tiny_llama_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["init", "--base", str(tiny_llama_dir), "--out", str(tmp_path / "v0"), "--sign"],
        env={"RLMF_TRAINER_ARTIFACT_SIGNING_KEY_FILE": None},
    )
    assert result.exit_code == 2 and "--sign needs" in result.output
    assert not (tmp_path / "v0").exists()


def test_sign_signs_a_verified_folder_and_approve_numbers_it_above_the_rest(
    teacher: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    root = tmp_path / "models"
    newer = _copy(teacher, root / "v3")
    approve_artifact(newer, sequence=3, evidence=Evidence(stage="gate"))
    folder = _copy(teacher, root / "v0")
    (folder / SIGNATURE).unlink()
    withdraw_approval(folder)
    result = CliRunner().invoke(
        app, ["sign", str(folder), "--signing-key", str(keys[0]), "--approve"]
    )
    assert result.exit_code == 0, result.output
    assert verify_artifact(folder, load_public_key(keys[1])).version == "v0"
    record = _read(folder, keys[1])
    assert record.sequence == 4 and record.evidence.stage == "manual"


def test_sign_refuses_a_folder_whose_files_do_not_match(
    teacher: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = _copy(teacher, tmp_path / "v0")
    (folder / SIGNATURE).unlink()
    with (folder / "value_head.safetensors").open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x3f")
    result = CliRunner().invoke(app, ["sign", str(folder), "--signing-key", str(keys[0])])
    assert result.exit_code == 2 and "does not match its manifest hash" in result.output
    assert not (folder / SIGNATURE).exists()

"""`rlmf up` on a state folder from before approvals: the folder it served then has no
approval, and the policy server serves only approved versions. `up` approves what it finds
(stage init) and says so, instead of the server refusing the user's own model."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli import _approved_locally
from services.policy.approval import APPROVAL, APPROVAL_SIGNATURE, read_approval
from services.policy.artifacts import init_artifact

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_a_folder_served_before_approvals_is_approved_once(
    tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "policy" / "v0"
    init_artifact(tiny_llama_dir, folder, "v0")
    (folder / APPROVAL).unlink()  # as an earlier rlmf left it
    (folder / APPROVAL_SIGNATURE).unlink(missing_ok=True)
    assert _approved_locally(folder) == folder
    approval = read_approval(folder, (folder / "manifest.json").read_bytes(), None)
    assert approval.version == "v0" and approval.evidence.stage == "init"
    assert "before approvals existed" in capsys.readouterr().out
    before = (folder / APPROVAL).read_bytes()
    _approved_locally(folder)  # approved already: left as it is
    assert (folder / APPROVAL).read_bytes() == before

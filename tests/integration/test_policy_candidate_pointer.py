"""The candidate on a cluster: the policy server follows `<models>/candidate`, the pointer the
CronJob trainer writes on the models volume (services/policy/candidate_pointer.py). A real
kserve ModelServer on a loopback port with a tiny random Llama; no reload route is called."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from services.policy.artifacts import init_artifact, load_artifact, save_artifact
from tests.helpers import PolicyServer, start_policy_server, wait_until

pytestmark = pytest.mark.usefixtures("torch_one_thread")

STATE = {
    "ticker": "ACME",
    "as_of": "2024-01-02T21:00:00Z",
    "recent_closes": [100.0, 101.0, 102.0],
    "position": 0.0,
    "cash": 10000.0,
}


@pytest.fixture(scope="module")
def models(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    init_artifact(tiny_llama_dir, root / "v0", "v0")
    student = load_artifact(root / "v0")
    with torch.no_grad():
        student.value_head[2].bias.fill_(5.0)
    save_artifact(student, root / "s1", {"version": "s1", "parent_version": "v0",
                                         "base_model": "tiny-llama"})  # fmt: skip
    shutil.copytree(root / "s1", root / "s1-tampered")
    with (root / "s1-tampered" / "model.safetensors").open("r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    return root


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyServer]:
    env = {
        "RLMF_POLICY_CANDIDATE_POINTER": str(models / "candidate"),
        "RLMF_POLICY_CANDIDATE_POLL_S": "0.2",
        "RLMF_POLICY_RELOAD_ENABLED": "false",  # as on a cluster: the pointer alone stages
    }
    srv = start_policy_server(models / "v0", tmp_path_factory.mktemp("logs") / "p.log", env)
    try:
        yield srv
    finally:
        srv.stop()


def _candidate_version(url: str) -> str | None:
    status = httpx.get(f"{url}/v1/models/policy-candidate:status", timeout=10)
    return None if status.status_code == 404 else str(status.json()["model_version"])


def test_the_server_stages_what_the_pointer_names_and_retires_it_when_it_goes(
    server: PolicyServer, models: Path
) -> None:
    pointer = models / "candidate"
    assert _candidate_version(server.url) is None
    pointer.write_text("s1\n")
    wait_until(lambda: _candidate_version(server.url) == "s1", 60, "the candidate staged")
    shadow = httpx.post(f"{server.url}/v1/models/policy-candidate:predict",
                        json={"instances": [STATE]}, timeout=60)  # fmt: skip
    assert shadow.json()["predictions"][0]["model_version"] == "s1"
    live = httpx.post(f"{server.url}/v1/models/policy:predict",
                      json={"instances": [STATE]}, timeout=60)  # fmt: skip
    assert live.json()["predictions"][0]["model_version"] == "v0", "the teacher still serves"
    # A tampered folder is refused; the staged candidate stays until the pointer goes.
    pointer.write_text("s1-tampered\n")
    wait_until(lambda: "s1-tampered" in server.log.read_text(), 60, "the refusal logged")
    assert _candidate_version(server.url) == "s1"
    pointer.unlink()
    wait_until(lambda: _candidate_version(server.url) is None, 60, "the candidate retired")

"""What the chart hands the trainer's CronJob pod: the device its GPU option implies and the
artifact-signing private key, mounted from its Secret where RLMF_TRAINER_ARTIFACT_SIGNING_KEY_FILE
points, and read back by TrainerSettings from the rendered environment.

Not run here: a kubelet mounting the Secret (no cluster); the pod spec is checked as read."""

from __future__ import annotations

from typing import Any

import pytest

from services.trainer.settings import TrainerSettings
from tests.helpers import EXTERNAL, documents, named, render, render_raw


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cronjob = named(docs, "CronJob", "rlmf-trainer")
    return dict(cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"])


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}


def _settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> TrainerSettings:
    """TrainerSettings as the pod's process would build them from the rendered env."""
    for name, value in env.items():
        if name.startswith("RLMF_TRAINER_") and value is not None:
            monkeypatch.setenv(name, value)
    return TrainerSettings()


@pytest.mark.parametrize(("key", "device"), [("external-kafka", "cpu"), ("gpu", "cuda")])
def test_trainer_device_follows_the_gpu_option(
    monkeypatch: pytest.MonkeyPatch, key: str, device: str
) -> None:
    env = _env(_pod(render(key)))
    assert env["RLMF_TRAINER_DEVICE"] == device
    assert _settings(monkeypatch, env).device == device


def _signing_key_source(pod: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(key file the env names, its volumeMount, the volume behind it)."""
    key_file = _env(pod)["RLMF_TRAINER_ARTIFACT_SIGNING_KEY_FILE"]
    folder, _, file_name = key_file.rpartition("/")
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert folder in mounts, f"nothing is mounted at {folder} for {key_file}"
    volumes = {v["name"]: v for v in pod["volumes"]}
    return file_name, mounts[folder], volumes[mounts[folder]["name"]]


def test_trainer_mounts_the_signing_key_from_its_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = _pod(render("external-kafka"))
    file_name, mount, volume = _signing_key_source(pod)
    assert mount["readOnly"] is True
    secret = volume["secret"]
    assert secret["secretName"] == "rlmf-artifact-signing"
    assert secret["items"] == [{"key": "private.pem", "path": file_name}]
    assert secret["defaultMode"] == 0o440, "the private key is not world-readable"
    settings = _settings(monkeypatch, _env(pod))
    assert str(settings.artifact_signing_key_file) == f"{mount['mountPath']}/{file_name}"


def test_the_signing_secrets_name_and_key_come_from_values() -> None:
    values = EXTERNAL | {
        "artifactSigning": {"privateKeySecret": {"name": "ed25519-prod", "key": "tls.key"}}
    }
    file_name, _, volume = _signing_key_source(_pod(documents(render_raw(values))))
    assert volume["secret"]["secretName"] == "ed25519-prod"
    assert volume["secret"]["items"] == [{"key": "tls.key", "path": file_name}]


def test_only_the_trainer_gets_the_private_key() -> None:
    """The promotion watcher runs the trainer's image too, but signs nothing."""
    holders = set()
    for doc in render("external-kafka"):
        text = repr(doc)
        if "rlmf-artifact-signing" in text and doc["kind"] != "NetworkPolicy":
            holders.add((doc["kind"], doc["metadata"]["name"]))
    assert holders == {("CronJob", "rlmf-trainer")}

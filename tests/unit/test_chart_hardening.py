"""Smaller things a cluster admin asks of the chart: /tmp bounded, the models volume read-only
everywhere but the trainer (and the optional seed Job), ServiceMonitors and rules that
kube-prometheus-stack picks up as installed, NOTES that warn about an unguarded Kafka or Redis,
and the seed Job that puts the signed teacher on the volume.

Not run here: a kubelet or Prometheus (no cluster); the objects are checked as they would read
them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.helpers import (
    EXTERNAL,
    VALUE_SETS,
    named,
    of_kind,
    pod_specs,
    render,
    render_install,
    render_raw,
)

WRITERS = {"rlmf-trainer"}


@pytest.mark.parametrize("key", sorted(VALUE_SETS))
def test_every_tmp_is_size_limited(key: str) -> None:
    for name, pod in pod_specs(render(key)):
        for volume in pod.get("volumes", []):
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{name}: {volume['name']}"


def _models_mounts(pod: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(mount, volume) of every mount of a PersistentVolumeClaim volume named models."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return [
        (m, volumes[m["name"]])
        for c in pod["containers"]
        for m in c.get("volumeMounts", [])
        if m["name"] == "models" and "persistentVolumeClaim" in volumes[m["name"]]
    ]


@pytest.mark.parametrize("key", ["external-kafka", "canary-10", "scaled-out"])
def test_models_volume_is_read_only_but_for_the_trainer(key: str) -> None:
    """The teacher and students lie on it: a compromised reader must not rewrite them. The
    features service writes Feast's offline files only, through a subPath it cannot climb out of."""
    for name, pod in pod_specs(render(key)):
        for mount, volume in _models_mounts(pod):
            if name in WRITERS:
                continue
            if name == "rlmf-features":
                assert (mount["mountPath"], mount["subPath"]) == ("/models/feast", "feast")
                continue
            assert mount.get("readOnly") is True, name
            assert volume["persistentVolumeClaim"].get("readOnly") is True, name


def test_service_monitors_and_rules_carry_kube_prometheus_stacks_release_label() -> None:
    docs = render("external-kafka")
    for kind in ("ServiceMonitor", "PrometheusRule"):
        objects = of_kind(docs, kind)
        assert objects
        for obj in objects:
            assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind
    policy = named(docs, "ServiceMonitor", "rlmf-policy")
    assert policy["spec"]["namespaceSelector"] == {"matchNames": ["trading-policy"]}


def _notes(values: dict[str, Any]) -> str:
    return render_raw(values)["rlmf/templates/NOTES.txt"]


def _guard_warnings(notes: str) -> list[str]:
    """The NOTES' warnings about Kafka and Redis (not the image registry's)."""
    return [line for line in notes.splitlines() if "WARNING" in line and "image." not in line]


def test_notes_warn_about_an_unguarded_kafka_or_redis() -> None:
    plain = _notes(EXTERNAL | {"feast": {"redis": {"external": "redis.data.svc:6379"}}})
    assert "WARNING: the existing Kafka is reached over PLAINTEXT" in plain
    assert "WARNING: the external Redis is used without a password" in plain
    guarded = _notes(VALUE_SETS["external-sasl-keda"])
    assert _guard_warnings(guarded) == []
    assert "every client logs in to the existing Kafka as rlmf" in guarded
    assert _guard_warnings(_notes(VALUE_SETS["strimzi"])) == []
    assert "no TLS and no login" in _notes(VALUE_SETS["strimzi-plain-keda"])


def test_seed_job_is_off_unless_enabled() -> None:
    assert not [
        j for j in of_kind(render("external-kafka"), "Job") if "seed" in j["metadata"]["name"]
    ]


def test_seed_job_signs_the_teacher_with_the_key_from_values() -> None:
    values = EXTERNAL | {
        "seedTeacher": {"enabled": True},
        "artifactSigning": {"privateKeySecret": {"name": "ed25519-prod", "key": "tls.key"}},
    }
    job = named(render_install(values), "Job", "rlmf-seed-teacher")
    assert "post-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    script = container["command"][-1]
    assert "rlmf policy init" in script and "--sign" in script and "--current" in script
    assert "--out /models/teacher" in script, "where the policy's default storageUri looks"
    env = {e["name"]: e["value"] for e in container["env"]}
    key_file = env["RLMF_TRAINER_ARTIFACT_SIGNING_KEY_FILE"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret = volumes[mounts[key_file.rsplit("/", 1)[0]]["name"]]["secret"]
    assert secret["secretName"] == "ed25519-prod"
    assert secret["items"] == [{"key": "tls.key", "path": key_file.rsplit("/", 1)[1]}]
    assert pod["automountServiceAccountToken"] is False


def test_each_client_may_have_its_own_login_on_an_existing_kafka() -> None:
    values = copy.deepcopy(VALUE_SETS["external-sasl-keda"])
    own = {"username": "rlmf-ingest", "passwordSecret": {"name": "kafka-ingest", "key": "pw"}}
    values["kafka"]["client"]["clients"] = {"ingest": own}
    docs = render_install(values)
    logins = {}
    for name, pod in pod_specs(docs):
        env = {e["name"]: e for e in pod["containers"][0].get("env", [])}
        if "RLMF_BUS_SASL_USERNAME" in env:
            secret = env["RLMF_BUS_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
            logins[name] = (env["RLMF_BUS_SASL_USERNAME"]["value"], secret["name"], secret["key"])
    assert logins.pop("rlmf-ingest") == ("rlmf-ingest", "kafka-ingest", "pw")
    assert set(logins.values()) == {("rlmf", "kafka-rlmf", "password")}
    assert "every client logs in" not in render_raw(values)["rlmf/templates/NOTES.txt"]


def test_notes_warn_when_the_image_registry_is_the_placeholder() -> None:
    """No images are published: an install that keeps the default registry is told so."""
    assert "image.registry is the placeholder" in _notes(EXTERNAL)
    pushed = EXTERNAL | {"image": {"registry": "registry.example/rlmf", "tag": "",
                                   "pullPolicy": "IfNotPresent", "overrides": {}}}  # fmt: skip
    assert "image.registry is the placeholder" not in _notes(pushed)

"""What the chart lets each part do: the trainer's Role (no Secrets, no pods, only the
InferenceService and Helm's ConfigMap records), the API server's address as the trainer's only
way out to it, Redis behind a password, the policy's own NetworkPolicy, signed artifacts and the
reload token from Secrets.

Not run here: an API server enforcing the Role or a CNI enforcing the policies (no cluster);
the objects are checked as a cluster would read them."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from services.features.repo import render_config
from services.features.settings import FeaturesSettings
from tests.helpers import EXTERNAL, named, of_kind, render, render_raw


def _verbs(role: dict[str, Any]) -> dict[str, set[str]]:
    """resource -> the verbs the Role grants on it."""
    out: dict[str, set[str]] = {}
    for rule in role["rules"]:
        for resource in rule["resources"]:
            out.setdefault(resource, set()).update(rule["verbs"])
    return out


WRITE = {"create", "update", "patch", "delete", "deletecollection"}


@pytest.mark.parametrize("key", ["external-kafka", "strimzi", "external-sasl-keda"])
def test_trainer_role_is_not_namespace_admin(key: str) -> None:
    """It used to create pods and ServiceAccounts and read every Secret: namespace admin."""
    verbs = _verbs(named(render(key), "Role", "rlmf-trainer"))
    assert "secrets" not in verbs, "Helm's records live in ConfigMaps (HELM_DRIVER=configmap)"
    for kind in ("pods", "serviceaccounts", "jobs", "roles", "rolebindings", "deployments"):
        assert not verbs.get(kind, set()) & WRITE, f"the trainer may change {kind}"
    writable = {r for r, v in verbs.items() if v & WRITE}
    assert writable == {"configmaps", "inferenceservices"}
    assert verbs["inferenceservices"] & WRITE == {"patch", "update"}


def test_trainer_can_read_what_an_upgrade_diffs() -> None:
    """Helm reads every object of the release while it upgrades; a kind the Role cannot read
    would make every promotion fail."""
    docs = render("strimzi-plain-keda") + render("external-sasl-keda") + render("canary-10")
    verbs = _verbs(named(render("external-kafka"), "Role", "rlmf-trainer"))
    hooks = {"Pod", "Job"}  # helm test and the pre-install topics Job: not part of an upgrade
    for doc in docs:
        if doc["kind"] in hooks:
            assert "helm.sh/hook" in doc["metadata"].get("annotations", {}), doc["kind"]
            assert "upgrade" not in doc["metadata"]["annotations"]["helm.sh/hook"]
            continue
        kind = doc["kind"].lower()
        plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
        assert {"get", "list"} <= verbs.get(plural, set()), f"the trainer cannot read {plural}"


def test_api_server_cidr_has_no_default_and_refuses_the_world() -> None:
    with pytest.raises(helm.HelmError, match="networkPolicies.apiServerCidr is required"):
        render_raw({"kafka": {"bootstrap": "kafka.data.svc:9092"}})
    with pytest.raises(helm.HelmError, match="/networkPolicies/apiServerCidr"):
        render_raw(EXTERNAL | {"networkPolicies": {"apiServerCidr": "0.0.0.0/0"}})
    trainer = named(render("external-kafka"), "NetworkPolicy", "rlmf-trainer")
    blocks = [t["ipBlock"]["cidr"] for r in trainer["spec"]["egress"] for t in r.get("to", [])
              if "ipBlock" in t]  # fmt: skip
    assert blocks == ["10.96.0.1/32"]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_redis_requires_a_password_from_a_secret() -> None:
    docs = render("external-kafka")
    redis = named(docs, "StatefulSet", "rlmf-redis")["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    ref = _env(redis)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "rlmf-redis", "key": "password"}
    assert _env(redis)["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"] == ref
    for name in ("rlmf-features", "rlmf-simulator"):
        container = named(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        assert _env(container)["RLMF_FEATURES_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref
    external = named(render("external-redis-no-netpol"), "Deployment", "rlmf-features")
    container = external["spec"]["template"]["spec"]["containers"][0]
    assert "RLMF_FEATURES_REDIS_PASSWORD" not in _env(container)


def test_the_password_reaches_feasts_connection_string(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable the chart sets is the one Feast expands when it loads the rendered config;
    the file itself (on a shared volume) never holds the password."""
    monkeypatch.setenv("RLMF_FEATURES_REDIS_PASSWORD", "s3cret")
    settings = FeaturesSettings(store="cluster", redis_address="rlmf-redis:6379")
    rendered = render_config(settings)
    assert "connection_string: rlmf-redis:6379,password=${RLMF_FEATURES_REDIS_PASSWORD}" in rendered
    assert "s3cret" not in rendered
    assert "s3cret" not in repr(settings), "the password stays out of logs"
    monkeypatch.delenv("RLMF_FEATURES_REDIS_PASSWORD")
    plain = FeaturesSettings(store="cluster", redis_address="rlmf-redis:6379")
    assert "connection_string: rlmf-redis:6379\n" in render_config(plain)


def test_policy_pods_have_their_own_network_policy() -> None:
    docs = render("external-kafka")
    policy = named(docs, "NetworkPolicy", "rlmf-policy")
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"serving.kserve.io/inferenceservice": "rlmf-policy"}
    }
    sources = [f for rule in policy["spec"]["ingress"] for f in rule["from"]]
    namespaces = {
        s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for s in sources
        if "namespaceSelector" in s
    }
    assert namespaces == {"knative-serving", "istio-system", "monitoring"}
    pods = [s["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for s in sources
            if "podSelector" in s]  # fmt: skip
    assert sorted(pods) == ["simulator", "trainer"]
    egress_ports = {p["port"] for r in policy["spec"]["egress"] for p in r.get("ports", [])}
    assert egress_ports == {53}, "the policy talks to nothing but DNS and the mesh"


def test_policy_serves_only_signed_artifacts_and_guards_reload() -> None:
    (isvc,) = of_kind(render("external-kafka"), "InferenceService")
    predictor = isvc["spec"]["predictor"]
    container = predictor["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in predictor["volumes"]}
    key_file = env["RLMF_POLICY_ARTIFACT_PUBLIC_KEY_FILE"]
    key_mount = mounts[key_file.rsplit("/", 1)[0]]
    assert volumes[key_mount["name"]]["secret"]["secretName"] == "rlmf-artifact-public"
    token_file = env["RLMF_POLICY_RELOAD_TOKEN_FILE"]
    token_mount = mounts[token_file.rsplit("/", 1)[0]]
    assert volumes[token_mount["name"]]["secret"]["secretName"] == "rlmf-policy-reload"
    assert env["RLMF_POLICY_RELOAD_ROOT"] == "/models"
    assert mounts["/models"]["readOnly"] is True
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    names = {v["secret"]["secretName"] for v in predictor["volumes"] if "secret" in v}
    assert "rlmf-artifact-signing" not in names, "the private key never reaches the policy"

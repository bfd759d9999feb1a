"""What the chart lets each part do: the trainer's Role (no Secrets, no pods, only the
InferenceService and Helm's ConfigMap records), the API server's address as the trainer's only
way out to it, Redis behind a password, the policy's own NetworkPolicy, signed artifacts and the
reload token from Secrets.

Not run here: an API server enforcing the Role or a CNI enforcing the policies (no cluster);
the objects are checked as a cluster would read them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from services.features.repo import render_config
from services.features.settings import FeaturesSettings
from tests.helpers import (
    EXTERNAL,
    NAMESPACE,
    POLICY_NAMESPACE,
    VALUE_SETS,
    documents,
    named,
    of_kind,
    render,
    render_install,
    render_policy_raw,
    render_raw,
    stop_process,
    wait_until,
)


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
    """It could patch any InferenceService (a pod spec: image, env from any Secret) and write
    every ConfigMap of the release namespace, Helm's records of the whole release included.
    Now its only Role lies in the policy namespace, which holds the InferenceService alone."""
    docs = render(key)
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
    assert [(r["kind"], r["metadata"].get("namespace")) for r in roles] == [
        ("Role", POLICY_NAMESPACE)
    ], "no rights in the release namespace, none cluster-wide"
    binding = named(docs, "RoleBinding", "rlmf-trainer")
    assert binding["metadata"]["namespace"] == POLICY_NAMESPACE
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rlmf-trainer", "namespace": NAMESPACE}
    ]
    role = roles[0]
    verbs = _verbs(role)
    assert "secrets" not in verbs, "Helm's records live in ConfigMaps (HELM_DRIVER=configmap)"
    writable = {r for r, v in verbs.items() if v & WRITE}
    assert writable == {"configmaps", "inferenceservices"}
    (isvc_write,) = [r for r in role["rules"] if "inferenceservices" in r["resources"]
                     and set(r["verbs"]) & WRITE]  # fmt: skip
    assert set(isvc_write["verbs"]) == {"patch", "update"}
    assert isvc_write["resourceNames"] == ["rlmf-policy"], "the one InferenceService, by name"


def test_the_policy_release_holds_the_inferenceservice_alone() -> None:
    """Whatever else the policy needs (its NetworkPolicy, metrics Service, models claim) is the
    admin's release's, so no upgrade the trainer makes can touch it."""
    for key in VALUE_SETS:
        docs = documents(render_policy_raw(VALUE_SETS[key]))
        assert [d["kind"] for d in docs] == ["InferenceService"], key


def test_trainer_can_change_what_an_upgrade_of_its_release_changes() -> None:
    """Helm 4 upgrades a server-side-applied release with a PATCH of every object in it and
    reads each first; the trainer's Role must allow both for the policy release's objects
    (its records are ConfigMaps: read, create, update, delete)."""
    verbs = _verbs(named(render("external-kafka"), "Role", "rlmf-trainer"))
    for key in VALUE_SETS:
        for doc in documents(render_policy_raw(VALUE_SETS[key])):
            plural = doc["kind"].lower() + "s"
            assert {"get", "list", "patch", "update"} <= verbs.get(plural, set()), plural
    assert {"get", "list", "create", "update", "delete"} <= verbs["configmaps"]


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
    pod = named(docs, "StatefulSet", "rlmf-redis")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (redis,) = pod["containers"]
    ref = _env(init)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "rlmf-redis", "key": "password"}
    assert _env(redis)["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"] == ref
    assert "REDIS_PASSWORD" not in _env(redis)
    for name in ("rlmf-features", "rlmf-simulator"):
        container = named(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        assert _env(container)["RLMF_FEATURES_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref
    external = named(render("external-redis-no-netpol"), "Deployment", "rlmf-features")
    container = external["spec"]["template"]["spec"]["containers"][0]
    assert "RLMF_FEATURES_REDIS_PASSWORD" not in _env(container)


def test_redis_password_stays_out_of_its_process_arguments(tmp_path: Path) -> None:
    """The rendered init command and redis.conf, run with a real redis-server: the password is
    required and works, and no process argument carries it (they used to: --requirepass)."""
    import redis as redis_client

    from services.common.broker import free_port

    server_bin = shutil.which("redis-server")
    if server_bin is None:
        pytest.skip("no redis-server here (apt-get install redis-server)")
    docs = render("external-kafka")
    pod = named(docs, "StatefulSet", "rlmf-redis")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"] + container["volumeMounts"]}
    config = named(docs, "ConfigMap", "rlmf-redis")["data"]["redis.conf"]
    # The pod's paths, moved under tmp_path.
    moved = {mounts[n]: str(tmp_path / n) for n in ("auth", "config", "data")}
    for folder in moved.values():
        Path(folder).mkdir()

    def here(text: str) -> str:
        for path, local in moved.items():
            text = text.replace(path, local)
        return text

    password = "s3cret-" + os.urandom(6).hex()
    subprocess.run([*init["command"][:2], here(init["command"][2])], check=True,
                   env={"REDIS_PASSWORD": password, "PATH": os.environ["PATH"]})  # fmt: skip
    assert oct(Path(moved[mounts["auth"]], "auth.conf").stat().st_mode & 0o777) == "0o600"
    conf = Path(moved[mounts["config"]], "redis.conf")
    conf.write_text(here(config))
    port = free_port()
    (conf_arg,) = container["args"]
    args = [server_bin, here(conf_arg), "--port", str(port), "--bind", "127.0.0.1"]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis_client.Redis(port=port, password=password, socket_timeout=2)
        wait_until(lambda: _pings(client), 10, "redis-server to answer")
        with pytest.raises(redis_client.AuthenticationError):
            redis_client.Redis(port=port, socket_timeout=2).set("k", "v")
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert password.encode() not in cmdline
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        stop_process(server)


def _pings(client: Any) -> bool:
    import redis as redis_client

    try:
        return bool(client.ping())
    except redis_client.ConnectionError:
        return False


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
    assert policy["metadata"]["namespace"] == POLICY_NAMESPACE
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"serving.kserve.io/inferenceservice": "rlmf-policy"}
    }
    callers, gateways, prometheus = policy["spec"]["ingress"]
    # The simulator and the trainer, from the release namespace only.
    for peer in callers["from"]:
        selector = peer["namespaceSelector"]["matchLabels"]
        assert selector == {"kubernetes.io/metadata.name": NAMESPACE}
    assert sorted(p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                  for p in callers["from"]) == ["simulator", "trainer"]  # fmt: skip
    # The gateways reach Knative's ports only: not predict, :status or /metrics on 8080.
    namespaces = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                  for p in gateways["from"]}  # fmt: skip
    assert namespaces == {"knative-serving", "istio-system", "kourier-system"}
    assert {p["port"] for p in gateways["ports"]} == {8012, 9090}
    assert [p["namespaceSelector"]["matchLabels"] for p in prometheus["from"]] == [
        {"kubernetes.io/metadata.name": "monitoring"}
    ]
    assert {p["port"] for p in prometheus["ports"]} == {8080}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("ports"), "every ingress rule names its ports"
    egress_ports = {p["port"] for r in policy["spec"]["egress"] for p in r.get("ports", [])}
    assert egress_ports == {53}, "the policy talks to nothing but DNS and the mesh"


def test_policy_is_cluster_local() -> None:
    """Without the label KServe publishes the policy on the external gateway."""
    (isvc,) = of_kind(render("external-kafka"), "InferenceService")
    labels = isvc["metadata"]["labels"]
    assert labels["networking.kserve.io/visibility"] == "cluster-local"
    assert labels["networking.knative.dev/visibility"] == "cluster-local"


def test_reload_route_is_off_by_default() -> None:
    """Nothing on a cluster calls it. The models volume is there for shadow trading alone (the
    candidate pointer), read-only; with shadow off too, the predictor has no models volume."""
    (isvc,) = of_kind(render("external-kafka"), "InferenceService")
    container = isvc["spec"]["predictor"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RLMF_POLICY_RELOAD_ENABLED"] == "false"
    assert env["RLMF_POLICY_CANDIDATE_POINTER"] == "/models/candidate"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    values = EXTERNAL | {"policy": {"shadow": {"enabled": False}}}
    (isvc,) = of_kind(render_install(values), "InferenceService")
    assert "models" not in {v["name"] for v in isvc["spec"]["predictor"]["volumes"]}
    trainer = named(render_install(values), "CronJob", "rlmf-trainer")
    cron_env = trainer["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "RLMF_TRAINER_SHADOW_BARS", "value": "0"} in cron_env


def test_policy_serves_only_signed_artifacts_and_guards_reload() -> None:
    values = EXTERNAL | {"policy": {"reload": {"enabled": True}}}
    (isvc,) = of_kind(render_install(values), "InferenceService")

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

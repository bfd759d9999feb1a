"""The rlmf chart rendered with Helm's own engine (helm-python-sdk) for every value set the issue
names, each manifest validated with kubernetes-validate (strict) and checked for what a cluster
needs: labels, probes, security, GPUs, canary, Kafka with or without Strimzi, NetworkPolicies.

Not run here: no cluster, Docker engine or helm binary exists on these machines, so nothing is
installed; the objects are checked against the API schemas a cluster would enforce."""

from __future__ import annotations

import copy
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from services.common.settings import DEFAULT_PORTS
from services.common.topics import all_topics_with_dlq
from tests.helpers import (
    CHART,
    EXTERNAL,
    NAMESPACE,
    POLICY_CHART,
    POLICY_NAMESPACE,
    RELEASE,
    REPO,
    VALUE_SETS,
    documents,
    load_policy_chart,
    named,
    of_kind,
    pod_specs,
    render,
    render_install,
    render_raw,
    strip,
)

CORE_KINDS = {
    "ConfigMap", "CronJob", "Deployment", "Job", "NetworkPolicy", "PersistentVolumeClaim",
    "Pod", "PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount",
    "StatefulSet", "Namespace", "PersistentVolume", "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}  # fmt: skip
CUSTOM_KINDS = {
    "InferenceService", "ServiceMonitor", "PrometheusRule", "Kafka", "KafkaNodePool", "KafkaTopic",
    "KafkaUser", "ScaledObject", "TriggerAuthentication",
}  # fmt: skip
K8S_VERSION = kubernetes_validate.latest_version()
LONG_RUNNING = ("ingest", "sentiment", "features", "simulator")


@pytest.mark.parametrize("key", sorted(VALUE_SETS))
def test_every_manifest_is_valid_kubernetes(key: str) -> None:
    docs = render(key)
    kinds = {d["kind"] for d in docs}
    assert kinds <= CORE_KINDS | CUSTOM_KINDS, (
        f"unexpected kinds {kinds - CORE_KINDS - CUSTOM_KINDS}"
    )
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            try:
                kubernetes_validate.validate(strip(doc), K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['_template']}: {doc['kind']} {doc['metadata']['name']}: {exc}")


@pytest.mark.parametrize("key", sorted(VALUE_SETS))
def test_recommended_labels_on_every_object(key: str) -> None:
    for doc in render(key):
        labels = doc["metadata"].get("labels", {})
        for label in ("name", "instance", "version", "managed-by", "component", "part-of"):
            assert f"app.kubernetes.io/{label}" in labels, (
                f"{doc['kind']} {doc['metadata']['name']}"
            )
        assert labels["app.kubernetes.io/instance"] == RELEASE


@pytest.mark.parametrize("key", sorted(VALUE_SETS))
def test_containers_are_locked_down(key: str) -> None:
    for name, pod in pod_specs(render(key)):
        for container in pod["containers"]:
            # Serverless: Knative refuses a pod securityContext, so the container carries it.
            sc = pod.get("securityContext", {}) | container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"] and container["resources"]["limits"], name
            assert "/tmp" in {m["mountPath"] for m in container.get("volumeMounts", [])}, name


def test_long_running_services_have_probes_ports_and_service() -> None:
    docs = render("external-kafka")
    for svc in LONG_RUNNING:
        deployment = named(docs, "Deployment", f"rlmf-{svc}")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == f"ghcr.io/rlmf/rlmf-{svc}:0.1.0"
        assert container["ports"][0]["containerPort"] == DEFAULT_PORTS[svc]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RLMF_BUS_BOOTSTRAP"] == "kafka.data.svc:9092"
        assert env["RLMF_BUS_GROUP_PROTOCOL"] == "group"
        assert env["RLMF_HTTP_PORT"] == str(DEFAULT_PORTS[svc])
        service = named(docs, "Service", f"rlmf-{svc}")
        assert service["spec"]["ports"][0]["port"] == DEFAULT_PORTS[svc]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert not of_kind(docs, "PodDisruptionBudget"), "one replica needs no PDB"


def test_pdb_only_where_replicas_exceed_one() -> None:
    docs = render("scaled-out")
    pdbs = {d["metadata"]["name"] for d in of_kind(docs, "PodDisruptionBudget")}
    assert pdbs == {f"rlmf-{svc}" for svc in LONG_RUNNING}
    gpu_pdbs = {d["metadata"]["name"] for d in of_kind(render("gpu"), "PodDisruptionBudget")}
    assert gpu_pdbs == {"rlmf-sentiment"}


def test_gpu_option_requests_gpus() -> None:
    def gpus(docs: list[dict[str, Any]]) -> dict[str, str]:
        out = {}
        for name, pod in pod_specs(docs):
            limit = pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
            if limit is not None:
                out[name] = str(limit)
        return out

    assert gpus(render("external-kafka")) == {}
    assert gpus(render("gpu")) == {"rlmf-sentiment": "1", "rlmf-policy": "1", "rlmf-trainer": "1"}


def _predictor(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return named(docs, "InferenceService", "rlmf-policy")["spec"]["predictor"]


def test_policy_serves_teacher_without_canary_by_default() -> None:
    predictor = _predictor(render("external-kafka"))
    assert "canaryTrafficPercent" not in predictor
    container = predictor["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["STORAGE_URI"] == "pvc://rlmf-models/teacher"
    assert (
        named(render("external-kafka"), "InferenceService", "rlmf-policy")["metadata"][
            "annotations"
        ]["rlmf.io/serving"]
        == "teacher"
    )
    assert container["args"] == [
        "--model_dir",
        "/mnt/models",
        "--http_port",
        "8080",
        "--enable_grpc",
        "false",
    ]
    assert container["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    # The image runs `python -m services.policy`: its parser must take these flags as they are.
    from services.policy.service import build_parser

    parsed = build_parser().parse_args(container["args"])
    assert (parsed.model_dir, parsed.http_port, parsed.enable_grpc) == ("/mnt/models", 8080, False)


@pytest.mark.parametrize(("key", "percent"), [("canary-0", 0), ("canary-10", 10)])
def test_student_rolls_out_as_canary(key: str, percent: int) -> None:
    docs = render(key)
    predictor = _predictor(docs)
    assert predictor["canaryTrafficPercent"] == percent
    env = {e["name"]: e.get("value") for e in predictor["containers"][0]["env"]}
    assert env["STORAGE_URI"] == "pvc://rlmf-models/students/s1"
    assert (
        named(docs, "InferenceService", "rlmf-policy")["metadata"]["annotations"]["rlmf.io/serving"]
        == "student-canary"
    )
    isvc = named(docs, "InferenceService", "rlmf-policy")
    assert (
        isvc["metadata"]["annotations"]["rlmf.io/teacher-storage-uri"]
        == "pvc://rlmf-models/teacher"
    )


def test_external_kafka_gets_a_topics_job_with_every_topic() -> None:
    docs = render("external-kafka")
    assert not of_kind(docs, "Kafka") and not of_kind(docs, "KafkaTopic")
    job = named(docs, "Job", "rlmf-topics")
    # Pre-install only: the trainer's promotion (an upgrade) may not create Jobs.
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install"
    topics = named(docs, "ConfigMap", "rlmf-topics")["data"]["topics.txt"].split()
    assert topics == all_topics_with_dlq()


def test_strimzi_creates_kraft_kafka_and_every_topic() -> None:
    docs = render("strimzi")
    assert not of_kind(docs, "Job"), "Strimzi's topic operator replaces the topics Job"
    kafka = named(docs, "Kafka", "rlmf-kafka")
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1"
    # v1 operators run KRaft with node pools only; the v1beta2 annotations are for old ones.
    assert "annotations" not in kafka["metadata"]
    pool = named(docs, "KafkaNodePool", "rlmf-kafka-dual-role")
    assert sorted(pool["spec"]["roles"]) == ["broker", "controller"]
    topics = sorted(d["spec"]["topicName"] for d in of_kind(docs, "KafkaTopic"))
    assert topics == sorted(all_topics_with_dlq())
    assert {d["spec"]["replicas"] for d in of_kind(docs, "KafkaTopic")} == {3}
    for name, pod in pod_specs(docs):
        env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
        if "RLMF_BUS_BOOTSTRAP" in env:
            # SCRAM over TLS by default: the TLS listener.
            assert env["RLMF_BUS_BOOTSTRAP"] == "rlmf-kafka-kafka-bootstrap:9093", name


def test_feast_config_is_the_repos_cluster_store() -> None:
    shipped = (CHART / "files" / "feature_store.yaml").read_text()
    source = REPO / "feature_repo" / "feature_store.cluster.yaml"
    assert source.is_file(), "feature_repo/feature_store.cluster.yaml is the source of truth"
    assert shipped == source.read_text(), (
        "run: cp feature_repo/feature_store.cluster.yaml charts/rlmf/files/feature_store.yaml"
    )
    cm = named(render("external-kafka"), "ConfigMap", "rlmf-feast")
    assert yaml.safe_load(cm["data"]["feature_store.yaml"]) == yaml.safe_load(shipped)


def test_redis_runs_in_chart_unless_external() -> None:
    features = named(render("external-kafka"), "Deployment", "rlmf-features")
    env = {
        e["name"]: e.get("value")
        for e in features["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["RLMF_FEATURES_REDIS_ADDRESS"] == "rlmf-redis:6379"
    assert named(render("external-kafka"), "StatefulSet", "rlmf-redis")
    external = render("external-redis-no-netpol")
    assert not of_kind(external, "StatefulSet")
    features = named(external, "Deployment", "rlmf-features")
    env = {
        e["name"]: e.get("value")
        for e in features["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["RLMF_FEATURES_REDIS_ADDRESS"] == "redis.data.svc:6379"


def test_trainer_may_only_touch_this_namespace() -> None:
    docs = render("external-kafka")
    cron = named(docs, "CronJob", "rlmf-trainer")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "rlmf-trainer"
    assert pod["containers"][0]["image"].endswith("rlmf-trainer:0.1.0")
    # One cycle per run: the image's default is the long-running service (python -m).
    assert pod["containers"][0]["command"] == ["rlmf", "trainer", "cycle"]
    role = named(docs, "Role", "rlmf-trainer")
    binding = named(docs, "RoleBinding", "rlmf-trainer")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "rlmf-trainer",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rlmf-trainer", "namespace": NAMESPACE}
    ]
    # Nothing cluster-wide, and only the kinds this chart renders (plus Helm's release Secrets).
    assert not [d for d in docs if d["kind"].startswith("Cluster")]
    kinds = {d["kind"].lower() for v in VALUE_SETS for d in render(v)}
    plurals = {k[:-1] + "ies" if k.endswith("y") else k + "s" for k in kinds}
    allowed = {r for rule in role["rules"] for r in rule["resources"]}
    assert allowed - {"secrets"} <= plurals, allowed - plurals
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"]
    # Only the trainer talks to the API server.
    for name, spec in pod_specs(docs):
        if name != "rlmf-trainer":
            assert spec.get("automountServiceAccountToken") is False, name


def test_network_policies_cover_every_workload() -> None:
    docs = render("external-kafka")
    policies = {d["metadata"]["name"]: d for d in of_kind(docs, "NetworkPolicy")}
    expected = {
        f"rlmf-{c}" for c in (*LONG_RUNNING, "trainer", "promotion-watcher", "redis", "policy")
    }
    assert set(policies) == expected
    for name, policy in policies.items():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"], name

    # Only features, simulator and trainer may reach Redis; only the trainer the API server.
    def reaches(name: str, port: int) -> bool:
        return any(
            p.get("port") == port
            for rule in policies[name]["spec"]["egress"]
            for p in rule.get("ports", [])
        )

    assert [c for c in LONG_RUNNING + ("trainer",) if reaches(f"rlmf-{c}", 6379)] == [
        "features",
        "simulator",
        "trainer",
    ]
    assert [c for c in LONG_RUNNING + ("trainer",) if reaches(f"rlmf-{c}", 6443)] == ["trainer"]
    assert [c for c in LONG_RUNNING + ("trainer",) if reaches(f"rlmf-{c}", 80)] == ["ingest"]
    assert not of_kind(render("external-redis-no-netpol"), "NetworkPolicy")


def test_helm_test_pod_checks_the_pipeline() -> None:
    docs = render("external-kafka")
    pod = named(docs, "Pod", "rlmf-test-pipeline")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = named(docs, "ConfigMap", "rlmf-test-pipeline")["data"]["pipeline_test.py"]
    compile(script, "pipeline_test.py", "exec")
    for topic in ("NEWS_RAW", "MARKET_BARS", "NEWS_ENRICHED", "FEATURES_READY"):
        assert topic in script


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "kafka.bootstrap is required"),
        (
            EXTERNAL | {"ingest": {"replicas": "two"}},
            "at '/ingest/replicas': got string, want integer",
        ),
        (EXTERNAL | {"ingest": {"replicass": 2}}, "additional properties 'replicass' not allowed"),
        (
            EXTERNAL | {"policy": {"student": {"canaryTrafficPercent": 150}}},
            "/policy/student/canaryTrafficPercent",
        ),
        (EXTERNAL | {"policy": {"deploymentMode": "Kubernetes"}}, "/policy/deploymentMode"),
        (EXTERNAL | {"trainer": {"schedule": "every night"}}, "/trainer/schedule"),
        ({"kafka": {"bootstrap": "no port here"}}, "/kafka/bootstrap"),
        (EXTERNAL | {"models": {"create": False}}, "models.existingClaim is required"),
        (EXTERNAL | {"sentiment": {"gpu": {"enabled": "yes"}}}, "/sentiment/gpu/enabled"),
        (EXTERNAL | {"unknownTopLevel": 1}, "additional properties 'unknownTopLevel' not allowed"),
    ],
)
def test_bad_values_are_rejected_clearly(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError) as info:
        render_install(values)
    assert message in str(info.value)


def test_helm_lint_passes() -> None:
    result = helm.lint(str(CHART), values=EXTERNAL, strict=True, namespace=NAMESPACE)
    # Strict lint turns warnings into errors; "icon is recommended" is informational.
    assert result["errors"] == [], result
    assert [m["error"] for m in result["messages"]] == ["icon is recommended"], result


def test_notes_render() -> None:
    notes = render_raw(VALUE_SETS["canary-10"])["rlmf/templates/NOTES.txt"]
    assert "helm install rlmf charts/rlmf-policy -n trading-policy" in notes
    assert "helm history rlmf -n trading-policy" in notes
    assert "helm test rlmf -n trading" in notes


@pytest.mark.parametrize("release", ["rlmf", "prod", "rlmf-staging"])
def test_trainer_promotion_values_render_and_name_the_isvc(release: str) -> None:
    """The values services/trainer/promotion.py upgrades with pass the schema and move the
    student to teacher; its InferenceService name matches the chart's."""
    from pathlib import Path as _Path

    from services.trainer.promotion import ClusterPromoter

    promoter = ClusterPromoter(
        release=release, chart=POLICY_CHART, namespace=POLICY_NAMESPACE,
        storage_uri=lambda folder: f"pvc://rlmf-models/{folder.name}",
    )  # fmt: skip
    values = VALUE_SETS["canary-10"] | promoter.values(_Path("/models/v7"))
    rendered = load_policy_chart().render(
        copy.deepcopy(values), name=release, namespace=POLICY_NAMESPACE, is_upgrade=True
    )
    docs = documents(rendered)
    isvc = named(docs, "InferenceService", promoter.isvc_name)
    env = {e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
    assert env["STORAGE_URI"] == "pvc://rlmf-models/v7"
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]

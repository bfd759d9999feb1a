"""The chart's Strimzi objects (Kafka, KafkaNodePool, KafkaTopic, KafkaUser) checked against a
schema written here from Strimzi's kafka.strimzi.io/v1 API, with unknown keys rejected, and the
names, versions and logins a cluster depends on.

Weaker than the other CRD checks, and why: no package on the registries these machines reach
(PyPI, npm, Debian) ships Strimzi's CRD schemas (npm's @kubernetes-models has no Strimzi
package; Strimzi's own `api` artifact is on Maven Central), so STRIMZI_SCHEMAS covers only the
fields this chart uses, as Strimzi 1.0's CRDs define them (types, enums, required fields). A
field Strimzi added or removed elsewhere is not seen here. Not run here: the operator itself."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest

from services.common.topics import all_topics_with_dlq
from tests.helpers import (
    API_CIDR,
    NAMESPACE,
    VALUE_SETS,
    documents,
    load_chart,
    named,
    of_kind,
    pod_specs,
    render,
    strip,
)

API = "kafka.strimzi.io/v1"
# Apache Kafka versions each Strimzi release supports (its kafka-versions.yaml, `supported`),
# for the operators docs/cluster.md documents with the default apiVersion.
SUPPORTED_KAFKA = {
    "0.51": {"4.1.0", "4.1.1", "4.2.0"},
    "1.0": {"4.1.0", "4.1.1", "4.1.2", "4.2.0"},
    "1.1": {"4.2.0", "4.2.1", "4.3.0"},
    "1.2": {"4.2.0", "4.2.1", "4.3.0", "4.3.1"},
}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": props,
        "required": required or [],
    }


_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_QUANTITY = {"type": ["string", "integer"], "pattern": r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$"}
_RESOURCES = _obj(
    {
        "requests": {"type": "object", "additionalProperties": _QUANTITY},
        "limits": {"type": "object", "additionalProperties": _QUANTITY},
    }
)
_METADATA = _obj(
    {
        "name": _NAME,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    ["name"],
)
_CLUSTER_LABELLED = _METADATA | {"required": ["name", "labels"]}
_CONFIG = {"type": "object", "additionalProperties": {"type": ["string", "integer", "boolean"]}}


def _resource(kind: str, metadata: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    return _obj(
        {
            "apiVersion": {"const": API},
            "kind": {"const": kind},
            "metadata": metadata,
            "spec": spec,
        },
        ["apiVersion", "kind", "metadata", "spec"],
    )


ACL_OPERATIONS = [
    "Read", "Write", "Create", "Delete", "Alter", "Describe", "ClusterAction", "AlterConfigs",
    "DescribeConfigs", "IdempotentWrite", "All",
]  # fmt: skip
_VOLUME = _obj(
    {
        "id": {"type": "integer", "minimum": 0},
        "type": {"enum": ["ephemeral", "persistent-claim"]},
        "size": {"type": "string", "pattern": r"^[0-9]+(Mi|Gi|Ti)$"},
        "class": {"type": "string"},
        "deleteClaim": {"type": "boolean"},
        "kraftMetadata": {"enum": ["shared"]},
    },
    ["type"],
)
_LISTENER = _obj(
    {
        "name": {"type": "string", "pattern": r"^[a-z0-9]{1,11}$"},
        "port": {"type": "integer", "minimum": 9092},
        "type": {
            "enum": ["internal", "route", "loadbalancer", "nodeport", "ingress", "cluster-ip"]
        },
        "tls": {"type": "boolean"},
        "authentication": _obj(
            {"type": {"enum": ["tls", "scram-sha-512", "oauth", "custom"]}}, ["type"]
        ),
    },
    ["name", "port", "type", "tls"],
)
_ACL = _obj(
    {
        "type": {"enum": ["allow", "deny"]},
        "resource": _obj(
            {
                "type": {"enum": ["topic", "group", "cluster", "transactionalId"]},
                "name": {"type": "string"},
                "patternType": {"enum": ["literal", "prefix"]},
            },
            ["type"],
        ),
        "host": {"type": "string"},
        "operations": {"type": "array", "items": {"enum": ACL_OPERATIONS}},
    },
    ["resource", "operations"],
)

STRIMZI_SCHEMAS: dict[str, dict[str, Any]] = {
    "KafkaNodePool": _resource(
        "KafkaNodePool",
        _CLUSTER_LABELLED,
        _obj(
            {
                "replicas": {"type": "integer", "minimum": 0},
                "roles": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"enum": ["controller", "broker"]},
                    "uniqueItems": True,
                },
                "storage": _obj(
                    {
                        "type": {"enum": ["ephemeral", "persistent-claim", "jbod"]},
                        "volumes": {"type": "array", "minItems": 1, "items": _VOLUME},
                    },
                    ["type"],
                ),
                "resources": _RESOURCES,
            },
            ["replicas", "roles", "storage"],
        ),
    ),
    # v1 has no spec.zookeeper and no spec.kafka.replicas/storage (node pools hold those).
    "Kafka": _resource(
        "Kafka",
        _METADATA,
        _obj(
            {
                "kafka": _obj(
                    {
                        "version": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+$"},
                        "metadataVersion": {"type": "string"},
                        "listeners": {"type": "array", "minItems": 1, "items": _LISTENER},
                        "authorization": _obj(
                            {"type": {"enum": ["simple", "opa", "keycloak", "custom"]}}, ["type"]
                        ),
                        "config": _CONFIG,
                    },
                    ["listeners"],
                ),
                "entityOperator": _obj(
                    {"topicOperator": _obj({}), "userOperator": _obj({})},
                ),
            },
            ["kafka"],
        ),
    ),
    "KafkaTopic": _resource(
        "KafkaTopic",
        _CLUSTER_LABELLED,
        _obj(
            {
                "topicName": {"type": "string", "pattern": r"^[a-zA-Z0-9._-]{1,249}$"},
                "partitions": {"type": "integer", "minimum": 1},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                "config": _CONFIG,
            },
        ),
    ),
    # v1 keeps `operations` (a list); the single `operation` of v1beta2 is gone.
    "KafkaUser": _resource(
        "KafkaUser",
        _CLUSTER_LABELLED,
        _obj(
            {
                "authentication": _obj(
                    {"type": {"enum": ["tls", "tls-external", "scram-sha-512"]}}, ["type"]
                ),
                "authorization": _obj(
                    {
                        "type": {"enum": ["simple"]},
                        "acls": {"type": "array", "items": _ACL},
                    },
                    ["type", "acls"],
                ),
            },
        ),
    ),
}

STRIMZI_SETS = sorted(k for k, v in VALUE_SETS.items() if v.get("kafka", {}).get("strimzi"))


def _strimzi_docs(key: str) -> list[dict[str, Any]]:
    return [d for d in render(key) if d["apiVersion"].startswith("kafka.strimzi.io/")]


@pytest.mark.parametrize("key", STRIMZI_SETS)
def test_strimzi_resources_match_the_v1_api(key: str) -> None:
    docs = _strimzi_docs(key)
    kinds = {d["kind"] for d in docs}
    assert kinds >= {"Kafka", "KafkaNodePool", "KafkaTopic"}
    cluster = named(docs, "Kafka", named(docs, "Kafka", "rlmf-kafka")["metadata"]["name"])
    for doc in docs:
        assert doc["apiVersion"] == API, f"{doc['kind']}: Strimzi 1.0 serves only {API}"
        jsonschema.validate(strip(doc), STRIMZI_SCHEMAS[doc["kind"]])
        if doc["kind"] != "Kafka":
            assert doc["metadata"]["labels"]["strimzi.io/cluster"] == cluster["metadata"]["name"]


def test_the_schema_rejects_what_v1_removed() -> None:
    kafka = strip(named(render("strimzi"), "Kafka", "rlmf-kafka"))
    kafka["spec"]["zookeeper"] = {"replicas": 3}
    with pytest.raises(jsonschema.ValidationError, match="zookeeper"):
        jsonschema.validate(kafka, STRIMZI_SCHEMAS["Kafka"])
    user = strip(of_kind(render("strimzi"), "KafkaUser")[0])
    user["spec"]["authorization"]["acls"][0]["operation"] = "Read"
    with pytest.raises(jsonschema.ValidationError, match="operation"):
        jsonschema.validate(user, STRIMZI_SCHEMAS["KafkaUser"])


@pytest.mark.slow  # renders the chart again per release (seconds each)
def test_older_operators_get_v1beta2_by_value() -> None:
    values = copy.deepcopy(VALUE_SETS["strimzi"])
    values["kafka"]["strimzi"] |= {"apiVersion": "kafka.strimzi.io/v1beta2", "version": "4.0.0"}
    docs = documents(load_chart().render(values, name="rlmf", namespace=NAMESPACE))
    strimzi = [d for d in docs if d["apiVersion"].startswith("kafka.strimzi.io/")]
    assert {d["apiVersion"] for d in strimzi} == {"kafka.strimzi.io/v1beta2"}
    kafka = named(docs, "Kafka", "rlmf-kafka")
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"


def test_default_kafka_version_is_supported_by_every_documented_operator() -> None:
    version = load_chart().values["kafka"]["strimzi"]["version"]
    unsupported = [op for op, versions in SUPPORTED_KAFKA.items() if version not in versions]
    assert not unsupported, f"Kafka {version} is not supported by Strimzi {unsupported}"


@pytest.mark.slow  # renders the chart again per release (seconds each)
@pytest.mark.parametrize("release", ["rlmf", "a" * 46, "b" * 53 + "-rlmf", "prod-rlmf-eu-west"])
def test_names_never_collide_and_fit(release: str) -> None:
    """A 46-character release name used to cut every KafkaTopic name to the same 63 characters,
    so news.raw.v1 and news.raw.v1.dlq (and six other pairs) became one object."""
    values = VALUE_SETS["strimzi"]
    docs = documents(load_chart().render(copy.deepcopy(values), name=release, namespace="t"))
    topics = of_kind(docs, "KafkaTopic")
    names = [d["metadata"]["name"] for d in topics]
    assert len(set(names)) == len(names) == len(all_topics_with_dlq())
    assert all(len(n) <= 63 for n in names)
    (cluster,) = of_kind(docs, "Kafka")
    (pool,) = of_kind(docs, "KafkaNodePool")
    cluster_name = cluster["metadata"]["name"]
    # Strimzi's own names: <cluster>-kafka-bootstrap and the pods <cluster>-<pool>-<id>.
    assert len(f"{cluster_name}-kafka-bootstrap") <= 63
    assert len(f"{cluster_name}-{pool['metadata']['name']}-99") <= 63
    assert pool["metadata"]["name"].startswith(cluster_name), "the node pool is per release"


@pytest.mark.slow  # renders the chart again per release (seconds each)
def test_two_releases_share_no_strimzi_object_name() -> None:
    def names(release: str) -> set[tuple[str, str]]:
        docs = documents(
            load_chart().render(copy.deepcopy(VALUE_SETS["strimzi"]), name=release, namespace="t")
        )
        return {
            (d["kind"], d["metadata"]["name"])
            for d in docs
            if d["apiVersion"].startswith("kafka.strimzi.io/")
        }

    long_a, long_b = "x" * 40 + "-blue", "x" * 40 + "-green"
    assert not names("rlmf") & names("rlmf-staging")
    assert not names(long_a) & names(long_b)


def test_clients_log_in_with_scram_over_tls() -> None:
    docs = render("strimzi")
    kafka = named(docs, "Kafka", "rlmf-kafka")
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert (listener["port"], listener["tls"]) == (9093, True)
    assert listener["authentication"] == {"type": "scram-sha-512"}
    assert kafka["spec"]["kafka"]["authorization"] == {"type": "simple"}
    topics = {
        a["resource"]["name"] for user in of_kind(docs, "KafkaUser")
        for a in user["spec"]["authorization"]["acls"] if a["resource"]["type"] == "topic"
    }  # fmt: skip
    assert topics == set(all_topics_with_dlq()) - {
        "trading.decisions.v1.dlq", "trading.fills.v1.dlq", "portfolio.snapshots.v1.dlq",
    }, "the .dlq twins of topics nobody consumes are nobody's"  # fmt: skip
    clients = 0
    for name, pod in pod_specs(docs):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            if "RLMF_BUS_BOOTSTRAP" not in env or name == "rlmf-policy":
                continue
            clients += 1
            assert env["RLMF_BUS_BOOTSTRAP"]["value"] == "rlmf-kafka-kafka-bootstrap:9093", name
            assert env["RLMF_BUS_SECURITY_PROTOCOL"]["value"] == "SASL_SSL", name
            assert env["RLMF_BUS_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512", name
            # Each client its own KafkaUser, named after it (rlmf-trainer -> rlmf-kafka-trainer).
            user = "rlmf-kafka-" + name.removeprefix("rlmf-").removesuffix("-pipeline")
            assert env["RLMF_BUS_SASL_USERNAME"]["value"] == user, name
            named(docs, "KafkaUser", user)
            secret = env["RLMF_BUS_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert secret == {"name": user, "key": "password"}, name
            ca = env["RLMF_BUS_SSL_CAFILE"]["value"]
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            folder = ca.rsplit("/", 1)[0]
            assert folder in mounts, f"{name}: {ca} is not mounted"
            assert volumes[mounts[folder]]["secret"]["secretName"] == "rlmf-kafka-cluster-ca-cert"
    assert clients >= 4


def test_without_login_the_plain_listener() -> None:
    docs = render("strimzi-plain-keda")
    kafka = named(docs, "Kafka", "rlmf-kafka")
    assert [lis["port"] for lis in kafka["spec"]["kafka"]["listeners"]] == [9092]
    assert not of_kind(docs, "KafkaUser")
    for _, pod in pod_specs(docs):
        for container in pod["containers"]:
            assert "RLMF_BUS_SASL_PASSWORD" not in {e["name"] for e in container.get("env", [])}


def test_network_policies_open_the_tls_port() -> None:
    for key, port in (("strimzi", 9093), ("strimzi-plain-keda", 9092)):
        for policy in of_kind(render(key), "NetworkPolicy"):
            kafka_rules = [
                r for r in policy["spec"].get("egress", [])
                if any("strimzi.io/cluster" in str(t) for t in r.get("to", []))
            ]  # fmt: skip
            for rule in kafka_rules:
                assert [p["port"] for p in rule["ports"]] == [port], policy["metadata"]["name"]
    assert API_CIDR  # the value sets above carry the API server's address

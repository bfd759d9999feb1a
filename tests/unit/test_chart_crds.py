"""The chart's custom resources checked against their CRDs' schemas, taken from packages:

- InferenceService: the `kserve` package's own V1beta1InferenceService model (built from the
  rendered object, which checks required fields, plus a strict walk that rejects any key or type
  the model does not declare);
- ServiceMonitor and PrometheusRule: npm's @kubernetes-models/prometheus-operator validators, run
  with Node.js (monitoring/validate_crds.mjs); those CRD schemas allow unknown keys, so this
  checks types, patterns and required fields, not typos in optional keys;
- Kafka, KafkaNodePool, KafkaTopic: no package ships Strimzi's schemas, so they are checked
  against STRIMZI_SCHEMAS below, a schema written here by hand from Strimzi's documented
  kafka.strimzi.io/v1beta2 API (only the fields this chart uses; unknown keys rejected).

Not run here: the operators themselves (KServe, Prometheus operator, Strimzi) - no cluster."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import jsonschema
import kserve.models as kserve_models
import kubernetes.client.models as k8s_models
import pytest

from tests.helpers import REPO, VALUE_SETS, of_kind, render, strip

# ---------------------------------------------------------------------------------------------
# KServe: the package's model classes
# ---------------------------------------------------------------------------------------------

_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}


def _model_class(name: str) -> Any:
    return getattr(kserve_models, name, None) or getattr(k8s_models, name, None)


def _strict_walk(value: Any, type_name: str, path: str, errors: list[str]) -> None:
    """Every key must be one the OpenAPI model declares, every value of the declared type."""
    if m := re.fullmatch(r"[lL]ist\[(.+)\]", type_name):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            _strict_walk(item, m.group(1), f"{path}[{i}]", errors)
    elif m := re.fullmatch(r"[dD]ict[\[(](\w+), (.+)[\])]", type_name):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping")
            return
        for key, item in value.items():
            _strict_walk(item, m.group(2), f"{path}.{key}", errors)
    elif type_name in _PRIMITIVES:
        if not isinstance(value, _PRIMITIVES[type_name]) or (
            type_name == "int" and isinstance(value, bool)
        ):
            errors.append(f"{path}: expected {type_name}, got {type(value).__name__}")
    elif (cls := _model_class(type_name)) is not None:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object ({type_name})")
            return
        by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
        for key, item in value.items():
            if key not in by_json:
                errors.append(f"{path}.{key}: not a field of {type_name}")
            else:
                _strict_walk(item, cls.openapi_types[by_json[key]], f"{path}.{key}", errors)
    else:
        errors.append(f"{path}: no model for type {type_name}")


def _build(value: Any, type_name: str) -> Any:
    """Instantiate the model classes, whose constructors check required fields and enums
    (KServe's ApiClient.deserialize cannot: it looks Kubernetes types up in kserve.models)."""
    if m := re.fullmatch(r"[lL]ist\[(.+)\]", type_name):
        return [_build(item, m.group(1)) for item in value]
    if m := re.fullmatch(r"[dD]ict[\[(](\w+), (.+)[\])]", type_name):
        return {key: _build(item, m.group(2)) for key, item in value.items()}
    cls = None if type_name in _PRIMITIVES else _model_class(type_name)
    if cls is None:
        return value
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    return cls(**{by_json[k]: _build(v, cls.openapi_types[by_json[k]]) for k, v in value.items()})


@pytest.mark.parametrize("key", sorted(VALUE_SETS))
def test_inference_service_matches_kserve_model(key: str) -> None:
    (isvc,) = of_kind(render(key), "InferenceService")
    body = strip(isvc)
    errors: list[str] = []
    _strict_walk(body, "V1beta1InferenceService", "InferenceService", errors)
    assert errors == []
    model = _build(body, "V1beta1InferenceService")
    assert model.api_version == "serving.kserve.io/v1beta1"
    predictor = model.spec.predictor
    assert predictor.containers[0].name == "kserve-container"
    assert predictor.min_replicas >= 1


def test_kserve_walk_catches_a_typo() -> None:
    (isvc,) = of_kind(render("canary-10"), "InferenceService")
    body = strip(isvc)
    body["spec"]["predictor"]["canaryTraficPercent"] = 10
    body["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    errors: list[str] = []
    _strict_walk(body, "V1beta1InferenceService", "InferenceService", errors)
    assert any("canaryTraficPercent: not a field of V1beta1PredictorSpec" in e for e in errors)
    assert any("containerPort: expected int" in e for e in errors)


# ---------------------------------------------------------------------------------------------
# Prometheus operator: npm's validators under Node.js
# ---------------------------------------------------------------------------------------------


def _node_validate(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    assert node, "Node.js is needed to run the Prometheus operator CRD validators"
    assert (REPO / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir(), (
        "run `npm ci` at the repository root (package.json) first"
    )
    result = subprocess.run(
        [node, str(REPO / "monitoring" / "validate_crds.mjs")],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


def test_service_monitors_and_rules_match_operator_crds() -> None:
    docs = []
    for key in sorted(VALUE_SETS):
        docs += [strip(d) for d in render(key) if d["kind"] in ("ServiceMonitor", "PrometheusRule")]
    kinds = {d["kind"] for d in docs}
    assert kinds == {"ServiceMonitor", "PrometheusRule"}
    results = _node_validate(docs)
    assert len(results) == len(docs)
    assert [r for r in results if r["error"]] == []


def test_operator_validators_reject_bad_objects() -> None:
    monitor = next(strip(d) for d in render("external-kafka") if d["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "every 15 seconds"
    rule = next(strip(d) for d in render("external-kafka") if d["kind"] == "PrometheusRule")
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    errors = [r["error"] for r in _node_validate([monitor, rule])]
    assert "interval must match pattern" in errors[0]
    assert "must have required property expr" in errors[1]


def test_a_service_monitor_per_service() -> None:
    docs = render("external-kafka")
    monitors = {d["metadata"]["name"]: d for d in of_kind(docs, "ServiceMonitor")}
    assert set(monitors) == {
        f"rlmf-{s}"
        for s in ("ingest", "sentiment", "features", "simulator", "policy", "promotion-watcher")
    }
    services = of_kind(docs, "Service")
    for name, monitor in monitors.items():
        selector = monitor["spec"]["selector"]["matchLabels"]
        matching = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        assert len(matching) == 1, f"{name} selects {len(matching)} Services"
        port_names = {p["name"] for p in matching[0]["spec"]["ports"]}
        assert monitor["spec"]["endpoints"][0]["port"] in port_names
        assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


# ---------------------------------------------------------------------------------------------
# Strimzi: a schema written from Strimzi's documented kafka.strimzi.io/v1beta2 API
# ---------------------------------------------------------------------------------------------


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": props,
        "required": required or [],
    }


_QUANTITY = {"type": ["string", "integer"], "pattern": r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$"}
_RESOURCES = _obj(
    {
        "requests": {"type": "object", "additionalProperties": _QUANTITY},
        "limits": {"type": "object", "additionalProperties": _QUANTITY},
    }
)
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_TYPE_META = {"apiVersion": {"const": "kafka.strimzi.io/v1beta2"}}

STRIMZI_SCHEMAS: dict[str, dict[str, Any]] = {
    # KafkaNodePool: replicas, roles (controller/broker in KRaft), storage (ephemeral,
    # persistent-claim or jbod of volumes with id, size, class, deleteClaim, kraftMetadata),
    # resources.
    "KafkaNodePool": _obj(
        _TYPE_META
        | {
            "kind": {"const": "KafkaNodePool"},
            "metadata": _METADATA | {"required": ["name", "labels"]},
            "spec": _obj(
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
                            "volumes": {
                                "type": "array",
                                "minItems": 1,
                                "items": _obj(
                                    {
                                        "id": {"type": "integer", "minimum": 0},
                                        "type": {"enum": ["ephemeral", "persistent-claim"]},
                                        "size": {
                                            "type": "string",
                                            "pattern": r"^[0-9]+(Mi|Gi|Ti)$",
                                        },
                                        "class": {"type": "string"},
                                        "deleteClaim": {"type": "boolean"},
                                        "kraftMetadata": {"enum": ["shared"]},
                                    },
                                    ["id", "type"],
                                ),
                            },
                        },
                        ["type"],
                    ),
                    "resources": _RESOURCES,
                },
                ["replicas", "roles", "storage"],
            ),
        },
        ["apiVersion", "kind", "metadata", "spec"],
    ),
    # Kafka: spec.kafka (version, listeners with name/port/type/tls, config) and entityOperator;
    # with node pools and KRaft, replicas and storage live in the KafkaNodePool instead.
    "Kafka": _obj(
        _TYPE_META
        | {
            "kind": {"const": "Kafka"},
            "metadata": _METADATA,
            "spec": _obj(
                {
                    "kafka": _obj(
                        {
                            "version": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+$"},
                            "metadataVersion": {"type": "string"},
                            "listeners": {
                                "type": "array",
                                "minItems": 1,
                                "items": _obj(
                                    {
                                        "name": {"type": "string", "pattern": r"^[a-z0-9]{1,11}$"},
                                        "port": {"type": "integer", "minimum": 9092},
                                        "type": {
                                            "enum": [
                                                "internal",
                                                "route",
                                                "loadbalancer",
                                                "nodeport",
                                                "ingress",
                                                "cluster-ip",
                                            ]
                                        },
                                        "tls": {"type": "boolean"},
                                    },
                                    ["name", "port", "type", "tls"],
                                ),
                            },
                            "config": {
                                "type": "object",
                                "additionalProperties": {
                                    "type": ["string", "integer", "boolean", "number"]
                                },
                            },
                        },
                        ["listeners"],
                    ),
                    "entityOperator": _obj(
                        {"topicOperator": {"type": "object"}, "userOperator": {"type": "object"}}
                    ),
                },
                ["kafka"],
            ),
        },
        ["apiVersion", "kind", "metadata", "spec"],
    ),
    # KafkaTopic: labelled with strimzi.io/cluster; spec topicName, partitions, replicas, config.
    "KafkaTopic": _obj(
        _TYPE_META
        | {
            "kind": {"const": "KafkaTopic"},
            "metadata": _METADATA | {"required": ["name", "labels"]},
            "spec": _obj(
                {
                    "topicName": {"type": "string", "pattern": r"^[a-zA-Z0-9._-]{1,249}$"},
                    "partitions": {"type": "integer", "minimum": 1},
                    "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                    "config": {
                        "type": "object",
                        "additionalProperties": {
                            "type": ["string", "integer", "boolean", "number"]
                        },
                    },
                },
                ["partitions", "replicas"],
            ),
        },
        ["apiVersion", "kind", "metadata", "spec"],
    ),
}


def test_strimzi_resources_match_documented_api() -> None:
    docs = [d for d in render("strimzi") if d["kind"] in STRIMZI_SCHEMAS]
    assert {d["kind"] for d in docs} == set(STRIMZI_SCHEMAS)
    cluster = next(d["metadata"]["name"] for d in docs if d["kind"] == "Kafka")
    for doc in docs:
        jsonschema.validate(strip(doc), STRIMZI_SCHEMAS[doc["kind"]])
        if doc["kind"] != "Kafka":
            assert doc["metadata"]["labels"]["strimzi.io/cluster"] == cluster


def test_strimzi_schema_rejects_a_zookeeper_style_kafka() -> None:
    kafka = next(strip(d) for d in render("strimzi") if d["kind"] == "Kafka")
    kafka["spec"]["zookeeper"] = {"replicas": 3}
    with pytest.raises(jsonschema.ValidationError, match="zookeeper"):
        jsonschema.validate(kafka, STRIMZI_SCHEMAS["Kafka"])

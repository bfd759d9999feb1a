"""The chart's custom resources checked against their CRDs' schemas, taken from packages:

- InferenceService: the `kserve` package's own V1beta1InferenceService model (built from the
  rendered object, which checks required fields, plus a strict walk that rejects any key or type
  the model does not declare);
- ServiceMonitor and PrometheusRule: npm's @kubernetes-models/prometheus-operator validators, run
  with Node.js (monitoring/validate_crds.mjs); those CRD schemas allow unknown keys, so this
  checks types, patterns and required fields, not typos in optional keys;
- Kafka, KafkaNodePool, KafkaTopic, KafkaUser: tests/unit/test_chart_strimzi.py (no package
  ships Strimzi's schemas; a weaker, hand-written check).

Not run here: the operators themselves (KServe, Prometheus operator, Strimzi) - no cluster."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

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

"""The chart's custom resources checked against their CRDs' schemas, taken from packages:

- InferenceService: the `kserve` package's own V1beta1InferenceService model (built from the
  rendered object, which checks required fields, plus a strict walk that rejects any key or type
  the model does not declare);
- ServiceMonitor, PrometheusRule (npm's @kubernetes-models/prometheus-operator), ScaledObject,
  TriggerAuthentication (@kubernetes-models/keda) and the Knative Service KServe makes of the
  policy under Serverless (@kubernetes-models/knative): the packages' validators, compiled from
  the CRDs' schemas, run with Node.js (monitoring/validate_crds.mjs) for types, patterns and
  required fields; CRD schemas let unknown keys through (the API server prunes them), so a
  strict walk over the same packages' type declarations (.d.ts, generated from those schemas)
  rejects any key they do not declare;
- Kafka, KafkaNodePool, KafkaTopic, KafkaUser: tests/unit/test_chart_strimzi.py (no package
  ships Strimzi's schemas; a weaker, hand-written check).

Not run here: the operators themselves (KServe, Prometheus operator, Strimzi) - no cluster."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kserve.models as kserve_models
import kubernetes.client.models as k8s_models
import pytest

from tests.helpers import (
    EXTERNAL,
    REPO,
    VALUE_SETS,
    documents,
    named,
    of_kind,
    render,
    render_install,
    render_raw,
    strip,
)

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
# Unknown keys: a strict walk over the npm packages' type declarations
# ---------------------------------------------------------------------------------------------

NODE_MODULES = REPO / "node_modules"
# apiVersion -> the package folder holding <Kind>.d.ts (as in monitoring/validate_crds.mjs).
DTS_FOLDERS = {
    "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
    "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1",
    "serving.knative.dev/v1": "@kubernetes-models/knative/serving.knative.dev/v1",
}
_IMPORT = re.compile(r'import \{ (\w+) \} from "([^"]+)";')
_INTERFACE = re.compile(r"export interface I\w+(?: extends ([\w, ]+))? \{\n")


def _dts_file(spec: str, importer: Path) -> Path:
    base = importer.parent / spec if spec.startswith(".") else NODE_MODULES / spec
    return base.with_suffix(".d.ts") if base.suffix == ".js" else Path(f"{base}.d.ts")


def _members(body: str) -> dict[str, str]:
    """Top-level `"name"?: Type;` members of an interface body (types may span lines)."""
    body = re.sub(r"/\*\*.*?\*/", "", body, flags=re.S)
    members, depth, current = {}, 0, ""
    for char in body:
        if char in "{<(":
            depth += 1
        elif char in "}>)":
            depth -= 1
        if char == ";" and depth == 0:
            if m := re.match(r'\s*"([^"]+)"\??:\s*(.*)', current, re.S):
                members[m.group(1)] = " ".join(m.group(2).split())
            current = ""
        else:
            current += char
    return members


def _interface(path: Path) -> dict[str, tuple[str, Path]] | None:
    """Member name -> (its type, the file it is declared in), inherited members included."""
    text = path.read_text()
    imports = {name: _dts_file(spec, path) for name, spec in _IMPORT.findall(text)}
    m = _INTERFACE.search(text)
    if m is None:
        # `export type IX = IOther;` follows IOther; an alias of a leaf type declares no keys.
        alias = re.search(r"export type I\w+ = (\w+);", text)
        return _interface(imports[alias.group(1)]) if alias and alias.group(1) in imports else None
    end = text.index("\n}\n", m.end())
    members = {k: (v, path) for k, v in _members(text[m.end() : end]).items()}
    for parent in (m.group(1) or "").split(","):
        if parent.strip() in imports:
            members = (_interface(imports[parent.strip()]) or {}) | members
    return members


def _imports(path: Path) -> dict[str, Path]:
    return {name: _dts_file(spec, path) for name, spec in _IMPORT.findall(path.read_text())}


def _dts_walk(value: Any, type_text: str, where: Path, path: str, errors: list[str]) -> None:
    """Reject keys a declared interface does not have; follow arrays, maps and interfaces.
    Leaf types (strings, numbers, unions) are the compiled validators' job."""
    if m := re.fullmatch(r"Array<(.+)>", type_text):
        for i, item in enumerate(value if isinstance(value, list) else []):
            _dts_walk(item, m.group(1), where, f"{path}[{i}]", errors)
    elif m := re.fullmatch(r"\{ \[key: string\]: (.+); \}", type_text):
        for key, item in (value if isinstance(value, dict) else {}).items():
            _dts_walk(item, m.group(1), where, f"{path}.{key}", errors)
    elif type_text in (imports := _imports(where)) and isinstance(value, dict):
        members = _interface(imports[type_text])
        if members is not None:
            _check_keys(value, members, path, errors)


def _check_keys(
    value: dict[str, Any], members: dict[str, tuple[str, Path]], path: str, errors: list[str]
) -> None:
    for key, item in value.items():
        if key not in members:
            errors.append(f"{path}.{key}: not declared")
        else:
            _dts_walk(item, members[key][0], members[key][1], f"{path}.{key}", errors)


def strict_unknown_keys(doc: dict[str, Any]) -> list[str]:
    """Keys of `doc` (metadata aside) that its kind's type declarations do not declare."""
    folder = NODE_MODULES / DTS_FOLDERS[doc["apiVersion"]]
    assert folder.is_dir(), "run `npm ci` at the repository root (package.json) first"
    members = _interface(folder / f"{doc['kind']}.d.ts")
    assert members, f"no interface declared for {doc['kind']}"
    errors: list[str] = []
    _check_keys({k: v for k, v in doc.items() if k != "metadata"}, members, doc["kind"], errors)
    return errors


def _custom(kinds: set[str]) -> list[dict[str, Any]]:
    return [strip(d) for key in sorted(VALUE_SETS) for d in render(key) if d["kind"] in kinds]


def test_monitoring_objects_declare_no_unknown_key() -> None:
    docs = _custom({"ServiceMonitor", "PrometheusRule"})
    assert docs
    assert [e for d in docs for e in strict_unknown_keys(d)] == []


def test_the_strict_walk_catches_typos() -> None:
    monitor = _custom({"ServiceMonitor"})[0]
    monitor["spec"]["endpoints"][0]["honourLabels"] = True
    monitor["spec"]["selectr"] = {}
    scaled = _custom({"ScaledObject"})[0]
    scaled["spec"]["triggers"][0]["authRef"] = {"name": "x"}
    errors = strict_unknown_keys(monitor) + strict_unknown_keys(scaled)
    assert "ServiceMonitor.spec.endpoints[0].honourLabels: not declared" in errors
    assert "ServiceMonitor.spec.selectr: not declared" in errors
    assert "ScaledObject.spec.triggers[0].authRef: not declared" in errors


# ---------------------------------------------------------------------------------------------
# KEDA: consumer-lag autoscaling
# ---------------------------------------------------------------------------------------------


def test_keda_objects_match_keda_crds() -> None:
    docs = _custom({"ScaledObject", "TriggerAuthentication"})
    assert {d["kind"] for d in docs} == {"ScaledObject", "TriggerAuthentication"}
    assert [r for r in _node_validate(docs) if r["error"]] == []
    assert [e for d in docs for e in strict_unknown_keys(d)] == []


def test_keda_scales_each_consumer_on_its_group_lag() -> None:
    docs = render("external-sasl-keda")
    scaled = {d["metadata"]["name"]: d for d in of_kind(docs, "ScaledObject")}
    assert set(scaled) == {"rlmf-sentiment", "rlmf-features", "rlmf-simulator"}
    for name, obj in scaled.items():
        service = name.removeprefix("rlmf-")
        deployment = named(docs, "Deployment", name)
        assert obj["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"], "KEDA's HPA owns the replica count"
        assert obj["spec"]["maxReplicaCount"] <= 3, "no more consumers than partitions"
        for trigger in obj["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert trigger["type"] == "kafka"
            assert meta["consumerGroup"] == f"rlmf-{service}"
            assert (meta["sasl"], meta["tls"]) == ("scram_sha512", "enable")
            assert trigger["authenticationRef"] == {"name": f"rlmf-kafka-{service}"}
        # An existing Kafka: one identity for all; Strimzi: each service's own KafkaUser.
        auth = named(docs, "TriggerAuthentication", f"rlmf-kafka-{service}")
        refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
        assert refs["password"] == {
            "parameter": "password",
            "name": "kafka-rlmf",
            "key": "password",
        }
        assert refs["ca"]["name"] == "kafka-ca"
    strimzi = render("strimzi") + render("strimzi-plain-keda")
    assert not of_kind(strimzi, "TriggerAuthentication"), "strimzi-plain-keda has no login"
    secured = documents(render_raw(VALUE_SETS["strimzi"] | {"keda": {"enabled": True}}))
    auth = named(secured, "TriggerAuthentication", "rlmf-kafka-features")
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert refs["password"]["name"] == "rlmf-kafka-features"
    without = render("external-kafka")
    assert not of_kind(without, "ScaledObject")
    assert named(without, "Deployment", "rlmf-sentiment")["spec"]["replicas"] == 1


# ---------------------------------------------------------------------------------------------
# Knative: the Service KServe makes of the predictor under Serverless
# ---------------------------------------------------------------------------------------------

# What Knative Serving accepts in a pod spec with its default feature flags (config-features:
# kubernetes.podspec-securitycontext, -fieldref, -nodeselector, -tolerations,
# -persistent-volume-claim all disabled; emptyDir and Secret volumes allowed), from its
# PodSpecMask and SecurityContextMask.
KNATIVE_DEFAULT_POD_FIELDS = {
    "serviceAccountName", "containers", "volumes", "imagePullSecrets", "enableServiceLinks",
    "automountServiceAccountToken",
}  # fmt: skip
KNATIVE_DEFAULT_CONTAINER_SECURITY = {
    "capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup", "runAsNonRoot",
    "allowPrivilegeEscalation", "seccompProfile",
}  # fmt: skip
# InferenceService predictor fields that KServe keeps for itself (not copied into the pod spec).
KSERVE_PREDICTOR_FIELDS = {
    "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "canaryTrafficPercent", "labels",
    "annotations",
}  # fmt: skip


def _knative_service(predictor: dict[str, Any]) -> dict[str, Any]:
    """The serving.knative.dev/v1 Service KServe creates for a Serverless predictor."""
    pod = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "rlmf-policy-predictor"},
        "spec": {"template": {"spec": pod}},
    }


def _refused_by_default_knative(pod: dict[str, Any]) -> list[str]:
    refused = [f"pod.{k}" for k in pod if k not in KNATIVE_DEFAULT_POD_FIELDS]
    for volume in pod.get("volumes", []):
        kind = next(k for k in volume if k != "name")
        if kind not in ("emptyDir", "secret", "configMap", "projected"):
            refused.append(f"volume {volume['name']}: {kind}")
    for container in pod["containers"]:
        for key in container.get("securityContext", {}):
            if key not in KNATIVE_DEFAULT_CONTAINER_SECURITY:
                refused.append(f"container securityContext.{key}")
        for env in container.get("env", []):
            if "fieldRef" in env.get("valueFrom", {}):
                refused.append(f"env {env['name']}: fieldRef")
    return refused


SERVERLESS_SETS = sorted(
    k
    for k, v in VALUE_SETS.items()
    if v.get("policy", {}).get("deploymentMode", "Serverless") == "Serverless"
)


SHADOW_VOLUME = ["volume models: persistentVolumeClaim"]
"""What shadow trading (policy.shadow.enabled, the default) needs of Knative: the models volume,
where the trainer's candidate pointer lies (kubernetes.podspec-persistent-volume-claim)."""


def test_serverless_predictor_passes_knative_defaults() -> None:
    """Checked for every Serverless value set, with one Node.js run for all. Shadow trading
    (on by default) needs the PVC flag and nothing else; with it off, nothing needs a flag."""
    services = []
    for key in SERVERLESS_SETS:
        (isvc,) = of_kind(render(key), "InferenceService")
        services.append(_knative_service(isvc["spec"]["predictor"]))
        refused = _refused_by_default_knative(services[-1]["spec"]["template"]["spec"])
        assert refused == SHADOW_VOLUME, key
        assert strict_unknown_keys(services[-1]) == [], key
    assert [r for r in _node_validate(services) if r["error"]] == []
    shadow_off = EXTERNAL | {"policy": {"shadow": {"enabled": False}}}
    (isvc,) = of_kind(render_install(shadow_off), "InferenceService")
    pod = _knative_service(isvc["spec"]["predictor"])["spec"]["template"]["spec"]
    assert _refused_by_default_knative(pod) == []


def test_reload_needs_the_pvc_flag_only() -> None:
    """The models volume (the reload route's root) needs kubernetes.podspec-persistent-volume-
    claim; docs/cluster.md names it."""
    values = EXTERNAL | {
        "policy": {"reload": {"enabled": True, "tokenSecret": {"name": "", "key": "token"}}}
    }
    (isvc,) = of_kind(render_install(values), "InferenceService")
    pod = _knative_service(isvc["spec"]["predictor"])["spec"]["template"]["spec"]
    assert _refused_by_default_knative(pod) == ["volume models: persistentVolumeClaim"]

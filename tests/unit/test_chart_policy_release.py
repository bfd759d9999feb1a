"""The policy's own Helm release (charts/rlmf-policy) and the namespace the rlmf chart makes for
it: one values file serves both charts, the trainer's settings point its promotions at that
release, and the namespace carries what the policy needs around its InferenceService.

Not run here: Helm installing either release (no cluster); both are rendered with Helm's engine
as docs/cluster.md installs them."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import pytest
import yaml

from services.trainer.promotion import ClusterPromoter
from services.trainer.settings import TrainerSettings
from tests.helpers import (
    CHART,
    EXTERNAL,
    NAMESPACE,
    POLICY_CHART,
    POLICY_NAMESPACE,
    REPO,
    VALUE_SETS,
    documents,
    load_policy_chart,
    named,
    of_kind,
    render,
    render_install,
    render_policy_raw,
    render_raw,
)

MAIN_SCHEMA = json.loads((CHART / "values.schema.json").read_text())["properties"]
POLICY_SCHEMA = json.loads((POLICY_CHART / "values.schema.json").read_text())["properties"]
MAIN_VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
POLICY_VALUES = yaml.safe_load((POLICY_CHART / "values.yaml").read_text())


def _without_extra(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema less what a shared values file relaxes (other charts' keys beside ours)."""
    return {k: v for k, v in schema.items() if k not in ("additionalProperties", "required")}


@pytest.mark.parametrize("key", sorted(POLICY_SCHEMA))
def test_policy_chart_checks_each_key_as_the_rlmf_chart_does(key: str) -> None:
    ours, theirs = POLICY_SCHEMA[key], MAIN_SCHEMA[key]
    if "properties" in ours and ours.get("additionalProperties") is True:
        # A subset of the keys (ports.policy, models.create, ...), each checked the same way.
        assert set(ours["properties"]) < set(theirs["properties"]), key
        for name, sub in ours["properties"].items():
            assert sub == theirs["properties"][name], f"{key}.{name}"
        assert _without_extra(ours) | {"properties": None} == _without_extra(theirs) | {
            "properties": None
        }
    else:
        assert ours == theirs, key


def _subset(policy: Any, main: Any) -> None:
    if isinstance(policy, dict):
        for key, value in policy.items():
            assert key in main, key
            _subset(value, main[key])
    else:
        assert policy == main


def test_policy_chart_defaults_are_the_rlmf_charts() -> None:
    _subset(POLICY_VALUES, MAIN_VALUES)


def test_one_values_file_installs_both() -> None:
    """A key only the rlmf chart knows (kafka, trainer, ...) is no error in the policy chart."""
    values = VALUE_SETS["strimzi"] | {"trainer": {"schedule": "0 1 * * 1-5"}}
    (isvc,) = of_kind(render_install(values), "InferenceService")
    assert isvc["metadata"]["name"] == "rlmf-policy"
    with pytest.raises(helm.HelmError, match="/policy/student/canaryTrafficPercent"):
        render_install(EXTERNAL | {"policy": {"student": {"canaryTrafficPercent": 101}}})


def _trainer_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (cronjob,) = of_kind(docs, "CronJob")
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


@pytest.mark.parametrize("release", ["rlmf", "prod"])
def test_trainer_promotes_through_the_policy_release(
    monkeypatch: pytest.MonkeyPatch, release: str
) -> None:
    """The trainer's settings, as its pod reads them, name the policy release, its namespace and
    the chart its image carries, and the InferenceService the promoter waits on is the one
    that release renders."""
    docs = documents(
        helm.Chart.load(str(CHART)).render(
            EXTERNAL, name=release, namespace=NAMESPACE, is_install=True
        )
    )
    for name, value in _trainer_env(docs).items():
        if name.startswith("RLMF_TRAINER_"):
            monkeypatch.setenv(name, value)
    settings = TrainerSettings()
    assert settings.namespace == POLICY_NAMESPACE
    assert settings.helm_release == release
    dockerfile = (REPO / "services" / "trainer" / "Dockerfile").read_text()
    assert f"COPY charts/rlmf-policy {settings.helm_chart}" in dockerfile
    promoter = ClusterPromoter(
        release=settings.helm_release,
        chart=POLICY_CHART,
        namespace=settings.namespace,
        storage_uri=str,
    )
    rendered = documents(
        load_policy_chart().render(
            EXTERNAL, name=release, namespace=POLICY_NAMESPACE, is_install=True
        )
    )
    (isvc,) = of_kind(rendered, "InferenceService")
    assert isvc["metadata"]["name"] == promoter.isvc_name
    role = named(docs, "Role", f"{promoter.isvc_name.removesuffix('-policy')}-trainer")
    assert role["metadata"]["namespace"] == settings.namespace
    (isvc_write,) = [r for r in role["rules"] if "resourceNames" in r]
    assert isvc_write["resourceNames"] == [promoter.isvc_name]


def test_the_policy_namespace_is_made_with_pod_security_labels() -> None:
    namespace = named(render("external-kafka"), "Namespace", POLICY_NAMESPACE)
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"
    assert namespace["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    strict = EXTERNAL | {"policyNamespace": {"podSecurity": {"enforce": "restricted"}}}
    namespace = named(render_install(strict), "Namespace", POLICY_NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_policy_namespace_is_never_the_release_namespace() -> None:
    with pytest.raises(helm.HelmError, match="policyNamespace.name must differ"):
        render_raw(EXTERNAL | {"policyNamespace": {"name": NAMESPACE}})


def test_the_models_reach_the_policy_namespace_read_only() -> None:
    source = {"nfs": {"server": "nfs.storage.svc", "path": "/exports/rlmf-models"}}
    docs = render_install(EXTERNAL | {"models": {"policyVolume": source}})
    volume = named(docs, "PersistentVolume", f"{POLICY_NAMESPACE}-rlmf-models")
    policy_claims = [d for d in of_kind(docs, "PersistentVolumeClaim")
                     if d["metadata"].get("namespace") == POLICY_NAMESPACE]  # fmt: skip
    # The same name as the trainer's claim: the trainer's pvc://<claim>/<folder> holds there.
    assert [c["metadata"]["name"] for c in policy_claims] == ["rlmf-models"]
    assert volume["spec"]["nfs"] == source["nfs"]
    assert volume["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert volume["spec"]["claimRef"] == {"namespace": POLICY_NAMESPACE, "name": "rlmf-models"}
    assert policy_claims[0]["spec"]["volumeName"] == volume["metadata"]["name"]
    # Without a source no volume is made (the admin makes the claim, docs/cluster.md).
    assert of_kind(render("external-kafka"), "PersistentVolume") == []


def test_every_object_of_the_install_names_the_namespace_it_lives_in() -> None:
    """Objects the rlmf release puts in the policy namespace say so; the rest go where Helm
    installs the release."""
    in_policy_namespace = {
        (d["kind"], d["metadata"]["name"])
        for d in documents(render_raw(EXTERNAL))
        if d["metadata"].get("namespace") == POLICY_NAMESPACE
    }
    assert in_policy_namespace == {
        ("Role", "rlmf-trainer"),
        ("RoleBinding", "rlmf-trainer"),
        ("Service", "rlmf-policy-metrics"),
        ("NetworkPolicy", "rlmf-policy"),
    }
    policy_release = documents(render_policy_raw(EXTERNAL))
    assert [d["metadata"].get("namespace") for d in policy_release] == [None]


def test_policy_chart_lints_strictly() -> None:
    result = helm.lint(str(POLICY_CHART), values=EXTERNAL, strict=True, namespace=POLICY_NAMESPACE)
    assert result["errors"] == [], result
    assert [m["error"] for m in result["messages"]] == ["icon is recommended"], result

"""Can the trainer's Role carry out the upgrade Helm 4 sends? A recorded replay, checked against
the Role the chart renders (charts/rlmf/templates/trainer-rbac.yaml).

There is no API server here, so the requests are replayed from Helm's source, v4.2.3:
- pkg/action/upgrade.go: the release history is read (Releases.Last, Releases.Deployed: the
  configmap driver lists ConfigMaps by label), the new record is created before any object
  changes, and the old and new records are updated (superseded, deployed);
- pkg/kube/client.go, Client.Update with server-side apply (Helm 4's default for a release
  installed by Helm 4): for every object of the new manifest a GET, then a PATCH of type
  application/apply-patch+yaml (patchResourceServerSide), whether or not the object changed;
  an object the old manifest had and the new one lacks: GET, DELETE.
Client-side apply sends the same GET and a PATCH only for objects whose three-way diff is not
empty, which includes every object that drifted (an HPA's replicas, an operator's defaults), so
its verbs are a subset of these.

Each request is checked with Kubernetes' RBAC rule matching (apiGroups, resources, verbs,
resourceNames). The policy's InferenceService is a release of its own (charts/rlmf-policy, in
the policy namespace): that release can be upgraded by the trainer's Role; the main release,
every other service, is out of its reach.
"""

from __future__ import annotations

from typing import Any

from tests.helpers import VALUE_SETS, documents, named, render, render_policy_raw, render_raw

Request = tuple[str, str, str, str]
"""(verb, API group, resource, name)."""

RELEASE_RECORDS = ("", "configmaps")


def _resource(doc: dict[str, Any]) -> tuple[str, str]:
    group = doc["apiVersion"].rpartition("/")[0] if "/" in doc["apiVersion"] else ""
    kind = doc["kind"].lower()
    plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
    return group, plural


def helm4_ssa_upgrade(
    old: list[dict[str, Any]], new: list[dict[str, Any]], release: str
) -> list[Request]:
    """The requests Helm v4.2.3 sends for `helm upgrade` of `release` under server-side apply,
    in order (see the module docstring for the source lines)."""
    record = f"sh.helm.release.v1.{release}.v2"
    requests: list[Request] = [("list", *RELEASE_RECORDS, ""), ("list", *RELEASE_RECORDS, "")]
    requests.append(("create", *RELEASE_RECORDS, record))
    for doc in new:
        group, plural = _resource(doc)
        name = doc["metadata"]["name"]
        requests += [("get", group, plural, name), ("patch", group, plural, name)]
    kept = {(d["kind"], d["metadata"]["name"]) for d in new}
    for doc in old:
        if (doc["kind"], doc["metadata"]["name"]) not in kept:
            group, plural = _resource(doc)
            requests += [("get", group, plural, doc["metadata"]["name"])]
            requests += [("delete", group, plural, doc["metadata"]["name"])]
    requests.append(("update", *RELEASE_RECORDS, f"sh.helm.release.v1.{release}.v1"))
    requests.append(("update", *RELEASE_RECORDS, record))
    return requests


def allowed(rules: list[dict[str, Any]], request: Request) -> bool:
    """Kubernetes' RBAC rule matching (pkg/apis/rbac/helpers: VerbMatches, APIGroupMatches,
    ResourceMatches, ResourceNameMatches; list requests carry no name)."""
    verb, group, resource, name = request
    for rule in rules:
        if not {"*", verb} & set(rule.get("verbs", [])):
            continue
        if not {"*", group} & set(rule.get("apiGroups", [])):
            continue
        if not {"*", resource} & set(rule.get("resources", [])):
            continue
        names = rule.get("resourceNames") or []
        if names and name not in names:
            continue
        return True
    return False


def _trainer_role() -> list[dict[str, Any]]:
    """The trainer's Role: in the policy namespace, the only one it has."""
    return list(named(render("external-kafka"), "Role", "rlmf-trainer")["rules"])


def _policy_release() -> list[dict[str, Any]]:
    """What the policy release (charts/rlmf-policy) installs: the one the trainer upgrades."""
    return documents(render_policy_raw(VALUE_SETS["external-kafka"]))


def _main_release() -> list[dict[str, Any]]:
    return documents(render_raw(VALUE_SETS["external-kafka"]))


def _bare(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in d.items() if not k.startswith("_")} for d in docs]


def test_the_policy_release_can_be_upgraded_by_the_trainers_role() -> None:
    """The policy release holds the InferenceService alone (plus Helm's records): every request
    of Helm 4's server-side-applied upgrade is allowed."""
    release = _bare(_policy_release())
    assert [d["kind"] for d in release] == ["InferenceService"]
    requests = helm4_ssa_upgrade(release, release, "rlmf")
    assert ("patch", "serving.kserve.io", "inferenceservices", "rlmf-policy") in requests
    refused = [r for r in requests if not allowed(_trainer_role(), r)]
    assert not refused, refused


def test_the_rule_matcher_refuses_what_the_role_does_not_grant() -> None:
    rules = _trainer_role()
    assert not allowed(rules, ("patch", "apps", "deployments", "rlmf-ingest"))
    assert not allowed(rules, ("get", "", "secrets", "rlmf-redis"))
    assert not allowed(rules, ("create", "rbac.authorization.k8s.io", "roles", "x"))
    assert not allowed(rules, ("patch", "serving.kserve.io", "inferenceservices", "other"))
    assert allowed(rules, ("get", "serving.kserve.io", "inferenceservices", "rlmf-policy"))
    assert not allowed([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["update"],
                         "resourceNames": ["a"]}], ("update", "", "configmaps", "b"))  # fmt: skip


def test_the_main_release_is_out_of_the_trainers_reach() -> None:
    """The main release (every service) stays refused: Helm 4's upgrade of it would PATCH
    Deployments, Services and Roles the trainer has no rights on (its Role is in the policy
    namespace alone; this matcher does not even need that)."""
    release = _bare(_main_release())
    requests = helm4_ssa_upgrade(release, release, "rlmf")
    refused = {(r[1], r[2]) for r in requests if not allowed(_trainer_role(), r)}
    assert ("apps", "deployments") in refused
    assert ("rbac.authorization.k8s.io", "roles") in refused

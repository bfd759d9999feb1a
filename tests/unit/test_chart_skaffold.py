"""skaffold.yaml: one artifact per service image built from its Dockerfile, and a Helm deploy
of the chart whose values (base and each profile) render, with every workload running the image
skaffold built. Not run here: skaffold itself and image builds (no Docker engine, no cluster)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import (
    CHART,
    NAMESPACE,
    POLICY_CHART,
    POLICY_NAMESPACE,
    REPO,
    documents,
    load_chart,
    load_policy_chart,
    pod_specs,
)

SKAFFOLD = yaml.safe_load((REPO / "skaffold.yaml").read_text())
SERVICES = ("ingest", "sentiment", "features", "simulator", "policy", "trainer")
TORCH_IMAGES = {"rlmf-sentiment", "rlmf-policy", "rlmf-trainer"}
# What a user exports before `skaffold dev` (docs/cluster.md).
ENVIRONMENT = {"RLMF_API_SERVER_CIDR": "172.18.0.2/32"}


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    node = values
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _apply_patches(config: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON-patch `add` operations (the only kind skaffold.yaml uses; others fail the test)."""
    config = copy.deepcopy(config)
    for patch in patches:
        assert patch["op"] == "add", f"unsupported patch op {patch['op']}"
        *parents, leaf = [p.replace("~1", "/") for p in patch["path"].strip("/").split("/")]
        node: Any = config
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[leaf] = patch["value"]
    return config


def _values(config: dict[str, Any], chart: Path = CHART) -> dict[str, Any]:
    """The values skaffold deploys `chart` with (the rlmf release, or the policy's own)."""
    releases = config["deploy"]["helm"]["releases"]
    assert [(REPO / r["chartPath"]).resolve() for r in releases] == [CHART, POLICY_CHART]
    assert len({r["name"] for r in releases}) == 1, "the policy release shares the rlmf name"
    (release,) = [r for r in releases if (REPO / r["chartPath"]).resolve() == chart]
    values: dict[str, Any] = {}
    for dotted, value in release.get("setValues", {}).items():
        _set_dotted(values, dotted, value)
    for dotted, template in release.get("setValueTemplates", {}).items():
        # skaffold fills IMAGE_FULLY_QUALIFIED_<image> with the built reference, and any other
        # name from the environment (docs/cluster.md says what to export).
        name = re.fullmatch(r"\{\{\.(\w+)\}\}", template).group(1)
        if image := re.fullmatch(r"IMAGE_FULLY_QUALIFIED_(\w+)", name):
            built = f"registry.test/{image.group(1).replace('_', '-')}@sha256:{'0' * 64}"
            _set_dotted(values, dotted, built)
        else:
            _set_dotted(values, dotted, ENVIRONMENT[name])
    return values


def test_one_artifact_per_service_with_its_dockerfile() -> None:
    artifacts = {a["image"]: a for a in SKAFFOLD["build"]["artifacts"]}
    assert set(artifacts) == {f"rlmf-{s}" for s in SERVICES}
    for service in SERVICES:
        artifact = artifacts[f"rlmf-{service}"]
        assert artifact["context"] == "."
        dockerfile = REPO / artifact["docker"]["dockerfile"]
        assert dockerfile == REPO / "services" / service / "Dockerfile" and dockerfile.is_file()
        # Everything the Dockerfile COPYs from the context exists in the repository.
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert (REPO / source).exists(), (
                        f"{dockerfile}: COPY source {source} is missing"
                    )


@pytest.mark.parametrize("profile", [None, *[p["name"] for p in SKAFFOLD["profiles"]]])
def test_deploy_values_render_with_the_built_images(profile: str | None) -> None:
    config = SKAFFOLD
    if profile is not None:
        (spec,) = [p for p in SKAFFOLD["profiles"] if p["name"] == profile]
        config = _apply_patches(SKAFFOLD, spec.get("patches", []))
    values, policy_values = _values(config), _values(config, POLICY_CHART)
    docs = documents(load_chart().render(values, name="rlmf", namespace=NAMESPACE, is_install=True))
    docs += documents(
        load_policy_chart().render(
            policy_values, name="rlmf", namespace=POLICY_NAMESPACE, is_install=True
        )
    )
    # The policy release gets the rlmf release's values for every key it reads.
    for key in ("deploymentMode", "autoscaling", "gpu"):
        assert policy_values.get("policy", {}).get(key) == values.get("policy", {}).get(key)
    images = {c["image"] for _, pod in pod_specs(docs) for c in pod["containers"]}
    ours = {i for i in images if "rlmf-" in i}
    assert ours and all(i.startswith("registry.test/rlmf-") for i in ours), ours
    assert {re.search(r"rlmf-(\w+)@", i).group(1) for i in ours} == set(SERVICES)
    if profile == "gpu":
        gpus = [
            pod
            for _, pod in pod_specs(docs)
            if "nvidia.com/gpu" in pod["containers"][0]["resources"]["limits"]
        ]
        assert len(gpus) == 3


def test_profiles_exist() -> None:
    assert {p["name"] for p in SKAFFOLD["profiles"]} == {"local", "gpu"}


def test_paths_are_repo_relative() -> None:
    for artifact in SKAFFOLD["build"]["artifacts"]:
        assert not Path(artifact["docker"]["dockerfile"]).is_absolute()


def _profile(name: str) -> dict[str, Any]:
    (spec,) = [p for p in SKAFFOLD["profiles"] if p["name"] == name]
    return _apply_patches(SKAFFOLD, spec.get("patches", []))


def _torch_index(config: dict[str, Any]) -> dict[str, str | None]:
    """The TORCH_INDEX_URL each torch image is built with (None: the Dockerfile's default)."""
    return {
        a["image"]: a["docker"].get("buildArgs", {}).get("TORCH_INDEX_URL")
        for a in config["build"]["artifacts"]
        if a["image"] in TORCH_IMAGES
    }


def test_cpu_images_by_default_and_cuda_under_the_gpu_profile() -> None:
    """Without a profile the Dockerfiles' default (the CPU-only index) applies; the gpu profile
    builds the torch images from PyPI, whose Linux torch is the CUDA build, and only those."""
    assert set(_torch_index(SKAFFOLD).values()) == {None}
    gpu = _profile("gpu")
    assert set(_torch_index(gpu).values()) == {"https://pypi.org/simple"}
    others = [a for a in gpu["build"]["artifacts"] if a["image"] not in TORCH_IMAGES]
    assert all("buildArgs" not in a["docker"] for a in others)
    for artifact in gpu["build"]["artifacts"]:
        for arg in artifact["docker"].get("buildArgs", {}):
            dockerfile = (REPO / artifact["docker"]["dockerfile"]).read_text()
            assert f"ARG {arg}=" in dockerfile, f"{artifact['image']} has no ARG {arg}"


def test_gpu_profile_runs_the_policy_on_cuda() -> None:
    values = _values(_profile("gpu"), POLICY_CHART)
    docs = documents(
        load_policy_chart().render(values, name="rlmf", namespace=POLICY_NAMESPACE, is_install=True)
    )
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    env = {e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
    assert env["RLMF_POLICY_DEVICE"] == "cuda"

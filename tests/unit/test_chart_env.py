"""Every RLMF_* variable the chart sets is a real setting of the service it configures, so a
renamed setting cannot silently stop reaching the cluster. Settings classes are found in each
service's settings.py (pydantic-settings: env prefix + field name)."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from tests.helpers import VALUE_SETS, render

SERVICES = ("ingest", "sentiment", "features", "simulator", "policy", "trainer")
# Variables read by something other than a settings class, and by what.
NOT_SETTINGS = {
    "POD_NAME": "the Kubernetes downward API, for log lines",
    "STORAGE_URI": "KServe's storage initializer",
    "RLMF_TEST_TIMEOUT_S": "the helm test script (charts/rlmf/files/pipeline_test.py)",
    "RLMF_TEST_TICKER": "the helm test script (charts/rlmf/files/pipeline_test.py)",
    "RLMF_TOPICS_PARTITIONS": "the topics Job script (charts/rlmf/files/create_topics.py)",
    "RLMF_TOPICS_REPLICATION_FACTOR": "the topics Job script (charts/rlmf/files/create_topics.py)",
}


def _settings_env(module_name: str) -> set[str] | None:
    """Env names of every BaseSettings class in a module; None when the module does not exist."""
    try:
        if importlib.util.find_spec(module_name) is None:
            return None
    except ModuleNotFoundError:
        return None
    module = importlib.import_module(module_name)
    names = set()
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, BaseSettings) and obj is not BaseSettings:
            prefix = obj.model_config.get("env_prefix", "")
            names |= {(prefix + field).upper() for field in obj.model_fields}
    return names


def _chart_env(component: str) -> set[str]:
    names: set[str] = set()
    for key in VALUE_SETS:
        for doc in render(key):
            labels = doc["metadata"].get("labels", {})
            if labels.get("app.kubernetes.io/component") != component:
                continue
            for container in _containers(doc):
                names |= {e["name"] for e in container.get("env", [])}
    return names


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        return spec["template"]["spec"]["containers"]
    if doc["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    if doc["kind"] == "InferenceService":
        return spec["predictor"]["containers"]
    return spec.get("containers", []) if doc["kind"] == "Pod" else []


def test_common_settings_exist() -> None:
    common = _settings_env("services.common.settings")
    assert common is not None
    for component in ("ingest", "features", "simulator"):
        env = _chart_env(component)
        for name in env:
            if name.split("_")[1] in ("BUS", "HTTP", "LOG"):
                assert name in common, (
                    f"{component}: {name} is not a setting in services/common/settings.py"
                )


@pytest.mark.parametrize("service", SERVICES)
def test_service_env_names_are_settings(service: str) -> None:
    env = {
        n
        for n in _chart_env(service)
        if n.startswith("RLMF_") and n.split("_")[1] not in ("BUS", "HTTP", "LOG", "MODELS")
    }
    known = _settings_env(f"services.{service}.settings")
    if known is None and env:
        pytest.fail(f"services/{service}/settings.py is missing: the chart sets {sorted(env)}")
    known = (known or set()) | (_settings_env("services.features.settings") or set())
    unknown = sorted(n for n in env - known if n not in NOT_SETTINGS)
    assert not unknown, f"the chart sets {unknown} for {service}, which no settings class reads"

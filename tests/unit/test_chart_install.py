"""What an install needs from the policy's InferenceService and the services that call it:
KServe's predictor Service as the one URL, Knative-safe pods under Serverless, the device the
GPU option asks for, KServe's own autoscaling, and the settings other services read.

Not run here: KServe and Knative themselves (no cluster)."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.helpers import (
    EXTERNAL,
    VALUE_SETS,
    named,
    of_kind,
    pod_specs,
    render,
    render_install,
    render_raw,
)

PREDICTOR_URL = "http://rlmf-policy-predictor.trading-policy.svc.cluster.local"


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


@pytest.mark.parametrize("key", ["external-kafka", "raw-deployment"])
def test_every_caller_uses_kserves_predictor_service(key: str) -> None:
    """KServe names the predictor's Service <isvc>-predictor in both modes; <isvc> alone (what
    the simulator and trainer used) exists only under Serverless."""
    docs = render(key)
    (isvc,) = of_kind(docs, "InferenceService")
    urls = {}
    for name, pod in pod_specs(docs):
        for var, value in _env(pod["containers"][0]).items():
            if var.endswith("POLICY_URL"):
                urls[f"{name}:{var}"] = value
    assert urls.keys() >= {"rlmf-simulator:RLMF_SIMULATOR_POLICY_URL"}
    assert set(urls.values()) == {PREDICTOR_URL}
    assert PREDICTOR_URL.startswith(f"http://{isvc['metadata']['name']}-predictor.")


def test_serverless_predictor_has_no_pod_security_context_or_field_ref() -> None:
    (isvc,) = of_kind(render("external-kafka"), "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert "securityContext" not in predictor
    container = predictor["containers"][0]
    assert not [e for e in container["env"] if "fieldRef" in e.get("valueFrom", {})]
    security = container["securityContext"]
    assert (security["runAsUser"], security["runAsNonRoot"]) == (10001, True)
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_raw_deployment_keeps_the_pod_security_context() -> None:
    (isvc,) = of_kind(render("raw-deployment"), "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor["securityContext"]["fsGroup"] == 10001
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 75)
    assert "POD_NAME" in _env(predictor["containers"][0])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"policy": {"deploymentMode": "RawDeployment", "student": {"storageUri": "pvc://m/s"}}},
            "needs policy.deploymentMode=Serverless",
        ),
        (
            {"policy": {"deploymentMode": "RawDeployment"}},
            "policy.autoscaling.metric=concurrency needs Serverless",
        ),
        ({"policy": {"autoscaling": {"metric": "cpu", "target": 80}}}, "is for RawDeployment"),
    ],
)
def test_mode_and_autoscaling_mismatches_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render_install(EXTERNAL | values)


def test_policy_device_follows_the_gpu_option() -> None:
    def device(key: str) -> str:
        (isvc,) = of_kind(render(key), "InferenceService")
        return _env(isvc["spec"]["predictor"]["containers"][0])["RLMF_POLICY_DEVICE"]

    assert device("external-kafka") == "cpu"
    assert device("gpu") == "cuda"


def test_policy_scales_through_kserve() -> None:
    (isvc,) = of_kind(render("external-kafka"), "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", 8)
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 2)


def test_ingest_gets_the_ticker_universe() -> None:
    container = named(render("external-kafka"), "Deployment", "rlmf-ingest")["spec"]["template"]
    env = _env(container["spec"]["containers"][0])
    assert env["RLMF_INGEST_TICKER_UNIVERSE"] == ",".join(["MSFT", "GOOGL"])
    docs = render_raw(EXTERNAL | {"ingest": {"tickerUniverse": ["AAPL", "MSFT"]}})
    assert "value: AAPL,MSFT" in docs["rlmf/templates/ingest.yaml"]


def test_every_value_set_names_the_api_server() -> None:
    """No value set relies on a default that is gone (networkPolicies.apiServerCidr)."""
    for key, values in VALUE_SETS.items():
        netpol = values.get("networkPolicies", {})
        assert netpol.get("enabled") is False or netpol.get("apiServerCidr"), key

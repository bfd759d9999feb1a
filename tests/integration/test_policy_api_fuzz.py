"""Fuzz the policy server's HTTP API from its own OpenAPI document (schemathesis): a real
kserve.ModelServer with a tiny random Llama on loopback, signed artifacts and a reload token.
Every answer must be a status the document lists for that route, and never a 500 (KServe's
501 for model versions and 503 while not ready are documented)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from services.policy.artifact_signing import generate_key_pair
from services.policy.artifacts import init_artifact
from tests.helpers import PolicyServer, start_policy_server

# Starts a model server (~20 s) and fuzzes it for at most 30 s.
pytestmark = pytest.mark.slow

BUDGET_S = 30.0
"""Wall-clock budget of the fuzzing itself, shared by every route and both modes."""
EXAMPLES = 8
"""Cases per route and mode (positive: valid by the document; negative: invalid)."""
TOKEN = "fuzz-reload-token"


@pytest.fixture(scope="module")
def server(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PolicyServer]:
    root = tmp_path_factory.mktemp("fuzz")
    keys = root / "keys"
    generate_key_pair(keys / "signing.pem", keys / "public.pem")
    (keys / "token").write_text(TOKEN + "\n")
    models = root / "models"
    init_artifact(tiny_llama_dir, models / "v0", "v0", signing_key=keys / "signing.pem")
    env = {
        "RLMF_POLICY_ARTIFACT_PUBLIC_KEY_FILE": str(keys / "public.pem"),
        "RLMF_POLICY_RELOAD_TOKEN_FILE": str(keys / "token"),
        "RLMF_POLICY_RELOAD_ROOT": str(models),
        "RLMF_POLICY_HTTP_HOST": "127.0.0.1",
        "RLMF_POLICY_MAX_INSTANCES": "4",
        "RLMF_POLICY_MAX_WAIT_MS": "1",
        "RLMF_POLICY_EXPLAIN_MAX_TOKENS": "2",
        "RLMF_POLICY_MAX_REQUEST_BYTES": "200000",
    }
    srv = start_policy_server(models / "v0", root / "policy.log", env)
    try:
        yield srv
    finally:
        srv.stop()


def _strategies(operation: Any, mode: GenerationMode) -> list[Any]:
    """Cases with any model name (mostly 404s), and with the served one, so that bodies reach
    the model: a random name would stop nearly every case at the lookup."""
    strategies = [operation.as_strategy(generation_mode=mode)]
    names = {p.name for p in operation.iter_parameters() if p.location == "path"}
    for name in names & {"model_name", "name"}:
        served = {name: "policy"} | {n: "1" for n in names - {name}}
        strategies.append(operation.as_strategy(generation_mode=mode, path_parameters=served))
    return strategies


def _fuzz(
    strategy: Any, mode: GenerationMode, url: str, documented: set[str], deadline: float
) -> list[str]:
    problems: list[str] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        if time.monotonic() > deadline or len(problems) >= 5:
            return
        response = case.call(base_url=url, headers=headers, timeout=60)
        status = response.status_code
        if status == 500 or str(status) not in documented:
            problems.append(
                f"{case.method} {case.formatted_path} ({mode.value}) -> {status}: "
                f"{response.text[:200]}; body {str(case.body)[:200]}"
            )

    try:
        run()
    except Unsatisfiable:
        # A route with no parameters and no body has nothing to make invalid.
        assert mode is GenerationMode.NEGATIVE, "no valid case for a route"
    return problems


def test_every_answer_is_a_documented_status_never_a_server_error(server: PolicyServer) -> None:
    document = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    deadline = time.monotonic() + BUDGET_S
    problems: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        documented = set(document["paths"][operation.path][operation.method.lower()]["responses"])
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for strategy in _strategies(operation, mode):
                problems += _fuzz(strategy, mode, server.url, documented, deadline)
            calls += 1
    assert calls >= 2 * 15, f"only {calls} route/mode pairs fuzzed: the document lost routes"
    assert not problems, "\n".join(problems)
    # Still serving after the fuzzing: nothing it sent unloaded or broke the model.
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=30).status_code == 200

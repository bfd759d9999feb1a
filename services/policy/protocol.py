"""The wire formats: KServe v1 and Open Inference Protocol v2 requests in, decisions out.

v1:  POST /v1/models/policy:predict
     {"instances": [MarketState...], "parameters": {"explain": false}}
  -> {"predictions": [{action, probabilities, value, explanation?, model_version}]}
v2:  POST /v2/models/policy/infer
     inputs: "state" BYTES [B], one MarketState JSON per element; parameters.explain optional
  -> outputs: action BYTES [B], probabilities FP32 [B,3] (ACTIONS order), value FP32 [B],
     model_version BYTES [B], explanation BYTES [B] (only when asked)

Every problem raises kserve's InvalidInput (HTTP 400) with a message naming what is wrong.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse
from pydantic import ValidationError

from services.common.market_state import ACTIONS, MarketState
from services.policy.actor_critic import PolicyDecision

V2_STATE_INPUT = "state"


@dataclass(frozen=True)
class Limits:
    max_instances: int
    max_request_bytes: int
    max_features: int


@dataclass
class ParsedRequest:
    """What preprocess hands to predict."""

    states: list[MarketState]
    explain: bool
    protocol: str  # "v1" | "v2"
    request_id: str | None = None


def _error_text(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "state"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_state(raw: Any, index: int, limits: Limits) -> MarketState:
    """One MarketState from a dict or a JSON string; InvalidInput names the instance and field."""
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"instance {index}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"instance {index}: expected a JSON object, got {type(raw).__name__}")
    features = raw.get("features")
    if isinstance(features, dict) and len(features) > limits.max_features:
        raise InvalidInput(
            f"instance {index}: {len(features)} features, at most {limits.max_features} allowed"
        )
    try:
        return MarketState.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"instance {index}: {_error_text(exc)}") from exc


def _check_count(n: int, limits: Limits) -> None:
    if n == 0:
        raise InvalidInput("no instances: send at least one state")
    if n > limits.max_instances:
        raise InvalidInput(f"too many instances: {n}, at most {limits.max_instances} per request")


def _explain_flag(parameters: Any) -> bool:
    if parameters is None:
        return False
    if not isinstance(parameters, dict):
        raise InvalidInput('"parameters" must be an object')
    value = parameters.get("explain", False)
    if hasattr(value, "bool_param"):  # gRPC InferParameter
        value = value.bool_param
    if not isinstance(value, bool):
        raise InvalidInput('"parameters.explain" must be true or false')
    return value


def parse_v1(payload: Any, limits: Limits) -> ParsedRequest:
    """A v1 body (bytes or already-decoded dict) -> states."""
    if isinstance(payload, bytes | str):
        if len(payload) > limits.max_request_bytes:
            raise InvalidInput(
                f"request body of {len(payload)} bytes exceeds {limits.max_request_bytes}"
            )
        try:
            payload = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidInput('request body must be a JSON object with "instances"')
    unknown = sorted(set(payload) - {"instances", "parameters"})
    if unknown:
        raise InvalidInput(f"unknown top-level field(s): {', '.join(unknown)}")
    if "instances" not in payload:
        raise InvalidInput('missing field "instances" (a list of market states)')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f'"instances" must be a list, got {type(instances).__name__}')
    _check_count(len(instances), limits)
    states = [parse_state(raw, i, limits) for i, raw in enumerate(instances)]
    return ParsedRequest(states, _explain_flag(payload.get("parameters")), "v1")


def _bytes_elements(inp: InferInput) -> list[Any]:
    data = inp.data
    if hasattr(data, "bytes_contents"):  # gRPC tensor contents
        return list(data.bytes_contents)
    if isinstance(data, np.ndarray):
        return data.reshape(-1).tolist()
    if not isinstance(data, list):
        raise InvalidInput(f'input "{inp.name}" has no data')
    flat: list[Any] = []
    for item in data:  # tolerate [[...]] nesting from some clients
        flat.extend(item if isinstance(item, list) else [item])
    return flat


def parse_v2(request: InferRequest, limits: Limits) -> ParsedRequest:
    """An Open Inference Protocol request with a BYTES "state" input -> states."""
    by_name = {inp.name: inp for inp in request.inputs}
    if V2_STATE_INPUT not in by_name:
        names = ", ".join(sorted(by_name)) or "none"
        raise InvalidInput(
            f'missing input "{V2_STATE_INPUT}" (BYTES, one MarketState JSON per row); got {names}'
        )
    inp = by_name[V2_STATE_INPUT]
    if inp.datatype != "BYTES":
        raise InvalidInput(f'input "{V2_STATE_INPUT}" must have datatype BYTES, got {inp.datatype}')
    elements = _bytes_elements(inp)
    _check_count(len(elements), limits)
    if int(np.prod(inp.shape)) != len(elements):
        raise InvalidInput(
            f'input "{V2_STATE_INPUT}" shape {inp.shape} does not match {len(elements)} elements'
        )
    size = sum(len(e) for e in elements if isinstance(e, str | bytes))
    if size > limits.max_request_bytes:
        raise InvalidInput(f"states total {size} bytes, more than {limits.max_request_bytes}")
    states = [parse_state(raw, i, limits) for i, raw in enumerate(elements)]
    params = request.parameters if request.parameters is None else dict(request.parameters)
    return ParsedRequest(states, _explain_flag(params), "v2", request.id)


def v1_response(decisions: list[PolicyDecision]) -> dict[str, Any]:
    return {"predictions": [d.model_dump(exclude_none=True) for d in decisions]}


def v2_response(
    model_name: str, request_id: str | None, decisions: list[PolicyDecision], explain: bool
) -> InferResponse:
    n = len(decisions)
    probs = [d.probabilities[a] for d in decisions for a in ACTIONS]
    outputs = [
        InferOutput("action", [n], "BYTES", [d.action for d in decisions]),
        InferOutput("probabilities", [n, len(ACTIONS)], "FP32", probs),
        InferOutput("value", [n], "FP32", [d.value for d in decisions]),
        InferOutput("model_version", [n], "BYTES", [d.model_version for d in decisions]),
    ]
    if explain:
        outputs.append(
            InferOutput("explanation", [n], "BYTES", [d.explanation or "" for d in decisions])
        )
    # A v2 response must carry an id: echo the request's, or make one.
    return InferResponse(
        response_id=request_id or str(uuid.uuid4()), model_name=model_name, infer_outputs=outputs
    )

"""Request parsing: every malformed v1/v2 payload is an InvalidInput naming the problem."""

from __future__ import annotations

import json

import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from services.policy.actor_critic import PolicyDecision
from services.policy.protocol import Limits, parse_v1, parse_v2, v1_response, v2_response

LIMITS = Limits(max_instances=4, max_request_bytes=20_000, max_features=3)
STATE = {"ticker": "MSFT", "as_of": "2024-01-02T21:00:00Z", "recent_closes": [1.0, 2.0]}


def test_v1_accepts_bytes_and_dicts_and_the_explain_flag() -> None:
    body = {"instances": [STATE, STATE], "parameters": {"explain": True}}
    for payload in (body, json.dumps(body).encode()):
        parsed = parse_v1(payload, LIMITS)
        assert [s.ticker for s in parsed.states] == ["MSFT", "MSFT"] and parsed.explain


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "not valid JSON"),
        ([], "JSON object"),
        ({}, 'missing field "instances"'),
        ({"instances": {}}, "must be a list"),
        ({"instances": []}, "no instances"),
        ({"instances": [STATE] * 5}, "too many instances: 5"),
        ({"instances": [{**STATE, "ticker": None}]}, "instance 0: ticker"),
        ({"instances": [STATE, {**STATE, "recent_closes": "x"}]}, "instance 1: recent_closes"),
        (
            {"instances": [{k: v for k, v in STATE.items() if k != "as_of"}]},
            "as_of: Field required",
        ),
        ({"instances": [{**STATE, "news_summary": "x" * 2001}]}, "news_summary"),
        ({"instances": [{**STATE, "features": {str(i): 1.0 for i in range(4)}}]}, "4 features"),
        ({"instances": [STATE], "parameters": {"explain": "yes"}}, "explain"),
        ({"instances": [STATE], "extra": 1}, "unknown top-level field"),
        (b"x" * 20_001, "exceeds"),
    ],
)
def test_v1_bad_payloads_name_the_problem(payload: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")):
        parse_v1(payload, LIMITS)


def _v2(inputs: list[InferInput], **kw: object) -> InferRequest:
    return InferRequest(model_name="policy", infer_inputs=inputs, **kw)


def test_v2_state_tensor_parses() -> None:
    data = [json.dumps(STATE), json.dumps({**STATE, "ticker": "GOOGL"})]
    parsed = parse_v2(_v2([InferInput("state", [2], "BYTES", data)], request_id="r1"), LIMITS)
    assert [s.ticker for s in parsed.states] == ["MSFT", "GOOGL"] and parsed.request_id == "r1"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([InferInput("x", [1], "BYTES", ["{}"])], 'missing input "state"'),
        ([InferInput("state", [1], "FP32", [1.0])], "datatype BYTES"),
        ([InferInput("state", [2], "BYTES", [json.dumps(STATE)])], "shape"),
        ([InferInput("state", [1], "BYTES", ["{oops"])], "instance 0: not valid JSON"),
        ([InferInput("state", [1], "BYTES", ["[1]"])], "expected a JSON object"),
    ],
)
def test_v2_bad_requests_name_the_problem(inputs: list[InferInput], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_v2(_v2(inputs), LIMITS)


def test_responses_have_the_documented_shape() -> None:
    d = PolicyDecision(
        action="buy",
        probabilities={"sell": 0.2, "hold": 0.3, "buy": 0.5},
        value=0.1,
        model_version="v3",
    )
    assert v1_response([d]) == {"predictions": [d.model_dump(exclude_none=True)]}
    response = v2_response("policy", None, [d, d], explain=False)
    assert response.id  # a v2 response needs an id even when the request had none
    outputs = {o.name: o for o in response.outputs}
    assert outputs["probabilities"].shape == [2, 3]
    assert outputs["probabilities"].data[:3] == [0.2, 0.3, 0.5]  # ACTIONS order
    assert outputs["action"].data == ["buy", "buy"] and "explanation" not in outputs

"""The policy server's OpenAPI document: what each route takes and every status it answers.

KServe's FastAPI app documents its routes with FastAPI's defaults (200 and a 422 this server
never sends, and no body for v1 predict, which reads raw bytes). The fuzz test
(tests/integration/test_policy_api_fuzz.py) holds the server to this document, so it says
what the routes really take and answer: the v1 body's MarketState schema, the 400s of
InvalidInput, the 413 of the streaming body limit, the reload route's 401/403/422.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

from services.common.market_state import MarketState

_TEXT = {
    200: "OK",
    400: "The body or a parameter is invalid; the error names the field",
    401: "Missing or wrong bearer token",
    403: "Refused: outside the reload root, not from loopback, or a repository call",
    404: "No such model",
    413: "The body is over RLMF_POLICY_MAX_REQUEST_BYTES",
    422: "The folder failed to load or verify; the old model keeps serving",
    501: "Not implemented: explain by this model, model versions by KServe",
    503: "The model is not ready",
}
_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}

_POST_DATA = (200, 400, 404, 413, 503)
_VERSIONED = 501
"""KServe's v2 routes answer a `model_version` (query or path) with 501: not supported."""
STATUSES: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/models/{model_name}:predict"): _POST_DATA,
    ("post", "/v1/models/{model_name}:explain"): (*_POST_DATA, 501),
    ("post", "/v2/models/{model_name}/infer"): (*_POST_DATA, _VERSIONED),
    ("post", "/v1/models/{name}:reload"): (200, 400, 401, 403, 404, 413, 422),
    ("post", "/v1/models/{name}:retire"): (200, 401, 403, 404, 413),
    ("get", "/v1/models/{name}:status"): (200, 404),
    ("get", "/v1/models/{model_name}"): (200, 404, 503),
    ("get", "/v2/models/{model_name}"): (200, 404, _VERSIONED),
    ("get", "/v2/models/{model_name}/ready"): (200, 404, 503, _VERSIONED),
    ("get", "/v2/models/{model_name}/versions/{model_version}/ready"): (200, 404, 503, _VERSIONED),
    ("get", "/v2/health/ready"): (200, 503),
    ("post", "/v2/repository/models/{model_name}/load"): (403, 413),
    ("post", "/v2/repository/models/{model_name}/unload"): (403, 413),
}
"""Per operation, every status the server answers; any other operation: 200 (and 413 for a
POST, since the body limit stands in front of every route)."""


class V1Parameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    explain: bool = False


class V1Request(BaseModel):
    """POST /v1/models/<name>:predict (services/policy/protocol.py parse_v1)."""

    model_config = ConfigDict(extra="forbid")
    instances: list[MarketState]
    parameters: V1Parameters | None = None


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model_dir: str


def _responses(codes: tuple[int, ...]) -> dict[str, Any]:
    return {
        str(code): {
            "description": _TEXT[code],
            **({} if code == 200 else {"content": {"application/json": {"schema": _ERROR}}}),
        }
        for code in codes
    }


def _body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"required": True, "content": {"application/json": {"schema": schema}}}


RELOAD_DOC: dict[str, Any] = {"openapi_extra": {"requestBody": _body(ReloadRequest)}}
"""add_api_route arguments of the reload route (its statuses come from STATUSES)."""
STATUS_DOC: dict[str, Any] = {}


def _lift_defs(schema: dict[str, Any], body: dict[str, Any]) -> None:
    """Move a pydantic schema's $defs into components/schemas, where its $refs point."""
    inner = body["content"]["application/json"]["schema"]
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(inner.pop("$defs", {}))


def _document(schema: dict[str, Any]) -> dict[str, Any]:
    predict = schema["paths"].get("/v1/models/{model_name}:predict", {}).get("post")
    if predict is not None:
        predict["requestBody"] = _body(V1Request)
        _lift_defs(schema, predict["requestBody"])
    reload = schema["paths"].get("/v1/models/{name}:reload", {}).get("post")
    if reload is not None:
        _lift_defs(schema, reload["requestBody"])
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            default = (200, 413) if method == "post" else (200,)
            operation["responses"] = _responses(STATUSES.get((method, path), default))
    return schema


def document_api(app: FastAPI) -> None:
    """Make app.openapi() (served at /openapi.json) this document, built on first use."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if not getattr(app, "_rlmf_documented", False):
            app.openapi_schema = _document(generate())
            app._rlmf_documented = True  # type: ignore[attr-defined]
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

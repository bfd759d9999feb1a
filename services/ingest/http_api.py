"""`POST /v1/news`: one item (a JSON object) or a bounded batch (a JSON array).

All-or-nothing per request: 202 once the broker has acknowledged every event, otherwise a 4xx
that lists what is wrong with each bad item, or a 503 with Retry-After when the broker did not
acknowledge in time; in neither case is an id remembered as seen, so a client can fix or simply
resend the whole request and get it accepted, not called a duplicate. Every status the route
can answer is in its OpenAPI document.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.common.body_limit import BodyTooLarge, read_limited
from services.ingest.normalise import RejectedInput, decode_json_object, parse_raw
from services.ingest.pipeline import IngestPipeline
from services.ingest.publisher import PreparedEvent, PublisherUnavailable
from services.ingest.schema import NormalisedNews, RawNews

SOURCE = "http"

Answer = tuple[int, dict[str, Any], dict[str, str]]


def add_news_routes(app: FastAPI, pipeline: IngestPipeline) -> None:
    """Mount POST /v1/news on `app` (the service's HealthApp.app)."""
    s = pipeline.settings
    limit = s.max_item_bytes * s.max_batch
    # Its own thread limit, so requests waiting on the broker never take the threads that
    # /healthz and /readyz run on (anyio's default limiter).
    limiter = anyio.CapacityLimiter(s.max_queued_requests)

    @app.post("/v1/news", status_code=202, openapi_extra=openapi_document(pipeline))
    async def post_news(request: Request) -> JSONResponse:
        try:
            raw = await read_limited(request, limit)
        except BodyTooLarge as exc:
            pipeline.received(SOURCE)
            pipeline.rejected(SOURCE)
            return JSONResponse({"error": str(exc)}, status_code=413)
        if limiter.available_tokens < 1:
            pipeline.received(SOURCE)
            pipeline.rejected(SOURCE)
            return _unavailable(pipeline, "too many requests are waiting for the broker")
        status, answer, headers = await anyio.to_thread.run_sync(
            accept, pipeline, raw, limiter=limiter
        )
        return JSONResponse(answer, status_code=status, headers=headers)


def accept(pipeline: IngestPipeline, raw: bytes) -> Answer:
    """The status, JSON answer and headers for one request body (runs on a worker thread)."""
    s = pipeline.settings
    try:
        body = decode_json_object(raw, s.max_item_bytes * s.max_batch)
    except RejectedInput as exc:
        pipeline.received(SOURCE)
        pipeline.rejected(SOURCE)
        return 400, {"error": str(exc)}, {}
    records = body if isinstance(body, list) else [body]
    pipeline.received(SOURCE, max(1, len(records)))
    if not records:
        pipeline.rejected(SOURCE)
        return 400, {"error": "empty batch: send one item or a non-empty array"}, {}
    if len(records) > s.max_batch:
        pipeline.rejected(SOURCE, len(records))
        error = f"batch of {len(records)} items, over the limit of {s.max_batch}"
        return 413, {"error": error}, {}
    items, events, errors = _prepare_all(pipeline, records)
    if errors:
        pipeline.rejected(SOURCE, len(records))
        return 422, {"error": "invalid news items; nothing was accepted", "items": errors}, {}
    try:
        outcomes = pipeline.publish_batch(items, events, SOURCE)
    except PublisherUnavailable as exc:
        status, answer, headers = _unavailable_answer(pipeline, str(exc))
        return status, answer, headers
    return (
        202,
        {
            "accepted": [o.item_id for o in outcomes if not o.duplicate],
            "duplicates": [o.item_id for o in outcomes if o.duplicate],
            "events": [e for o in outcomes for e in o.event_ids],
        },
        {},
    )


def _prepare_all(
    pipeline: IngestPipeline, records: list[Any]
) -> tuple[list[NormalisedNews], list[PreparedEvent], list[dict[str, Any]]]:
    """Every record normalised and its events encoded, or the reason for each that was not."""
    items: list[NormalisedNews] = []
    events: list[PreparedEvent] = []
    errors: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        try:
            item = pipeline.normaliser.normalise(parse_raw(record))
            events += pipeline.prepare(len(items), item)
            items.append(item)
        except RejectedInput as exc:
            errors.append({"index": index, "error": str(exc)})
    return items, events, errors


def _unavailable_answer(pipeline: IngestPipeline, reason: str) -> Answer:
    retry_after = str(pipeline.settings.retry_after_s)
    answer = {"error": f"not accepted, retry later: {reason}", "retry_after_s": int(retry_after)}
    return 503, answer, {"Retry-After": retry_after}


def _unavailable(pipeline: IngestPipeline, reason: str) -> JSONResponse:
    status, answer, headers = _unavailable_answer(pipeline, reason)
    return JSONResponse(answer, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------------
# The route's OpenAPI document: the body it takes and every status it answers
# ---------------------------------------------------------------------------------------------

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "error"],
                "properties": {"index": {"type": "integer"}, "error": {"type": "string"}},
            },
        },
        "retry_after_s": {"type": "integer"},
    },
}
_ACCEPTED = {
    "type": "object",
    "required": ["accepted", "duplicates", "events"],
    "properties": {
        name: {"type": "array", "items": {"type": "string"}}
        for name in ("accepted", "duplicates", "events")
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document(pipeline: IngestPipeline) -> dict[str, Any]:
    item = RawNews.model_json_schema()
    batch = {"type": "array", "items": item, "maxItems": pipeline.settings.max_batch}
    retry_after = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    unavailable = _json(_ERROR, "The broker did not acknowledge in time; nothing remembered")
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"anyOf": [item, batch]}}},
        },
        "responses": {
            "202": _json(_ACCEPTED, "Every event acknowledged by the broker"),
            "400": _json(_ERROR, "Not JSON, not UTF-8, or an empty batch"),
            "413": _json(_ERROR, "Body or batch over its limit"),
            "422": _json(_ERROR, "An invalid item; nothing was accepted"),
            "503": {**unavailable, "headers": retry_after},
        },
    }

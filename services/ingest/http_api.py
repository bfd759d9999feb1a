"""`POST /v1/news`: one item (a JSON object) or a bounded batch (a JSON array).

All-or-nothing per request: 202 with the accepted ids when every item is valid, otherwise a 4xx
that lists what is wrong with each bad item and publishes nothing, so a client can fix and resend
the whole request without creating duplicates.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.ingest.normalise import RejectedInput, decode_json_object, parse_raw
from services.ingest.pipeline import IngestPipeline
from services.ingest.schema import NormalisedNews

SOURCE = "http"


def add_news_routes(app: FastAPI, pipeline: IngestPipeline) -> None:
    """Mount POST /v1/news on `app` (the service's HealthApp.app)."""
    lock = threading.Lock()  # the pipeline's de-dup memory and producer are shared state

    @app.post("/v1/news", status_code=202)
    async def post_news(request: Request) -> JSONResponse:
        raw = await request.body()
        with lock:
            status, answer = accept(pipeline, raw)
        return JSONResponse(answer, status_code=status)


def accept(pipeline: IngestPipeline, raw: bytes) -> tuple[int, dict[str, Any]]:
    """The status and JSON answer for one request body."""
    s = pipeline.settings
    limit = s.max_item_bytes * s.max_batch
    if len(raw) > limit:
        pipeline.received(SOURCE)
        pipeline.rejected(SOURCE)
        return 413, {"error": f"request body is {len(raw)} bytes, over the limit of {limit}"}
    try:
        body = decode_json_object(raw, limit)
    except RejectedInput as exc:
        pipeline.received(SOURCE)
        pipeline.rejected(SOURCE)
        return 400, {"error": str(exc)}
    records = body if isinstance(body, list) else [body]
    pipeline.received(SOURCE, max(1, len(records)))
    if not records:
        pipeline.rejected(SOURCE)
        return 400, {"error": "empty batch: send one item or a non-empty array"}
    if len(records) > s.max_batch:
        for _ in records:
            pipeline.rejected(SOURCE)
        return 413, {"error": f"batch of {len(records)} items, over the limit of {s.max_batch}"}
    items, errors = _normalise_all(pipeline, records)
    if errors:
        for _ in records:
            pipeline.rejected(SOURCE)
        return 422, {"error": "invalid news items; nothing was accepted", "items": errors}
    outcomes = [pipeline.publish(item, SOURCE) for item in items]
    pipeline.flush()
    return 202, {
        "accepted": [o.item_id for o in outcomes if not o.duplicate],
        "duplicates": [o.item_id for o in outcomes if o.duplicate],
        "events": [e for o in outcomes for e in o.event_ids],
    }


def _normalise_all(
    pipeline: IngestPipeline, records: list[Any]
) -> tuple[list[NormalisedNews], list[dict[str, Any]]]:
    items, errors = [], []
    for index, record in enumerate(records):
        try:
            items.append(pipeline.normaliser.normalise(parse_raw(record)))
        except RejectedInput as exc:
            errors.append({"index": index, "error": str(exc)})
    return items, errors

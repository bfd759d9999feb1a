"""News for `rlmf market publish --news FILE`: a JSONL or CSV file of items with published_at,
ticker, headline and an optional body, checked line by line and sent through ingest's
`POST /v1/news` (which validates, de-duplicates and publishes them to news.raw.v1) in
published_at order. An item without an id gets one from its ticker, time and headline, so the
same file sent again is the same items again, which ingest drops as duplicates."""

from __future__ import annotations

import csv
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

BATCH = 50
"""Items per request: under ingest's max_batch (100 by default)."""


class NewsFileError(ValueError):
    """A news file that cannot be sent; the message names the file and line."""


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path.name}:{number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise NewsFileError(f"{path.name}:{number}: not JSON ({exc})") from exc
        return rows
    if suffix == ".csv":
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            return [(f"{path.name}:{reader.line_num}", dict(row)) for row in reader]
    raise NewsFileError(f"{path}: unknown news file type {suffix!r}; use .jsonl or .csv")


def _item(where: str, row: dict[str, Any], default_ticker: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise NewsFileError(f"{where}: an item is an object, got {type(row).__name__}")
    headline = str(row.get("headline") or "").strip()
    if not headline:
        raise NewsFileError(f"{where}: no headline")
    raw_time = row.get("published_at")
    try:
        published = datetime.fromisoformat(str(raw_time).replace("Z", "+00:00"))
    except ValueError as exc:
        raise NewsFileError(f"{where}: published_at {raw_time!r} is not ISO 8601") from exc
    published = published if published.tzinfo else published.replace(tzinfo=UTC)
    ticker = str(row.get("ticker") or default_ticker).strip()
    item_id = (
        str(row.get("id") or "")
        or hashlib.sha256(f"{ticker}|{published.isoformat()}|{headline}".encode()).hexdigest()[:24]
    )
    return {
        "id": item_id,
        "headline": headline,
        "body": str(row.get("body") or ""),
        "published_at": published.isoformat(),
        "tickers": [ticker],
        "source": "news-file",
    }


def read_news(path: Path, default_ticker: str) -> list[dict[str, Any]]:
    """The file's items as ingest's raw news, oldest first (a row without a ticker is
    `default_ticker`'s)."""
    items = [_item(where, row, default_ticker) for where, row in _rows(path)]
    return sorted(items, key=lambda item: item["published_at"])


def post_news(items: list[dict[str, Any]], ingest_url: str, timeout_s: float = 60.0) -> int:
    """POST the items to ingest in batches; returns how many it accepted (202)."""
    url = f"{ingest_url.rstrip('/')}/v1/news"
    with httpx.Client(timeout=timeout_s) as client:
        for first in range(0, len(items), BATCH):
            batch = items[first : first + BATCH]
            try:
                response = client.post(url, json=batch)
            except httpx.HTTPError as exc:
                raise NewsFileError(f"ingest at {url} did not answer: {exc}") from exc
            if response.status_code != 202:
                raise NewsFileError(
                    f"ingest refused items {first + 1}-{first + len(batch)}: "
                    f"{response.status_code} {response.text[:500]}"
                )
    return len(items)

"""Issue 16, ingest item 1: nothing is lost silently on the real broker. An item that cannot
be sent is a 4xx with its reason and leaves no de-dup key behind, so its corrected retry is
published; a batch is all-or-nothing; received = published + duplicates + rejected."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from services.common import envelope as envelopes
from services.common.broker import free_port
from services.common.bus import Producer, ensure_topics
from services.common.http_server import BackgroundServer, HealthApp
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.common.topics import NEWS_RAW, dlq
from services.ingest.http_api import add_news_routes
from services.ingest.pipeline import IngestPipeline
from services.ingest.service import replay_file
from services.ingest.settings import IngestSettings
from tests.helpers import end_offsets

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def pipeline(bus_settings: BusSettings) -> Iterator[IngestPipeline]:
    ensure_topics(bus_settings, [NEWS_RAW, dlq(NEWS_RAW)], "test")
    settings = IngestSettings(tickers_file=DATA / "tickers.csv", max_batch=5)
    pipe = IngestPipeline(settings, Producer(bus_settings, "ingest-test"))
    yield pipe
    pipe.close()


@pytest.fixture
def api(pipeline: IngestPipeline) -> Iterator[httpx.Client]:
    health = HealthApp("ingest-test")
    add_news_routes(health.app, pipeline)
    server = BackgroundServer(health.app, "127.0.0.1", free_port())
    server.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=20) as client:
        yield client
    server.stop()


def events_since(bus: BusSettings, start: dict[TopicPartition, int]) -> list[pb.NewsItem]:
    """Every news.raw.v1 event after `start`, read until the end offsets of now."""
    end = end_offsets(bus, NEWS_RAW)
    consumer = KafkaConsumer(bootstrap_servers=bus.bootstrap, enable_auto_commit=False)
    consumer.assign(list(start))
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    records: list[Any] = []
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline and any(consumer.position(tp) < end[tp] for tp in start):
            for batch in consumer.poll(timeout_ms=200).values():
                records += batch
    finally:
        consumer.close()
    return [envelopes.decode(r.value, pb.NewsItem).payload for r in records]


def item(item_id: str, headline: str) -> dict[str, object]:
    return {"id": item_id, "headline": headline, "published_at": "2024-03-05T10:00:00Z"}


def post(api: httpx.Client, body: object) -> httpx.Response:
    # json.dumps escapes a lone surrogate as \ud800: valid JSON that Python reads back as one.
    return api.post(
        "/v1/news", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )


def test_an_item_that_cannot_be_sent_is_a_4xx_and_its_corrected_retry_is_published(
    bus_settings: BusSettings, api: httpx.Client, pipeline: IngestPipeline, unique: str
) -> None:
    start = end_offsets(bus_settings, NEWS_RAW)
    broken = post(api, item(f"s1-{unique}", f"Acme {unique} \ud800 profit warning"))
    assert broken.status_code == 422, broken.text
    assert "lone surrogate" in broken.text

    # Same text without the surrogate (the same de-dup content), under a new id.
    fixed = post(api, item(f"s2-{unique}", f"Acme {unique} profit warning"))
    assert fixed.status_code == 202, fixed.text
    assert fixed.json()["accepted"] == [f"s2-{unique}"] and fixed.json()["events"]
    assert [e.item_id for e in events_since(bus_settings, start)] == [f"s2-{unique}"]
    assert pipeline.stats.reconciles()


def test_a_batch_with_one_bad_item_publishes_nothing_and_the_fixed_batch_is_accepted(
    bus_settings: BusSettings, api: httpx.Client, pipeline: IngestPipeline, unique: str
) -> None:
    start = end_offsets(bus_settings, NEWS_RAW)
    good = item(f"b1-{unique}", f"Acme {unique} raises its dividend")
    bad = item(f"b2-{unique}", f"Acme {unique} \udfff cuts jobs")
    first = post(api, [good, bad])
    assert first.status_code == 422, first.text
    assert [e["index"] for e in first.json()["items"]] == [1]
    assert events_since(bus_settings, start) == []

    again = post(api, [good, item(f"b2-{unique}", f"Acme {unique} cuts jobs")])
    assert again.status_code == 202, again.text
    assert again.json()["accepted"] == [f"b1-{unique}", f"b2-{unique}"]
    assert again.json()["duplicates"] == []
    published = sorted(e.item_id for e in events_since(bus_settings, start))
    assert published == [f"b1-{unique}", f"b2-{unique}"]
    s = pipeline.stats
    assert (s.received, s.published, s.duplicates, s.rejected) == (4, 2, 0, 2)
    assert s.reconciles()


def test_counts_reconcile_over_every_kind_of_answer(
    api: httpx.Client, pipeline: IngestPipeline, unique: str, tmp_path: Path
) -> None:
    bodies: list[bytes] = [
        json.dumps(item(f"r1-{unique}", f"Acme {unique} one")).encode(),
        json.dumps(item(f"r1-{unique}", f"Acme {unique} one")).encode(),  # duplicate
        json.dumps([item(f"r{i}-{unique}", f"Acme {unique} n{i}") for i in range(2, 5)]).encode(),
        json.dumps([item(f"r{i}-{unique}", f"Acme {unique}") for i in range(9)]).encode(),  # 413
        json.dumps(item(f"r5-{unique}", "Acme \ud800")).encode(),  # 422
        b"[]",
        b"{",
        b'{"headline": "Acme \xff"}',
        json.dumps({"id": f"r6-{unique}\u0000", "headline": "Acme"}).encode(),
        b"1",
        b"null",
        b"[1, 2]",
    ]
    for body in bodies:
        answer = api.post("/v1/news", content=body)
        assert 200 <= answer.status_code < 500, (body[:60], answer.status_code, answer.text)
    lines = tmp_path / "mixed.jsonl"
    lines.write_text(
        json.dumps(item(f"f1-{unique}", f"Acme {unique} file"))
        + "\n"
        + json.dumps(item(f"f2-{unique}", "Acme \ud800 file"))
        + "\n"
    )
    assert replay_file(pipeline, lines) is not None
    s = pipeline.stats
    assert s.received == 1 + 1 + 3 + 9 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 2 + 2
    assert (s.published, s.duplicates) == (5, 1)
    assert s.reconciles(), s

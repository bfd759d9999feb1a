"""Ingest over the real broker: files, feeds and HTTP; bad input answered or dead-lettered with
its reason while good items around it pass; duplicates dropped; counts reconcile."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from services.common import envelope as envelopes
from services.common.broker import free_port
from services.common.bus import Producer, ensure_topics
from services.common.http_server import BackgroundServer, HealthApp
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.common.topics import NEWS_RAW, dlq
from services.ingest.feeds import FeedPoller
from services.ingest.http_api import add_news_routes
from services.ingest.pipeline import IngestPipeline
from services.ingest.service import poll_feed, replay_file
from services.ingest.settings import IngestSettings
from tests.helpers import end_offsets

DATA = Path(__file__).resolve().parents[1] / "data"

# ---------------------------------------------------------------------------------------------
# Reading what landed on the broker since a snapshot of the end offsets
# ---------------------------------------------------------------------------------------------


def read_since(bus: BusSettings, start: dict[TopicPartition, int], expect: int) -> list[Any]:
    """Records after `start`, waiting until `expect` arrived and then a little longer so extra
    (unexpected) records would be seen too."""
    consumer = KafkaConsumer(bootstrap_servers=bus.bootstrap, enable_auto_commit=False)
    consumer.assign(list(start))
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    records: list[Any] = []
    deadline = time.monotonic() + 20
    settle: float | None = None
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records += batch
            if len(records) >= expect:
                settle = settle or time.monotonic() + 1.0
                if time.monotonic() > settle:
                    break
    finally:
        consumer.close()
    return records


def news(records: list[Any]) -> list[pb.NewsItem]:
    return [envelopes.decode(r.value, pb.NewsItem).payload for r in records]


def error_of(record: Any) -> str:
    return dict(record.headers)["rlmf-error"].decode()


def metric(source: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "rlmf_ingest_items_total", {"source": source, "outcome": outcome}
    )
    return value or 0.0


@pytest.fixture
def settings() -> IngestSettings:
    return IngestSettings(tickers_file=DATA / "tickers.csv", max_batch=5, max_item_bytes=2048)


@pytest.fixture
def pipeline(bus_settings: BusSettings, settings: IngestSettings) -> Iterator[IngestPipeline]:
    ensure_topics(bus_settings, [NEWS_RAW, dlq(NEWS_RAW)], "test")
    pipe = IngestPipeline(settings, Producer(bus_settings, "ingest-test"))
    yield pipe
    pipe.close()


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

BAD_LINES: list[tuple[bytes, str]] = [
    (b"{this is not json", "not JSON"),
    (b'{"headline": "Acme caf\xe9", "published_at": "2024-03-01T10:00:00Z"}', "invalid UTF-8"),
    (b'{"headline": "Acme \\u0000 nul", "published_at": "2024-03-01T10:00:00Z"}', "NUL"),
    (b'{"headline": "Acme without time"}', "missing published_at"),
    (b'{"headline": "Acme bad time", "published_at": "not a time"}', "published_at"),
    (b'{"headline": "Acme from the future", "published_at": "2999-01-01T00:00:00Z"}', "future"),
    (b'{"headline": "  ", "body": " ", "published_at": "2024-03-01T10:00:00Z"}', "empty text"),
    (
        b'{"headline": "Acme ' + b"x" * 3000 + b'", "published_at": "2024-03-01T10:00:00Z"}',
        "over the limit",
    ),
    (
        b'{"headline": "Acme", "tickers": ["$$$"], "published_at": "2024-03-01T10:00:00Z"}',
        "not a ticker",
    ),
]


def test_jsonl_file_replays_in_time_order_and_dead_letters_bad_lines(
    bus_settings: BusSettings, pipeline: IngestPipeline, tmp_path: Path
) -> None:
    # Bad lines interleaved with the good ones: the good ones must all pass.
    good = (DATA / "news_sample.jsonl").read_bytes().splitlines()
    lines = [x for pair in zip(good, [b for b, _ in BAD_LINES], strict=False) for x in pair]
    lines += [b for b, _ in BAD_LINES[len(good) :]]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    raw_start, dlq_start = (
        end_offsets(bus_settings, NEWS_RAW),
        end_offsets(bus_settings, dlq(NEWS_RAW)),
    )
    before = {o: metric("file", o) for o in ("received", "published", "duplicate", "rejected")}

    stats = replay_file(pipeline, path)

    events = news(read_since(bus_settings, raw_start, expect=5))
    assert [(e.item_id, e.ticker) for e in events if e.ticker == "ACME"] == [
        ("n-1", "ACME"),
        ("n-5", "ACME"),
    ]
    assert [e.item_id for e in events if e.ticker == "MSFT"] == ["n-2", "n-3"]
    assert [e.item_id for e in events if e.ticker == "GOOGL"] == ["n-2"]
    first = next(e for e in events if e.item_id == "n-1")
    assert first.headline == "Acme shares plunge after profit warning"
    assert first.body == "The company cut its outlook."
    assert envelopes.to_datetime(first.published_at).isoformat() == "2024-03-01T09:30:00+00:00"
    assert not first.synthetic

    dead = read_since(bus_settings, dlq_start, expect=len(BAD_LINES))
    assert len(dead) == len(BAD_LINES)
    by_raw = {r.value: error_of(r) for r in dead}
    for raw, reason in BAD_LINES:
        assert reason in by_raw[raw], (raw[:40], by_raw[raw])

    assert (stats.received, stats.published, stats.duplicates, stats.rejected) == (14, 4, 1, 9)
    assert stats.events == 5
    assert pipeline.stats.reconciles()
    after = {o: metric("file", o) - before[o] for o in before}
    assert after == {"received": 14, "published": 4, "duplicate": 1, "rejected": 9}


def test_csv_file_and_replaying_the_same_file_again_is_all_duplicates(
    bus_settings: BusSettings, pipeline: IngestPipeline
) -> None:
    start = end_offsets(bus_settings, NEWS_RAW)
    first = replay_file(pipeline, DATA / "news_sample.csv")
    again = replay_file(pipeline, DATA / "news_sample.csv")
    events = news(read_since(bus_settings, start, expect=2))
    assert sorted((e.item_id, e.ticker) for e in events) == [("c-1", "GOOGL"), ("c-2", "MSFT")]
    assert (first.published, again.published, again.duplicates) == (2, 0, 2)
    assert pipeline.stats.reconciles()


# ---------------------------------------------------------------------------------------------
# Feeds: a real HTTP server on loopback serving a feed file, with ETag and Last-Modified
# ---------------------------------------------------------------------------------------------


class FeedServer(http.server.ThreadingHTTPServer):
    def __init__(self, feed: Path) -> None:
        self.feed = feed
        self.answers: list[int] = []
        super().__init__(("127.0.0.1", free_port()), FeedHandler)


class FeedHandler(http.server.BaseHTTPRequestHandler):
    server: FeedServer

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        body = self.server.feed.read_bytes()
        etag = f'"{hash(body) & 0xFFFFFFFF:x}"'
        if self.headers.get("If-None-Match") == etag:
            self.server.answers.append(304)
            self.send_response(304)
            self.end_headers()
            return
        self.server.answers.append(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/rss+xml")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", "Mon, 04 Mar 2024 14:00:00 GMT")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def feed_server(tmp_path: Path) -> Iterator[FeedServer]:
    feed = tmp_path / "feed.xml"
    shutil.copy(DATA / "feed.xml", feed)
    server = FeedServer(feed)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_feed_over_http_uses_etag_and_dead_letters_bad_entries(
    bus_settings: BusSettings, pipeline: IngestPipeline, feed_server: FeedServer
) -> None:
    url = f"http://127.0.0.1:{feed_server.server_port}/feed.xml"
    poller = FeedPoller(url)
    raw_start, dlq_start = (
        end_offsets(bus_settings, NEWS_RAW),
        end_offsets(bus_settings, dlq(NEWS_RAW)),
    )

    stats = poll_feed(pipeline, poller)
    assert stats is not None and (stats.received, stats.published, stats.rejected) == (5, 2, 3)
    assert poll_feed(pipeline, poller) is None  # unchanged: the server answered 304
    assert feed_server.answers == [200, 304]
    assert poller.etag and poller.modified

    events = news(read_since(bus_settings, raw_start, expect=2))
    # feedparser resolves a relative guid against the feed's URL.
    assert sorted((e.item_id.rsplit("/", 1)[-1], e.ticker) for e in events) == [
        ("feed-1", "MSFT"),
        ("feed-2", "GOOGL"),
    ]
    msft = next(e for e in events if e.ticker == "MSFT")
    assert msft.body == "The board of Microsoft approved a higher dividend."
    assert msft.source_name == "RLMF test wire (invented items)"
    reasons = sorted(error_of(r) for r in read_since(bus_settings, dlq_start, expect=3))
    assert len(reasons) == 3
    assert any("missing published_at" in r for r in reasons)
    assert any("published_at" in r and "valid datetime" in r for r in reasons)
    assert any("empty text" in r for r in reasons)

    # A changed feed is fetched again; the items already seen count as duplicates.
    feed_server.feed.write_text(
        feed_server.feed.read_text().replace("</channel>", "<!-- v2 --></channel>")
    )
    again = poll_feed(pipeline, poller)
    assert again is not None and (again.published, again.duplicates) == (0, 2)
    assert pipeline.stats.reconciles()


def test_feed_from_file_and_unreachable_feed(pipeline: IngestPipeline, tmp_path: Path) -> None:
    poller = FeedPoller(str(DATA / "feed.xml"))
    stats = poll_feed(pipeline, poller)
    assert stats is not None and stats.received == 5
    assert poller.poll().not_modified  # same mtime: not re-read
    missing = FeedPoller(str(tmp_path / "missing.xml")).poll()
    assert missing.error and "missing.xml" in missing.error
    dead = FeedPoller(f"http://127.0.0.1:{free_port()}/feed.xml").poll()
    assert dead.error


# ---------------------------------------------------------------------------------------------
# HTTP: POST /v1/news on the service's FastAPI app, served by uvicorn on loopback
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def api(pipeline: IngestPipeline) -> Iterator[httpx.Client]:
    health = HealthApp("ingest-test")
    add_news_routes(health.app, pipeline)
    server = BackgroundServer(health.app, "127.0.0.1", free_port())
    server.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
        yield client
    server.stop()


def good(n: int, unique: str) -> dict[str, object]:
    return {
        "id": f"h-{unique}-{n}",
        "headline": f"Acme headline {n} {unique}",
        "published_at": "2024-03-05T10:00:00Z",
    }


BAD_REQUESTS: list[tuple[bytes, int, str]] = [
    (b"not json at all", 400, "not JSON"),
    (b'{"headline": "Acme \xff", "published_at": "2024-03-01T10:00:00Z"}', 400, "invalid UTF-8"),
    (b'{"headline": "Acme \\u0000", "published_at": "2024-03-01T10:00:00Z"}', 422, "NUL"),
    (b"[]", 400, "empty batch"),
    (b'{"headline": "Acme"}', 422, "missing published_at"),
    (b'{"headline": "Acme", "published_at": "soon"}', 422, "published_at"),
    (b'{"headline": "Acme", "published_at": "2999-01-01T00:00:00Z"}', 422, "future"),
    (b'{"headline": " ", "published_at": "2024-03-01T10:00:00Z"}', 422, "empty text"),
    (
        b'{"headline": "Acme", "body": "' + b"y" * 5000 + b'", "published_at": "2024-03-01"}',
        422,
        "over the limit",
    ),
    (
        b'{"headline": "Acme", "tickers": ["acme corp"], "published_at": "2024-03-01"}',
        422,
        "not a ticker",
    ),
    (b'{"headline": "Acme", "published_at": "2024-03-01"}' + b" " * 20_000, 413, "over the limit"),
]


@pytest.mark.parametrize(("body", "status", "reason"), BAD_REQUESTS)
def test_http_rejects_bad_input_with_its_reason(
    api: httpx.Client, pipeline: IngestPipeline, body: bytes, status: int, reason: str
) -> None:
    answer = api.post("/v1/news", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert reason in answer.text
    assert pipeline.stats.published == 0 and pipeline.stats.reconciles()


def test_http_accepts_items_and_batches_and_reports_duplicates(
    bus_settings: BusSettings, api: httpx.Client, pipeline: IngestPipeline, unique: str
) -> None:
    start = end_offsets(bus_settings, NEWS_RAW)
    one = api.post("/v1/news", json=good(0, unique))
    assert one.status_code == 202 and one.json()["accepted"] == [f"h-{unique}-0"]
    batch = api.post("/v1/news", json=[good(1, unique), good(2, unique), good(0, unique)])
    assert batch.status_code == 202
    assert batch.json()["accepted"] == [f"h-{unique}-1", f"h-{unique}-2"]
    assert batch.json()["duplicates"] == [f"h-{unique}-0"]

    too_many = api.post("/v1/news", json=[good(i, unique) for i in range(10, 16)])
    assert too_many.status_code == 413 and "over the limit of 5" in too_many.text
    # One bad item in a batch: nothing is accepted and the answer names the bad one.
    mixed = api.post("/v1/news", json=[good(20, unique), {"headline": "Acme", "published_at": "x"}])
    assert mixed.status_code == 422
    assert [e["index"] for e in mixed.json()["items"]] == [1]

    events = news(read_since(bus_settings, start, expect=3))
    assert sorted(e.item_id for e in events) == [f"h-{unique}-{n}" for n in range(3)]
    s = pipeline.stats
    assert (s.received, s.published, s.duplicates, s.rejected) == (12, 3, 1, 8)
    assert s.reconciles()
    exposed = api.get("/metrics").text
    assert 'rlmf_ingest_items_total{outcome="received",source="http"}' in exposed


def test_items_older_than_the_max_age_are_dead_lettered_with_the_reason(
    bus_settings: BusSettings, tmp_path: Path, unique: str
) -> None:
    settings = IngestSettings(tickers_file=DATA / "tickers.csv", max_age_s=7 * 86_400)
    pipe = IngestPipeline(settings, Producer(bus_settings, "ingest-test"))
    now = datetime.now(UTC)
    fresh = {"id": f"fresh-{unique}", "headline": f"Acme {unique}", "published_at": now.isoformat()}
    old = {**fresh, "id": f"old-{unique}", "published_at": (now - timedelta(days=30)).isoformat()}
    path = tmp_path / "news.jsonl"
    path.write_text(json.dumps(fresh) + "\n" + json.dumps(old) + "\n")
    raw_start = end_offsets(bus_settings, NEWS_RAW)
    dlq_start = end_offsets(bus_settings, dlq(NEWS_RAW))
    try:
        stats = replay_file(pipe, path)
        assert stats is not None and (stats.published, stats.rejected) == (1, 1)
    finally:
        pipe.close()
    assert [e.item_id for e in news(read_since(bus_settings, raw_start, expect=1))] == [
        f"fresh-{unique}"
    ]
    dead = read_since(bus_settings, dlq_start, expect=1)
    assert len(dead) == 1 and json.loads(dead[0].value)["id"] == f"old-{unique}"
    assert "too old" in error_of(dead[0]) and "RLMF_INGEST_MAX_AGE_S" in error_of(dead[0])


def test_a_feed_poll_the_broker_did_not_take_is_read_again_next_time(
    bus_settings: BusSettings, settings: IngestSettings
) -> None:
    pipe = IngestPipeline(settings, Producer(bus_settings, "ingest-test"))
    pipe.close()  # the publisher now refuses every batch, as while a broker is away
    poller = FeedPoller(str(DATA / "feed.xml"))
    assert poll_feed(pipe, poller) is None
    assert pipe.stats.received == 5 and pipe.stats.rejected == 5 and pipe.stats.reconciles()
    assert not poller.poll().not_modified  # forgotten: the same file is read again

"""Issue 16, ingest item 2: with the broker gone, POST /v1/news answers 503 with Retry-After
within its bound and remembers nothing, /healthz keeps answering, /readyz says not ready, the
retry after the broker is back is accepted (not a duplicate), and SIGTERM ends the process
within its grace period. Each test runs its own real tansu broker, stopped and started again."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.broker import EmbeddedBroker, free_port
from services.common.bus import Producer, ensure_topics
from services.common.http_server import BackgroundServer, HealthApp
from services.common.settings import BusSettings
from services.common.topics import NEWS_RAW, dlq
from services.ingest.http_api import add_news_routes
from services.ingest.pipeline import IngestPipeline
from services.ingest.settings import IngestSettings
from tests.helpers import http_ok, spawn_service, wait_until


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "tansu.log").start()
    yield broker
    broker.stop()


def item(item_id: str) -> dict[str, object]:
    return {"id": item_id, "headline": f"$ACME {item_id}", "published_at": "2024-03-05T10:00:00Z"}


def status_of(client: httpx.Client, path: str, timeout_s: float = 2.0) -> int:
    return client.get(path, timeout=timeout_s).status_code


@pytest.mark.slow  # a broker stopped and restarted, and the producer's reconnection backoff
def test_broker_outage_gives_503s_health_answers_and_the_retry_is_accepted(
    own_broker: EmbeddedBroker, unique: str
) -> None:
    bus = BusSettings(bootstrap=own_broker.bootstrap, retry_attempts=3, retry_max_wait_s=0.5)
    ensure_topics(bus, [NEWS_RAW, dlq(NEWS_RAW)], "test")
    settings = IngestSettings(ack_timeout_s=1.5, retry_after_s=2)
    pipeline = IngestPipeline(settings, Producer(bus, "ingest-outage"))
    health = HealthApp("ingest-outage")
    add_news_routes(health.app, pipeline)
    server = BackgroundServer(health.app, "127.0.0.1", free_port())
    server.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10)
    try:
        assert client.post("/v1/news", json=item(f"o0-{unique}")).status_code == 202

        own_broker.stop()
        started = time.monotonic()
        down = client.post("/v1/news", json=item(f"o1-{unique}"))
        assert down.status_code == 503, down.text
        assert down.headers["Retry-After"] == "2" and "retry later" in down.json()["error"]
        # Bounded by the 1.5 s ack timeout (margins for a loaded test machine); it hung past 40 s.
        assert time.monotonic() - started < 8
        # Health answers while the publisher waits on the missing broker (it timed out).
        started = time.monotonic()
        assert status_of(client, "/healthz", timeout_s=3) == 200
        assert time.monotonic() - started < 3
        wait_until(lambda: not pipeline.ready(), 15, "the pipeline to say not ready")
        again = client.post("/v1/news", json=item(f"o1-{unique}"))
        assert again.status_code == 503  # refused at once while the batch in hand is stuck

        own_broker.start()  # in-memory storage: the topics are created again, as an operator would
        ensure_topics(bus, [NEWS_RAW, dlq(NEWS_RAW)], "test")

        def retried() -> httpx.Response | None:
            answer = client.post("/v1/news", json=item(f"o1-{unique}"))
            return answer if answer.status_code == 202 else None

        accepted = wait_until(retried, 50, "the retry to be accepted", interval_s=1.0)
        assert accepted.json()["accepted"] == [f"o1-{unique}"]  # not called a duplicate
        wait_until(pipeline.ready, 15, "the pipeline to be ready again")
        assert pipeline.stats.published == 2 and pipeline.stats.reconciles(), pipeline.stats
    finally:
        client.close()
        server.stop()
        pipeline.close(timeout_s=2)


@pytest.mark.slow  # a service process and a broker stopped under it
def test_sigterm_ends_the_service_within_its_grace_period_with_the_broker_gone(
    own_broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "RLMF_BUS_BOOTSTRAP": own_broker.bootstrap,
        "RLMF_BUS_RETRY_ATTEMPTS": "2",
        "RLMF_HTTP_PORT": str(port),
        "RLMF_INGEST_ACK_TIMEOUT_S": "1",
        "RLMF_INGEST_SHUTDOWN_GRACE_S": "3",
    }
    log = tmp_path / "ingest.log"
    process = spawn_service("services.ingest", env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{base}/readyz"), 60, "/readyz", process=process, log=log)
        assert httpx.post(f"{base}/v1/news", json=item(f"t0-{unique}"), timeout=10).is_success
        own_broker.stop()
        # Readiness asks the producer (it said 200 as long as no stop was requested).
        wait_until(lambda: not http_ok(f"{base}/readyz"), 15, "/readyz to say not ready")
        down = httpx.post(f"{base}/v1/news", json=item(f"t1-{unique}"), timeout=10)
        assert down.status_code == 503 and "Retry-After" in down.headers
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, log.read_text()[-3000:]
    # Grace 3 s, and a margin for a loaded machine; it did not stop within 20 s.
    assert elapsed < 3 + 5, f"took {elapsed:.1f}s to stop (grace 3 s)"

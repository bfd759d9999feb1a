"""The ingest service: replays files once, polls feeds, serves POST /v1/news, until stopped."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from services.common import json_logging, metrics
from services.common.bus import Producer, ensure_topics
from services.common.http_server import HealthApp
from services.common.service import on_sigterm, start_http
from services.common.settings import BusSettings, LogSettings
from services.common.topics import NEWS_RAW, dlq
from services.ingest.feeds import FeedPoller
from services.ingest.files import read_entries
from services.ingest.http_api import add_news_routes
from services.ingest.pipeline import IngestPipeline, IngestStats
from services.ingest.publisher import PublisherUnavailable
from services.ingest.settings import IngestSettings

log = logging.getLogger(__name__)

SERVICE = "ingest"


def build_pipeline(settings: IngestSettings, bus: BusSettings | None = None) -> IngestPipeline:
    bus = bus or BusSettings()
    ensure_topics(bus, [NEWS_RAW, dlq(NEWS_RAW)], SERVICE)
    return IngestPipeline(settings, Producer(bus, SERVICE))


def replay_file(pipeline: IngestPipeline, path: Path) -> IngestStats | None:
    """One file, bad lines dead-lettered, good ones published in event-time order; None when
    the broker never acknowledged it before a stop (logged; its lines count as rejected)."""
    try:
        stats = pipeline.ingest_entries(read_entries(path), source="file")
    except PublisherUnavailable as exc:
        log.error("replaying %s was not acknowledged: %s", path, exc)
        return None
    log.info("replayed %s", path, extra={"fields": stats.__dict__})
    return stats


def poll_feed(pipeline: IngestPipeline, poller: FeedPoller) -> IngestStats | None:
    """One poll; None when the feed is unchanged or failed (a failure is logged, not fatal).
    A poll the broker did not acknowledge is forgotten, so the next poll reads the feed again."""
    result = poller.poll()
    if result.error:
        log.error("feed poll failed: %s", result.error)
        return None
    if result.not_modified:
        return None
    try:
        return pipeline.ingest_entries(result.entries, source="feed")
    except PublisherUnavailable as exc:
        log.error(
            "feed %s was not acknowledged (%s); it is read again next poll", poller.source, exc
        )
        poller.forget()
        return None


class IngestService:
    """Owns the pipeline and the source loop; the HTTP route shares the pipeline."""

    def __init__(self, settings: IngestSettings, pipeline: IngestPipeline, health: HealthApp):
        self.settings = settings
        self.pipeline = pipeline
        self.pollers = [FeedPoller(source) for source in settings.feeds]
        self.stop_event = threading.Event()
        self.sources_read = False
        add_news_routes(health.app, pipeline)
        # Ready once the files are replayed and every feed was polled once.
        health.add_readiness_check("sources_read", lambda: self.sources_read)

    def run(self) -> None:
        for path in self.settings.files:
            if self.stop_event.is_set():
                break
            replay_file(self.pipeline, path)
        while not self.stop_event.is_set():
            for poller in self.pollers:
                poll_feed(self.pipeline, poller)
            self.sources_read = True
            self.stop_event.wait(self.settings.feed_poll_s)

    def request_stop(self) -> None:
        """SIGTERM: the loop ends, and a file or feed batch in hand stops waiting."""
        self.stop_event.set()
        self.pipeline.request_stop()


def main() -> int:
    """The ingest process: `python -m services.ingest`; returns the exit code."""
    logs = LogSettings()
    json_logging.configure(SERVICE, logs.level, logs.json_format)
    health = HealthApp(SERVICE)
    try:
        settings = IngestSettings()
        pipeline = build_pipeline(settings)
    except Exception:
        log.exception("could not start: bad settings, or the broker is unavailable")
        return 2
    service = IngestService(settings, pipeline, health)
    # Ready while the producer reaches a broker and no batch waits past the ack timeout.
    health.add_readiness_check("broker", pipeline.ready)
    server = start_http(SERVICE, health)
    on_sigterm(service.request_stop)
    metrics.READY.labels(SERVICE).set(1)
    try:
        service.run()
    except Exception:
        log.exception("stopped on an error")
        return 1
    finally:
        server.stop()
        # Bounded by RLMF_INGEST_SHUTDOWN_GRACE_S, so SIGTERM ends the process in time even
        # with the broker gone; what was not acknowledged was answered 503 or logged.
        if not pipeline.close():
            log.error("stopped before the broker acknowledged everything in hand")
    log.info("stopped", extra={"fields": pipeline.snapshot().__dict__})
    return 0

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
from services.ingest.settings import IngestSettings

log = logging.getLogger(__name__)

SERVICE = "ingest"


def build_pipeline(settings: IngestSettings, bus: BusSettings | None = None) -> IngestPipeline:
    bus = bus or BusSettings()
    ensure_topics(bus, [NEWS_RAW, dlq(NEWS_RAW)], SERVICE)
    return IngestPipeline(settings, Producer(bus, SERVICE))


def replay_file(pipeline: IngestPipeline, path: Path) -> IngestStats:
    """One file, bad lines dead-lettered, good ones published in event-time order."""
    stats = pipeline.ingest_entries(read_entries(path), source="file")
    log.info("replayed %s", path, extra={"fields": stats.__dict__})
    return stats


def poll_feed(pipeline: IngestPipeline, poller: FeedPoller) -> IngestStats | None:
    """One poll; None when the feed is unchanged or failed (a failure is logged, not fatal)."""
    result = poller.poll()
    if result.error:
        log.error("feed poll failed: %s", result.error)
        return None
    if result.not_modified:
        return None
    return pipeline.ingest_entries(result.entries, source="feed")


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
        self.pipeline.flush()


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
    health.add_readiness_check("broker", lambda: not service.stop_event.is_set())
    server = start_http(SERVICE, health)
    on_sigterm(service.stop_event.set)
    metrics.READY.labels(SERVICE).set(1)
    try:
        service.run()
    except Exception:
        log.exception("stopped on an error")
        return 1
    finally:
        server.stop()
        pipeline.producer.close()
    log.info("stopped cleanly", extra={"fields": pipeline.stats.__dict__})
    return 0

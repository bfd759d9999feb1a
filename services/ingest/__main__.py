"""`python -m services.ingest`: files, feeds and HTTP news into news.raw.v1."""

from __future__ import annotations

import logging

from services.common import json_logging, metrics
from services.common.http_server import HealthApp
from services.common.service import exit_with, on_sigterm, start_http
from services.common.settings import LogSettings
from services.ingest.service import SERVICE, IngestService, build_pipeline
from services.ingest.settings import IngestSettings

log = logging.getLogger(__name__)


def main() -> int:
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


if __name__ == "__main__":
    exit_with(main())

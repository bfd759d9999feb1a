"""Running a service process: logging, the HTTP server, SIGTERM handling and exit codes."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType

from services.common import json_logging
from services.common.bus import ConsumerLoop
from services.common.http_server import BackgroundServer, HealthApp
from services.common.settings import DEFAULT_PORTS, HttpSettings, LogSettings

# A service returns EXIT_CONFIG when a restart cannot help (bad artifact or setting). It is
# defined beside the supervisor that acts on it, which `rlmf` imports without this module's
# Kafka and HTTP dependencies; services take it from here.
from services.common.supervisor import EXIT_CONFIG as EXIT_CONFIG

log = logging.getLogger(__name__)


def start_http(
    service: str, health: HealthApp, http: HttpSettings | None = None
) -> BackgroundServer:
    http = http or HttpSettings()
    port = http.port or DEFAULT_PORTS.get(service, 0)
    server = BackgroundServer(health.app, http.host, port)
    server.start()
    log.info("serving /healthz /readyz /metrics on %s:%s", http.host, port)
    return server


def on_sigterm(stop: Callable[[], None]) -> None:
    """Call `stop` on SIGTERM and SIGINT; the loop finishes the message in hand and commits."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info(
            "received %s: finishing the batch in hand, then exiting", signal.Signals(signum).name
        )
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_consumer_service(
    service: str,
    build_loop: Callable[[], ConsumerLoop],
    health: HealthApp | None = None,
    extra_ready: dict[str, Callable[[], bool]] | None = None,
) -> int:
    """The main of a consumer service: returns the process exit code (0 after SIGTERM)."""
    settings = LogSettings()
    json_logging.configure(service, settings.level, settings.json_format)
    health = health or HealthApp(service)
    server = start_http(service, health)
    try:
        loop = build_loop()
    except Exception:
        log.exception("could not start: the broker or a required resource is unavailable")
        server.stop()
        return 2
    health.add_readiness_check("broker", loop.broker_connected)
    for name, check in (extra_ready or {}).items():
        health.add_readiness_check(name, check)
    on_sigterm(loop.request_stop)
    try:
        loop.run()
    except Exception:
        log.exception("stopped on an error; uncommitted messages will be re-delivered")
        return 1
    finally:
        server.stop()
    log.info("stopped cleanly", extra={"fields": loop.stats.__dict__})
    return 0


def exit_with(code: int) -> None:
    sys.exit(code)

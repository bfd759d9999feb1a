"""The canary's live check runs its PromQL against a real Prometheus (Debian's `prometheus`).

The policy server's request metrics (services/policy/metrics.py: rlmf_policy_requests_total
and rlmf_policy_request_seconds, by model version) come from its pods on a cluster, so this
test serves the same series, declared by the policy server's own metric objects' names and
labels, from a loopback port and lets Prometheus scrape them: a canary answering half its
requests with 5xx is refused, a slow one too; one as fast and as clean as the teacher passes.
P&L is not asked: the canary is an operational check (the backtest gate and shadow judge P&L).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from services.common.broker import free_port
from services.policy import metrics
from services.trainer.canary import CanaryConfig
from services.trainer.isvc_status import Revisions
from services.trainer.live_checks import LiveCheck, prometheus_query
from tests.helpers import http_ok, require_tool, stop_process, wait_until

pytestmark = pytest.mark.slow  # Prometheus needs a few scrapes: several seconds

NS = "trading"
TEACHER, BAD, SLOW, GOOD = "v7", "s-bad", "s-slow", "s-good"
REVISIONS = Revisions("policy-predictor-00002", "policy-predictor-00001")


class Cluster:
    """The series a cluster's Prometheus would hold, on a private registry: the policy
    server's request counter and latency histogram, with the `namespace` label the scrape adds."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["namespace", "model", "model_version"]
        self.requests = Counter(metrics.REQUESTS._name, "policy requests", [*labels, "code"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram(metrics.REQUEST_LATENCY._name, "policy latency", labels,
                                 registry=self.registry,
                                 buckets=metrics.REQUEST_LATENCY._upper_bounds[:-1])  # fmt: skip
        for version in (TEACHER, BAD, SLOW, GOOD):
            self.latency.labels(NS, "policy", version)
            for code in ("200", "500"):
                self.requests.labels(NS, "policy", version, code)

    def serve(self, version: str, ok: int, errors: int, latency_s: float) -> None:
        self.requests.labels(NS, "policy", version, "200").inc(ok)
        self.requests.labels(NS, "policy", version, "500").inc(errors)
        for _ in range(ok + errors):
            self.latency.labels(NS, "policy", version).observe(latency_s)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Cluster]]:
    binary = require_tool("prometheus", "apt-get install prometheus")
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
    wait_until(lambda: _scraped(url, "count_over_time(rlmf_policy_requests_total[1m]) >= 2"),
               30, "two scrapes")  # fmt: skip
    cluster.serve(TEACHER, ok=200, errors=0, latency_s=0.04)
    cluster.serve(BAD, ok=10, errors=10, latency_s=0.04)
    cluster.serve(SLOW, ok=20, errors=0, latency_s=2.0)
    cluster.serve(GOOD, ok=20, errors=0, latency_s=0.04)
    time.sleep(0.1)
    wait_until(lambda: _scraped(url, "sum(rlmf_policy_requests_total) >= 260"), 30, "a scrape")
    wait_until(lambda: _scraped(url, "increase(rlmf_policy_requests_total[1m]) > 0"), 30,
               "an increase")  # fmt: skip
    check = LiveCheck(CanaryConfig(window_s=60, prometheus_url=url), NS, prometheus_query(url))

    bad = check(REVISIONS, BAD, TEACHER)
    assert not bad.healthy, bad.detail
    assert "error rate above the teacher's" in bad.detail
    assert "error rate 0.5000 vs 0.0000" in bad.detail

    slow = check(REVISIONS, SLOW, TEACHER)
    assert not slow.healthy and "p99 latency above the teacher's" in slow.detail, slow.detail

    good = check(REVISIONS, GOOD, TEACHER)
    assert good.healthy, good.detail
    assert f"canary {GOOD} on policy-predictor-00002 vs teacher {TEACHER}" in good.detail

    # Another namespace's policy (or no teacher version) is no evidence.
    elsewhere = LiveCheck(CanaryConfig(window_s=60), "staging", prometheus_query(url))
    assert not elsewhere(REVISIONS, GOOD, TEACHER).healthy
    assert not check(REVISIONS, GOOD, "").healthy


def test_unreachable_prometheus_is_a_failed_check() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    check = LiveCheck(CanaryConfig(prometheus_url=url), NS, prometheus_query(url, timeout_s=1))
    verdict = check(REVISIONS, GOOD, TEACHER)
    assert not verdict.healthy and "did not answer" in verdict.detail

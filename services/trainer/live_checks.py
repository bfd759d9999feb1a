"""The canary's and the teacher's live figures from Prometheus: the error rate and p99 latency of
each model version, from the policy server's own request metrics (services/policy/metrics.py),
which it serves on its HTTP port beside every other metric.

Knative's queue-proxy figures (revision_app_request_*) are not used: they are served on another
port (9091) that the chart neither scrapes nor admits, and Knative 1.19 moved them to
OpenTelemetry under other names and units (kn.serving.*, seconds), to be turned on per
cluster. The policy server's own counter and histogram exist on every Knative version and in
Standard mode alike, and are labelled by the model version that answered, which is what a
canary compares."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from services.trainer.canary import CanaryConfig, Figures, Verdict, judge
from services.trainer.isvc_status import Revisions

# services/policy/metrics.py: every inference request, by model version and HTTP status code
REQUESTS = "rlmf_policy_requests_total"
LATENCY_BUCKETS = "rlmf_policy_request_seconds_bucket"

Query = Callable[[str], float | None]


class PrometheusError(RuntimeError):
    """Prometheus could not answer a query; the canary cannot be judged."""


def prometheus_query(url: str, timeout_s: float = 30.0) -> Query:
    """An instant query against Prometheus' HTTP API, returning the first sample's value (None
    when the result is empty or not a number). Written here rather than taken from a client
    library: it is one GET, and prometheus-api-client would bring pandas' plotting stack along."""

    def query(expr: str) -> float | None:
        try:
            answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=timeout_s)
            answer.raise_for_status()
            body: dict[str, Any] = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PrometheusError(f"Prometheus at {url} did not answer {expr!r}: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused {expr!r}: {body.get('error')}")
        result = body["data"]["result"]
        if not result:
            return None
        value = float(result[0]["value"][1])
        return value if math.isfinite(value) else None

    return query


@dataclass(frozen=True)
class LiveCheck:
    """Reads both versions' figures over the canary window and judges them (canary.judge): an
    operational check; P&L is judged by the backtest gate and shadow trading, not here."""

    config: CanaryConfig
    namespace: str
    query: Query

    def version_figures(self, version: str) -> Figures:
        """Share of 5xx answers, p99 latency in seconds and requests of one model version over
        the window, in this namespace."""
        window = f"{max(int(self.config.window_s), 60)}s"
        match = f'namespace="{self.namespace}",model_version="{version}"'
        total = f"sum(increase({REQUESTS}{{{match}}}[{window}]))"
        errors = f'(sum(increase({REQUESTS}{{{match},code=~"5.."}}[{window}])) or vector(0))'
        latency = (
            f"histogram_quantile(0.99, sum by (le) "
            f"(increase({LATENCY_BUCKETS}{{{match}}}[{window}])))"
        )
        requests = self.query(total) or 0.0
        return Figures(self.query(f"{errors} / {total}"), self.query(latency), requests)

    def __call__(self, revisions: Revisions, version: str, teacher_version: str) -> Verdict:
        if not teacher_version or teacher_version == version:
            return Verdict(
                False, f"live check failed: no teacher version to compare {version} with"
            )
        try:
            canary = self.version_figures(version)
            teacher = self.version_figures(teacher_version)
        except PrometheusError as exc:
            return Verdict(False, f"live check failed: {exc}")
        verdict = judge(canary, teacher, self.config)
        names = (
            f"canary {version} on {revisions.canary or '?'} vs teacher {teacher_version} on "
            f"{revisions.teacher or '?'}"
        )
        return Verdict(verdict.healthy, f"{verdict.detail} ({names})")

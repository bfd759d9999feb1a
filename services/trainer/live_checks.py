"""The canary's and the teacher's live figures from Prometheus: error rate and p99 latency per
Knative revision (the queue-proxy's request metrics), and the realised edge of each model
version's decisions (the promotion watcher's counters from market.feedback.v1)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from services.trainer.canary import CanaryConfig, Figures, Verdict, judge
from services.trainer.isvc_status import Revisions

# Knative's queue-proxy sidecar counts every request of a revision, labelled with the revision
# and the answer's status class; latencies are in milliseconds.
REQUESTS = "revision_app_request_count"
LATENCY_BUCKETS = "revision_app_request_latencies_bucket"
# services/promotion_watcher/metrics.py: edge summed per model version, decisions counted
EDGE_SUM = "rlmf_feedback_edge_sum"
DECISIONS = "rlmf_feedback_decisions_total"

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
    """Reads both models' figures over the canary window and judges them (canary.judge)."""

    config: CanaryConfig
    namespace: str
    query: Query

    def revision_figures(self, revision: str) -> tuple[float | None, float | None]:
        """(share of 5xx answers, p99 latency in seconds) of one revision over the window."""
        window = f"{max(int(self.config.window_s), 60)}s"
        match = f'namespace="{self.namespace}",revision_name="{revision}"'
        errors = (
            f'(sum(increase({REQUESTS}{{{match},response_code_class="5xx"}}[{window}])) '
            f"or vector(0)) / sum(increase({REQUESTS}{{{match}}}[{window}]))"
        )
        latency = (
            f"histogram_quantile(0.99, sum by (le) "
            f"(increase({LATENCY_BUCKETS}{{{match}}}[{window}])))"
        )
        latency_ms = self.query(latency)
        return self.query(errors), (latency_ms / 1000 if latency_ms is not None else None)

    def edge_figures(self, version: str) -> tuple[tuple[float | None, float], float | None]:
        """((canary mean edge, canary decisions), teacher mean edge). The canary's version is
        new, so all of its counters lie in the window; the teacher's are the window's increase
        of every other version (the only other model serving)."""
        window = f"{max(int(self.config.window_s), 60)}s"
        mine = f'model_version="{version}"'
        decisions = self.query(f"sum({DECISIONS}{{{mine}}})") or 0.0
        edge = self.query(f"sum({EDGE_SUM}{{{mine}}}) / sum({DECISIONS}{{{mine}}})")
        others = f'model_version!="{version}"'
        # The edge sum is a gauge (edge can be negative): delta, not increase.
        teacher = self.query(
            f"sum(delta({EDGE_SUM}{{{others}}}[{window}])) / "
            f"sum(increase({DECISIONS}{{{others}}}[{window}]))"
        )
        return (edge, decisions), teacher

    def __call__(self, revisions: Revisions, version: str) -> Verdict:
        try:
            canary_err, canary_p99 = self.revision_figures(revisions.canary)
            teacher_err, teacher_p99 = self.revision_figures(revisions.teacher)
            (canary_edge, decisions), teacher_edge = self.edge_figures(version)
        except PrometheusError as exc:
            return Verdict(False, f"live check failed: {exc}")
        canary = Figures(canary_err, canary_p99, canary_edge, decisions)
        teacher = Figures(teacher_err, teacher_p99, teacher_edge, 0.0)
        verdict = judge(canary, teacher, self.config)
        names = f"canary {revisions.canary or '?'} vs teacher {revisions.teacher or '?'}"
        return Verdict(verdict.healthy, f"{verdict.detail} ({names})")

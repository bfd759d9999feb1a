"""The policy server's Prometheus metrics (KServe adds its own request latency histograms)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, Info
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DECISIONS = Counter("rlmf_policy_decisions_total", "Decisions served", ["action", "model_version"])
BATCH_SIZE = Histogram(
    "rlmf_policy_batch_size",
    "States per micro-batched forward pass",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
BATCH_LATENCY = Histogram(
    "rlmf_policy_batch_seconds",
    "Time of one micro-batch's forward pass",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MODEL_INFO = Info("rlmf_policy_model", "The artifact being served")
RELOADS = Counter("rlmf_policy_reloads_total", "Hot reload attempts", ["outcome"])
RELOAD_FAILED = Gauge(
    "rlmf_policy_reload_failed",
    "1 after a refused reload (the old model keeps serving) until one succeeds; alert on it",
)
APPROVAL_REFUSED = Counter(
    "rlmf_policy_approval_refused_total",
    "Versions refused as the served model: unapproved (no valid approval) or downgrade (an "
    "approval older than the one served)",
    ["reason"],
)
APPROVAL_SEQUENCE = Gauge(
    "rlmf_policy_approval_sequence", "Sequence number of the served version's approval"
)
BAD_REQUESTS = Counter("rlmf_policy_bad_requests_total", "Requests answered 400", ["protocol"])
BEST_OF_N_ACTIVE = Gauge(
    "rlmf_policy_best_of_n_active",
    "1 when best-of-n explanations are ranked by a reward model; 0 when off (e.g. none configured)",
)

# Every inference request, by the model version that answered it: the canary's live check
# (services/trainer/live_checks.py) compares the new version's error rate and p99 latency with
# the teacher's from these two, on the server's own port, in either KServe mode.
REQUESTS = Counter(
    "rlmf_policy_requests",
    "Inference requests answered, by model version and HTTP status code",
    ["model", "model_version", "code"],
)
REQUEST_LATENCY = Histogram(
    "rlmf_policy_request_seconds",
    "Time from an inference request's arrival to the end of its answer",
    ["model", "model_version"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

_INFERENCE = re.compile(r"^/v1/models/([^/:]+):(predict|explain)$|^/v2/models/([^/]+)/infer$")


class RequestMetricsMiddleware:
    """Counts and times every inference request (v1 :predict/:explain, v2 /infer) under the
    version the named model serves when the request arrives; other routes are not counted.
    Pure ASGI, so a streamed answer is timed to its last byte and an exception counts as 500."""

    def __init__(self, app: ASGIApp, version_of: Callable[[str], str | None]) -> None:
        self.app, self.version_of = app, version_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = _INFERENCE.match(scope.get("path", "")) if scope["type"] == "http" else None
        name = (found.group(1) or found.group(3)) if found else None
        version = self.version_of(name) if name else None
        if name is None or version is None:  # not inference, or no such model: a 404 elsewhere
            await self.app(scope, receive, send)
            return
        start, code = time.perf_counter(), 500

        async def record(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            REQUESTS.labels(name, version, str(code)).inc()
            REQUEST_LATENCY.labels(name, version).observe(time.perf_counter() - start)

"""The policy server's Prometheus metrics (KServe adds its own request latency histograms)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

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

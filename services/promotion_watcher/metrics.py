"""What the promotion watcher exports: promotion outcomes (the alerts' input) and the realised
edge of each model version's decisions (the canary's live check compares them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from services.common.metrics import PROMOTIONS

OUTCOMES = ("promoted", "rejected", "rolled_back", "failed", "candidate", "retired")
"""candidate: a student passed the backtest gate and trades in shadow; retired: a candidate the
pooled gate refused after its shadow stretch (services/trainer/shadow.py)."""

LAST_PROMOTION = Gauge(
    "rlmf_promotion_last_timestamp_seconds",
    "When the watcher read the newest models.promotions.v1 decision, by outcome",
    ["outcome"],
)
FEEDBACK_DECISIONS = Counter(
    "rlmf_feedback_decisions",
    "Decisions whose market feedback arrived (market.feedback.v1), by the model that made them",
    ["model_version"],
)
FEEDBACK_EDGE = Gauge(
    "rlmf_feedback_edge_sum",
    "Running sum of realised edge (+1 buy / -1 sell / 0 hold times the next return) of the "
    "decisions with feedback, by model version; a gauge since edge can be negative",
    ["model_version"],
)


def start_at_zero() -> None:
    """Every outcome's series exists from the first scrape at 0, so the first failure is an
    increase Prometheus can see (a series born at 1 has no increase)."""
    for outcome in OUTCOMES:
        PROMOTIONS.labels(outcome)


__all__ = ["FEEDBACK_DECISIONS", "FEEDBACK_EDGE", "LAST_PROMOTION", "OUTCOMES", "PROMOTIONS"]

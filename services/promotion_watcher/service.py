"""The promotion watcher: consumes models.promotions.v1 and market.feedback.v1 and exports what
the alerts and the canary's live check need from a process Prometheus scrapes (the trainer is a
CronJob that nothing scrapes).

Bad messages go to the topics' .dlq twins with the reason; consumed = handled + duplicates +
dead-lettered, as for every consumer.
"""

from __future__ import annotations

import logging
import math

from services.common.bus import ConsumerLoop, Incoming, Outgoing, ValidationFailed
from services.common.http_server import HealthApp
from services.common.service import run_consumer_service
from services.common.settings import BusSettings
from services.common.topics import MARKET_FEEDBACK, MODELS_PROMOTIONS
from services.promotion_watcher import metrics
from services.promotion_watcher.settings import WatcherSettings

log = logging.getLogger(__name__)

SERVICE = "promotion-watcher"
DIRECTION = {"buy": 1.0, "hold": 0.0, "sell": -1.0}


def promotion_outcome(incoming: Incoming) -> str:
    """The outcome of one models.promotions.v1 message; ValidationFailed says what is wrong.
    Messages from trainers older than the `outcome` field carry it in `promoted` and
    `failed_guards` for the two cases those tell apart."""
    p = incoming.payload
    outcome = p.outcome
    if not outcome:
        if p.promoted:
            outcome = "promoted"
        elif p.failed_guards:
            outcome = "rejected"
        else:
            raise ValidationFailed("promotion has no outcome and is not promoted nor rejected")
    if outcome not in metrics.OUTCOMES:
        raise ValidationFailed(f"promotion outcome {outcome!r} is not one of {metrics.OUTCOMES}")
    if (outcome == "promoted") != p.promoted:
        raise ValidationFailed(f"promotion outcome {outcome!r} but promoted={p.promoted}")
    return str(outcome)


def feedback_edge(incoming: Incoming) -> tuple[str, float]:
    """(model version, realised edge) of one market.feedback.v1 message."""
    p = incoming.payload
    if p.action not in DIRECTION:
        raise ValidationFailed(f"market feedback action {p.action!r} is not one of buy/hold/sell")
    if not p.model_version:
        raise ValidationFailed("market feedback has no model_version")
    if not math.isfinite(p.realised_return):
        raise ValidationFailed("market feedback realised_return is not finite")
    return p.model_version, DIRECTION[p.action] * p.realised_return


def handle(incoming: Incoming) -> list[Outgoing]:
    if incoming.topic == MODELS_PROMOTIONS:
        outcome = promotion_outcome(incoming)
        metrics.PROMOTIONS.labels(outcome).inc()
        metrics.LAST_PROMOTION.labels(outcome).set_to_current_time()
        p = incoming.payload
        log.info(
            "promotion %s: %s over %s (%s)", outcome, p.student_version, p.teacher_version, p.reason
        )
        return []
    version, edge = feedback_edge(incoming)
    metrics.FEEDBACK_DECISIONS.labels(version).inc()
    metrics.FEEDBACK_EDGE.labels(version).inc(edge)
    return []


def build(settings: WatcherSettings | None = None, bus: BusSettings | None = None) -> ConsumerLoop:
    settings = settings or WatcherSettings()
    metrics.start_at_zero()
    return ConsumerLoop(
        service=SERVICE,
        topics=[MODELS_PROMOTIONS, MARKET_FEEDBACK],
        settings=bus or BusSettings(),
        handle=handle,
        group_id=settings.group_id,
    )


def main() -> int:
    """The watcher process; returns the exit code."""
    settings = WatcherSettings()
    return run_consumer_service(SERVICE, lambda: build(settings), HealthApp(SERVICE))

"""The promotion watcher's consumer on the real embedded broker: each promotion outcome and each
model version's realised edge counted, bad messages dead-lettered with the reason, and
consumed = handled + duplicates + dead-lettered. (The alert it feeds fires in a real Prometheus
in tests/integration/test_promotion_alert.py.)"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from services.common.bus import Producer
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.common.topics import MARKET_FEEDBACK, MODELS_PROMOTIONS, dlq
from services.promotion_watcher.service import build
from services.promotion_watcher.settings import WatcherSettings
from tests.helpers import read_topic


def _count(outcome: str) -> float:
    return REGISTRY.get_sample_value("rlmf_promotions_total", {"outcome": outcome}) or 0.0


@pytest.mark.slow  # two loops, each waits a second of quiet on the broker
def test_watcher_counts_outcomes_and_edges_and_dead_letters_bad_messages(
    bus_settings: BusSettings, unique: str
) -> None:
    bus, settings = bus_settings, WatcherSettings(group_id=f"watcher-{unique}")
    # Read what other tests left on the shared topics first; the group's committed offsets
    # then start the second loop at the end, so the deltas below are this test's messages.
    build(settings, bus).run(idle_timeout_s=1.0)
    loop = build(settings, bus)
    before = {o: _count(o) for o in ("failed", "rejected", "promoted")}
    version = f"s-{unique}"
    now = datetime.now(UTC)
    promotions = [
        pb.ModelPromotion(student_version=version, outcome="failed", reason="helm busy"),
        # From a trainer older than the outcome field: the gate's guards say "rejected".
        pb.ModelPromotion(student_version=version, failed_guards=["metric"]),
        pb.ModelPromotion(student_version=version, outcome="exploded"),
        pb.ModelPromotion(student_version=version, outcome="promoted", promoted=False),
    ]
    feedback = [
        pb.MarketFeedback(ticker="ZW", action="buy", realised_return=0.02, model_version=version),
        pb.MarketFeedback(ticker="ZW", action="sell", realised_return=0.01, model_version=version),
        pb.MarketFeedback(ticker="ZW", action="short", realised_return=0.01, model_version=version),
    ]
    producer = Producer(bus, "test")
    for message in promotions:
        producer.publish(MODELS_PROMOTIONS, message, key=version, event_time=now)
    for message in feedback:
        producer.publish(MARKET_FEEDBACK, message, key="ZW", event_time=now)
    producer.flush()
    producer.close()
    # Five seconds of quiet, not one: on a loaded machine the group join alone can take longer,
    # and the loop would stop before this test's messages reached it.
    loop.run(idle_timeout_s=5.0)

    assert _count("failed") - before["failed"] == 1
    assert _count("rejected") - before["rejected"] == 1
    assert _count("promoted") == before["promoted"]
    labels = {"model_version": version}
    assert REGISTRY.get_sample_value("rlmf_feedback_decisions_total", labels) == 2
    edge = REGISTRY.get_sample_value("rlmf_feedback_edge_sum", labels)
    assert edge is not None and abs(edge - 0.01) < 1e-12  # buy +0.02, sell -0.01
    stats = loop.stats
    assert stats.consumed == 7 and stats.dead_lettered == 3
    assert stats.consumed == stats.handled + stats.duplicates + stats.dead_lettered
    reasons = [
        r.headers["rlmf-error"].decode()
        for topic in (dlq(MODELS_PROMOTIONS), dlq(MARKET_FEEDBACK))
        for r in read_topic(bus.bootstrap, topic)
        if r.key in (version.encode(), b"ZW") and "rlmf-error" in r.headers
    ]
    assert any("'exploded' is not one of" in r for r in reasons), reasons
    assert any("outcome 'promoted' but promoted=False" in r for r in reasons), reasons
    assert any("'short' is not one of buy/hold/sell" in r for r in reasons), reasons

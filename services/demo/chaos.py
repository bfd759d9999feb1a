"""What a chaos run must share with the run without a kill, read back from the broker.

A run's fingerprint holds its decisions, fills, snapshots (and so the net-worth series),
feedback and promotion decisions in event-time order, with every field that the market or the
policy decided, plus its message accounting per topic: unique envelope ids, dead letters and
whether every consuming group committed every record. Re-deliveries after a kill add records
with ids already seen; those are counted (`duplicates`) but not compared, since at-least-once
delivery allows them and every consumer drops them.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict

from services.common import topics
from services.common.bus_reader import committed_offsets, decode_unique, read_all
from services.demo.accounting import CONSUMERS

# The topics whose contents a kill must not change, and the payload fields that are
# bookkeeping of one run rather than something decided (ids and times of production).
COMPARED_TOPICS = (
    topics.MARKET_BARS,
    topics.FEATURES_READY,
    topics.TRADING_DECISIONS,
    topics.TRADING_FILLS,
    topics.PORTFOLIO_SNAPSHOTS,
    topics.MARKET_FEEDBACK,
    topics.MODELS_PROMOTIONS,
)
IGNORED_FIELDS = {
    # The artifact's folder lies under each run's own out dir.
    topics.MODELS_PROMOTIONS: {"artifactPath"},
}


def _events(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    ignored = IGNORED_FIELDS.get(topic, set())
    events = decode_unique(read_all(bootstrap, topic), topics.payload_type(topic))
    rows = [
        {
            "id": e.id,
            "event_time": e.event_time.isoformat(),
            **{k: v for k, v in MessageToDict(e.payload).items() if k not in ignored},
        }
        for e in events
    ]
    return sorted(rows, key=lambda r: (r["event_time"], r["id"]))


def _accounting(bootstrap: str) -> dict[str, dict[str, Any]]:
    out = {}
    for topic in topics.ALL_TOPICS:
        records = read_all(bootstrap, topic)
        unique = len({r.envelope_id for r in records if r.envelope_id})
        groups = CONSUMERS.get(topic, ())
        committed = {g: sum(committed_offsets(bootstrap, g, topic).values()) for g in groups}
        out[topic] = {
            "unique": unique,
            "dead_lettered": len(read_all(bootstrap, topics.dlq(topic))),
            "fully_consumed": all(c == len(records) for c in committed.values()),
            "duplicates": len(records) - unique,
        }
    return out


def run_fingerprint(bootstrap: str) -> dict[str, Any]:
    """The run as the broker holds it (call once every service has stopped)."""
    events = {topic: _events(bootstrap, topic) for topic in COMPARED_TOPICS}
    net_worth = [
        [s["event_time"], s.get("netWorth", 0.0)] for s in events[topics.PORTFOLIO_SNAPSHOTS]
    ]
    return {"events": events, "net_worth": net_worth, "accounting": _accounting(bootstrap)}


def differences(run: dict[str, Any], baseline: dict[str, Any], limit: int = 10) -> list[str]:
    """How `run` differs from `baseline`, one line per difference (at most `limit`); empty
    when the kill changed nothing that was decided or counted."""
    found: list[str] = []
    for topic, want in baseline["events"].items():
        got = run["events"].get(topic, [])
        if len(got) != len(want):
            found.append(f"{topic}: {len(got)} events, the baseline has {len(want)}")
        for g, w in zip(got, want, strict=False):
            if g != w:
                keys = sorted(k for k in set(g) | set(w) if g.get(k) != w.get(k))
                found.append(f"{topic} at {w['event_time']}: {', '.join(keys)} differ")
                break  # the first difference per topic says where the runs parted
    if run["net_worth"] != baseline["net_worth"]:
        found.append("the net-worth series differs")
    for topic, want in baseline["accounting"].items():
        got = run["accounting"].get(topic, {})
        for key in ("unique", "dead_lettered", "fully_consumed"):
            if got.get(key) != want[key]:
                found.append(f"{topic} {key}: {got.get(key)}, the baseline has {want[key]}")
    return found[:limit]

"""Message accounting per topic: produced, consumed, dead-lettered, and the flow checks.

Produced = records on the topic (and unique envelope ids, since a producer that crashed and
re-sent reuses its ids); consumed = the offsets each consuming service's group committed;
dead-lettered = records on the topic's `.dlq` twin. The run reconciles when every consuming
group committed every record, and the flow between topics adds up (one decision per bar,
feedback for all bars but the last, every news item enriched or dead-lettered, ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from services.common import topics
from services.common.bus_reader import Event, committed_offsets, decode_unique, read_all
from services.common.envelope import to_datetime
from services.common.pb.rlmf.v1 import payloads_pb2 as pb

# Which service groups consume which topic in the demo (ConsumerLoop's default group name).
CONSUMERS: dict[str, tuple[str, ...]] = {
    topics.NEWS_RAW: ("rlmf-sentiment",),
    topics.NEWS_ENRICHED: ("rlmf-features",),
    topics.MARKET_BARS: ("rlmf-features",),
    topics.MARKET_FEEDBACK: ("rlmf-trainer",),
}


@dataclass
class TopicCount:
    topic: str
    records: int
    unique: int
    dead_lettered: int
    consumed: dict[str, int] = field(default_factory=dict)
    """group -> committed offsets summed over partitions."""

    @property
    def duplicates(self) -> int:
        return self.records - self.unique

    @property
    def fully_consumed(self) -> bool:
        return all(c == self.records for c in self.consumed.values())


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Accounting:
    counts: list[TopicCount]
    checks: list[Check]

    @property
    def reconciles(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reconciles": self.reconciles,
            "topics": [{**asdict(c), "duplicates": c.duplicates} for c in self.counts],
            "checks": [asdict(c) for c in self.checks],
        }


def count_topics(
    bootstrap: str, running: set[str]
) -> tuple[list[TopicCount], dict[str, list[Any]]]:
    """Counts of every topic, with the consumers of the services in `running`; also the
    records read, by topic, for the flow checks."""
    counts, records = [], {}
    for topic in topics.ALL_TOPICS:
        recs = read_all(bootstrap, topic)
        dlq = read_all(bootstrap, topics.dlq(topic))
        records[topic] = recs
        groups = [g for g in CONSUMERS.get(topic, ()) if g.removeprefix("rlmf-") in running]
        consumed = {g: sum(committed_offsets(bootstrap, g, topic).values()) for g in groups}
        unique = len({r.envelope_id for r in recs if r.envelope_id})
        counts.append(TopicCount(topic, len(recs), unique, len(dlq), consumed))
    return counts, records


def flow_checks(
    counts: list[TopicCount],
    events: dict[str, list[Event]],
    expected_bars: int,
    news_sent: int,
    history_bars: int = 0,
) -> list[Check]:
    """The checks that make the numbers reconcile; each says what it compared. The feed's
    `history_bars` come before the window: features are made for them, no decision is."""
    by = {c.topic: c for c in counts}
    checks = [
        Check(
            f"{c.topic} consumed by {', '.join(c.consumed)}",
            c.fully_consumed,
            f"{c.records} records, committed {c.consumed}",
        )
        for c in counts
        if c.consumed
    ]
    published = by[topics.MARKET_BARS].unique
    checks.append(
        Check(
            "every bar of the window and its history published",
            published == expected_bars + history_bars,
            f"{published} unique bars, window has {expected_bars}, history {history_bars}",
        )
    )
    bars = published - history_bars
    for topic, want, what in (
        (topics.TRADING_DECISIONS, bars, "one decision per bar"),
        (topics.PORTFOLIO_SNAPSHOTS, bars, "one snapshot per bar"),
        (topics.MARKET_FEEDBACK, max(bars - 1, 0), "feedback for every bar but the last"),
    ):
        got = by[topic].unique
        checks.append(Check(what, got == want, f"{topic}: {got} unique, expected {want}"))
    raw, enriched = by[topics.NEWS_RAW], by[topics.NEWS_ENRICHED]
    sent = raw.unique
    checks.append(
        Check(
            "every generated news item published",
            sent == news_sent,
            f"{sent} unique on {topics.NEWS_RAW}, generated {news_sent}",
        )
    )
    if raw.consumed:
        checks.append(
            Check(
                "news enriched or dead-lettered",
                raw.unique == enriched.unique + raw.dead_lettered,
                f"{raw.unique} raw = {enriched.unique} enriched"
                f" + {raw.dead_lettered} dead-lettered",
            )
        )
    checks.append(_decisions_accounted(events))
    checks.append(_feedback_after_next_bar(events))
    checks.append(_net_worth_identity(events))
    return checks


def _net_worth_identity(events: dict[str, list[Event]]) -> Check:
    """cash + sum(quantity x price) == net worth on every snapshot the simulator published."""
    bad = []
    snapshots = events[topics.PORTFOLIO_SNAPSHOTS]
    for e in snapshots:
        snap = e.payload
        marked = snap.cash + sum(p.quantity * p.price for p in snap.positions)
        if abs(marked - snap.net_worth) > 1e-6 * max(1.0, abs(snap.net_worth)):
            bad.append(f"{e.event_time:%Y-%m-%d}: {marked:.6f} != {snap.net_worth:.6f}")
    detail = f"{len(snapshots)} snapshots checked" + (f"; wrong: {bad[:3]}" if bad else "")
    return Check("cash + positions x price = net worth", not bad and bool(snapshots), detail)


def _decisions_accounted(events: dict[str, list[Event]]) -> Check:
    """Every decision is a hold, a fill at the next bar, or a trade the book could not make
    (a buy without cash, a sell without shares), which the snapshot at t proves."""
    decisions = sorted(events[topics.TRADING_DECISIONS], key=lambda e: e.event_time)
    filled = {e.payload.decision_id for e in events[topics.TRADING_FILLS]}
    snaps = {e.event_time: e.payload for e in events[topics.PORTFOLIO_SNAPSHOTS]}
    tally = {"hold": 0, "filled": 0, "unfillable": 0, "last bar (fills after the window)": 0}
    bad: list[str] = []
    for i, d in enumerate(decisions):
        action = d.payload.action
        if action == "hold":
            tally["hold"] += 1
        elif d.id in filled:
            tally["filled"] += 1
        elif i == len(decisions) - 1:
            tally["last bar (fills after the window)"] += 1
        elif _unfillable(action, snaps.get(d.event_time)):
            tally["unfillable"] += 1
        else:
            bad.append(f"{d.event_time:%Y-%m-%d} {action}")
    detail = ", ".join(f"{k}: {v}" for k, v in tally.items())
    if bad:
        detail += f"; unexplained: {', '.join(bad[:5])}"
    return Check("every decision a fill or a logged hold", not bad, detail)


def _unfillable(action: str, snap: pb.PortfolioSnapshot | None) -> bool:
    if snap is None:
        return False
    position = sum(p.quantity for p in snap.positions)
    price = next((p.price for p in snap.positions), 0.0)
    if action == "sell":
        return position <= 1e-9
    # A buy needs at least a sliver of a share worth of cash left (the book clips to cash).
    return action == "buy" and snap.cash < 0.01 * max(price, 1e-9)


def _feedback_after_next_bar(events: dict[str, list[Event]]) -> Check:
    """Feedback for day t is stamped with t+1's time and names the next bar after t."""
    bar_times = sorted({e.event_time for e in events[topics.MARKET_BARS]})
    nxt = dict(zip(bar_times, bar_times[1:], strict=False))
    bad = []
    for e in events[topics.MARKET_FEEDBACK]:
        t = to_datetime(e.payload.decision_time)
        realised = to_datetime(e.payload.realised_time)
        if nxt.get(t) is None or realised != nxt[t] or e.event_time < nxt[t]:
            bad.append(f"{t:%Y-%m-%d} realised {realised:%Y-%m-%d} event {e.event_time:%Y-%m-%d}")
    n = len(events[topics.MARKET_FEEDBACK])
    detail = f"{n} feedback messages checked against the next bar" + (
        f"; wrong: {bad[:3]}" if bad else ""
    )
    return Check("feedback for day t only after t+1", not bad and n > 0, detail)


def build_accounting(
    bootstrap: str, running: set[str], expected_bars: int, news_sent: int, history_bars: int = 0
) -> tuple[Accounting, dict[str, list[Event]]]:
    counts, records = count_topics(bootstrap, running)
    events = {t: decode_unique(records[t], topics.payload_type(t)) for t in topics.ALL_TOPICS}
    checks = flow_checks(counts, events, expected_bars, news_sent, history_bars)
    return Accounting(counts, checks), events

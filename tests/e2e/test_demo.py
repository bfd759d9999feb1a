"""End to end: `rlmf demo --quick` through a real broker and every real service.

The demo runs as a subprocess against a tansu broker this module starts, so that after the demo
has stopped every service the test reads the topics itself and checks the loop's invariants
independently of the demo's own accounting. One service (features) is SIGKILLed mid-run: the
supervisor must restart it and no message may be lost.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common import envelope as envelopes
from services.common import topics
from services.common.bar_messages import HISTORY_SOURCE as FEED_SOURCE
from services.common.broker import EmbeddedBroker, free_port
from services.common.bus_reader import committed_offsets, decode_unique, read_all
from services.common.pb.rlmf.v1 import payloads_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
KILLED = "features"


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Outside pytest's basetemp: concurrent pytest runs on one machine prune each other's
    # basetemps (only the newest 3 are kept), which would delete a running demo's state.
    path = Path(tempfile.mkdtemp(prefix="rlmf-e2e-demo-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_broker(workdir: Path) -> Iterator[str]:
    # A broker of its own: the accounting needs topics no other test wrote to.
    with EmbeddedBroker(port=free_port(), log_path=workdir / "broker.log") as broker:
        yield broker.bootstrap


@pytest.fixture(scope="module")
def demo_run(demo_broker: str, workdir: Path) -> dict[str, Any]:
    out = workdir / "demo-out"
    argv = [
        sys.executable,
        "-m",
        "services.cli",
        "demo",
        "--quick",
        "--out",
        str(out),
        "--bootstrap",
        demo_broker,
        "--kill-service",
        KILLED,
        "--kill-after-bars",
        "15",
    ]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=840)
    return {"proc": proc, "out": out, "bootstrap": demo_broker}


HISTORY_BARS = 30
"""--quick publishes the 30 bars before its window as the feed's history (DemoSettings)."""


def _events(bootstrap: str, topic: str) -> list[Any]:
    return decode_unique(read_all(bootstrap, topic), topics.payload_type(topic))


def _window_bars(bootstrap: str) -> list[Any]:
    """The replayed bars: market.bars.v1 less the history the feed published before them."""
    return [e for e in _events(bootstrap, topics.MARKET_BARS) if e.source != FEED_SOURCE]


def test_demo_exits_zero_and_reports(demo_run: dict[str, Any]) -> None:
    proc = demo_run["proc"]
    assert proc.returncode == 0, f"demo failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    out: Path = demo_run["out"]
    html = (out / "report.html").read_text()
    for name in ("equity", "decisions", "sentiment", "promotions"):
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
        assert f"plots/{name}.png" in html
    assert "synthetic" in html and "does NOT reconcile" not in html
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 0 and len(run["data_sha256"]) == 64
    assert run["window"]["bars"] == 80 and run["accounting"]["reconciles"]


def test_every_bar_got_one_decision(demo_run: dict[str, Any]) -> None:
    bars = _window_bars(demo_run["bootstrap"])
    decisions = _events(demo_run["bootstrap"], topics.TRADING_DECISIONS)
    assert len(bars) == 80
    assert len(_events(demo_run["bootstrap"], topics.MARKET_BARS)) == 80 + HISTORY_BARS
    assert sorted(e.event_time for e in decisions) == sorted(e.event_time for e in bars)


def test_the_warm_up_cycle_trained_on_the_history_alone(demo_run: dict[str, Any]) -> None:
    """Before the first replayed bar the trainer ran a cycle on the history; nothing it
    trained or was judged on is later than the history's last bar (no look-ahead)."""
    b = demo_run["bootstrap"]
    history = sorted(
        e.event_time for e in _events(b, topics.MARKET_BARS) if e.source == FEED_SOURCE
    )
    first_replayed = min(e.event_time for e in _window_bars(b))
    assert len(history) == HISTORY_BARS and history[-1] < first_replayed
    run = json.loads((demo_run["out"] / "run.json").read_text())
    warm_up = run["history"]["warm_up_cycle"]
    assert warm_up["exit_code"] == 0 and warm_up["as_of"] == f"{history[-1]:%Y-%m-%d}"
    event = next(
        e
        for e in _events(b, topics.MODELS_PROMOTIONS)
        if e.payload.student_version == warm_up["student_version"]
    )
    assert event.payload.teacher_version == "v0"
    # Trained up to window_end, judged on held-out bars up to the event time: all history.
    assert envelopes.to_datetime(event.payload.window_end) <= history[-1]
    assert event.event_time <= history[-1]
    # Its decision came before any replayed bar was decided on.
    decisions = _events(b, topics.TRADING_DECISIONS)
    served = {e.payload.model_version for e in decisions if e.event_time == first_replayed}
    assert served == ({warm_up["student_version"]} if warm_up["promoted"] else {"v0"})


def test_every_decision_is_a_fill_or_a_logged_hold(demo_run: dict[str, Any]) -> None:
    b = demo_run["bootstrap"]
    decisions = sorted(_events(b, topics.TRADING_DECISIONS), key=lambda e: e.event_time)
    fills = {e.payload.decision_id: e for e in _events(b, topics.TRADING_FILLS)}
    snaps = {e.event_time: e.payload for e in _events(b, topics.PORTFOLIO_SNAPSHOTS)}
    for d in decisions[:-1]:  # the last bar's order would fill after the window
        action = d.payload.action
        assert action in ("buy", "hold", "sell")
        if action == "hold" or d.id in fills:
            continue
        snap = snaps[d.event_time]
        held = sum(p.quantity for p in snap.positions)
        # Not filled: only a sell with nothing held or a buy with no cash left can be refused.
        assert (action == "sell" and held == 0) or (
            action == "buy" and snap.cash < snap.positions[0].price
        ), f"{d.event_time}: {action} neither filled nor impossible (cash {snap.cash}, held {held})"
    for fill in fills.values():  # and a fill is at a bar after its decision
        decided = next(d for d in decisions if d.id == fill.payload.decision_id)
        assert envelopes.to_datetime(fill.payload.fill_time) > decided.event_time


def test_feedback_for_day_t_only_after_t_plus_1(demo_run: dict[str, Any]) -> None:
    b = demo_run["bootstrap"]
    bar_times = sorted(e.event_time for e in _window_bars(b))
    following = dict(zip(bar_times, bar_times[1:], strict=False))
    feedback = _events(b, topics.MARKET_FEEDBACK)
    assert len(feedback) == 79
    for e in feedback:
        t = envelopes.to_datetime(e.payload.decision_time)
        assert envelopes.to_datetime(e.payload.realised_time) == following[t]
        assert e.event_time >= following[t]


def test_promotion_decisions_recorded(demo_run: dict[str, Any]) -> None:
    promotions = _events(demo_run["bootstrap"], topics.MODELS_PROMOTIONS)
    assert len(promotions) >= 1
    for e in promotions:
        p: pb.ModelPromotion = e.payload
        assert p.student_version and p.teacher_version and p.reason
        if p.stage == "shadow":  # a candidate's verdict: the shadow stretch, not a backtest
            assert p.shadow_bars > 0 and p.outcome in ("promoted", "retired", "failed")
        else:
            assert p.student_metrics and p.teacher_metrics
    run = json.loads((demo_run["out"] / "run.json").read_text())
    assert len(run["promotions"]) == len(promotions)


def test_killed_service_restarted_and_nothing_lost(demo_run: dict[str, Any]) -> None:
    b, out = demo_run["bootstrap"], demo_run["out"]
    run = json.loads((out / "run.json").read_text())
    assert [k["service"] for k in run["killed"]] == [KILLED]
    assert run["restarts"][KILLED] >= 1
    assert run["exit_codes"][KILLED] == 0  # the restarted process stopped cleanly on SIGTERM
    # Every bar and news item reached the features service's committed offsets, and each bar
    # got its features.ready watermark despite the kill (re-deliveries are de-duplicated).
    for topic in (topics.MARKET_BARS, topics.NEWS_ENRICHED):
        records = read_all(b, topic)
        assert sum(committed_offsets(b, "rlmf-features", topic).values()) == len(records)
    ready = {e.payload.watermark.ToDatetime() for e in _events(b, topics.FEATURES_READY)}
    bars = {e.payload.end.ToDatetime() for e in _events(b, topics.MARKET_BARS)}
    assert bars <= ready  # every bar was served, the one in flight at the kill included
    assert not read_all(b, topics.dlq(topics.MARKET_BARS))


def test_accounting_reconciles_per_topic(demo_run: dict[str, Any]) -> None:
    run = json.loads((demo_run["out"] / "run.json").read_text())
    by_topic = {t["topic"]: t for t in run["accounting"]["topics"]}
    for topic, t in by_topic.items():  # the demo's numbers are the broker's numbers
        records = read_all(demo_run["bootstrap"], topic)
        assert t["records"] == len(records), topic
        assert t["dead_lettered"] == len(read_all(demo_run["bootstrap"], topics.dlq(topic))), topic
        for group, committed in t["consumed"].items():
            assert committed == len(records), (topic, group)

"""The simulator service: bars in, decisions, fills, snapshots and market feedback out.

Modes (RLMF_SIMULATOR_MODE):
- replay: reads a CSV (or the regime-switching generator), publishes each bar to market.bars.v1
  (so the features service computes from it), waits for that bar's features.ready.v1 watermark,
  trades it, publishes the outputs, then moves to the next bar: it runs as fast as the slowest
  service, or at `speed` bars per second.
- live: consumes market.bars.v1 published by someone else and trades each bar as it comes
  (at-least-once through ConsumerLoop; a bad or out-of-order bar is dead-lettered).

Per bar t: trading.fills.v1 (the order decided at t-1, filled at t's open), market.feedback.v1
for t-1 (only now that t is known), trading.decisions.v1 for t, portfolio.snapshots.v1 at t.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from services.common import envelope as envelopes
from services.common import json_logging, topics
from services.common.bar_messages import is_history
from services.common.bus import (
    ConsumerLoop,
    Incoming,
    Outgoing,
    Producer,
    ValidationFailed,
    ensure_topics,
)
from services.common.envelope import set_time
from services.common.http_server import HealthApp
from services.common.market_state import MarketState
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.service import on_sigterm, run_consumer_service, start_http
from services.common.settings import BusSettings, LogSettings
from services.common.state_block import state_block
from services.market.baseline_policies import Decision, HttpPolicy, Policy, make_policy
from services.market.market_data import load_prices_csv
from services.market.regime_market import (
    SHIPPED,
    generate_market,
    load_params,
    scenario_text,
)
from services.simulator.ledger import Ledger
from services.simulator.policy_caller import PolicyCaller
from services.simulator.session import BarData, StepOutput, TradingSession
from services.simulator.settings import SimulatorSettings
from services.simulator.shadow import CandidateClient, ShadowTrader, net_worth
from services.simulator.state_store import (
    SimulatorState,
    StateFile,
    restore_session,
    session_to_dict,
)

log = logging.getLogger(__name__)
SERVICE = "simulator"
OUTPUT_TOPICS = (
    topics.TRADING_DECISIONS,
    topics.TRADING_FILLS,
    topics.PORTFOLIO_SNAPSHOTS,
    topics.MARKET_FEEDBACK,
    topics.TRADING_SHADOW,
)

FEATURES_WAIT_TIMEOUTS = Counter(
    "rlmf_simulator_features_wait_timeouts_total",
    "Bars traded without their features watermark",
    ["ticker"],
)
FEATURES_READ_ERRORS = Counter(
    "rlmf_simulator_feature_read_errors_total", "Feature-store reads that failed", ["ticker"]
)
BARS_TRADED = Counter("rlmf_simulator_bars_total", "Bars the simulator traded", ["ticker", "mode"])
BARS_ALREADY_TRADED = Counter(
    "rlmf_simulator_bars_already_traded_total",
    "Re-delivered bars skipped because the saved state already holds them",
)
HISTORY_BARS = Counter(
    "rlmf_simulator_history_bars_total",
    "History bars taken into the price window, not traded",
    ["ticker"],
)
PORTFOLIO_VALUE = Gauge("rlmf_portfolio_value", "Net worth of the traded account", ["ticker"])
BUY_AND_HOLD_VALUE = Gauge(
    "rlmf_portfolio_buy_and_hold_value",
    "Net worth Buy & Hold would have on the same bars",
    ["ticker"],
)


# ---------------------------------------------------------------------------------------------
# Features watermarks
# ---------------------------------------------------------------------------------------------


DEAD_LETTER_RETRY_S = 5.0
"""How long the watermark follower waits before trying an unreachable broker's .dlq again."""

DEAD_LETTER_HOLD_MAX = 1000
"""How many undelivered dead letters the watermark follower holds before it stops reading:
what it has not read stays on the broker, so memory is bounded and nothing is lost."""


class WatermarkTracker:
    """Follows features.ready.v1 from its end and remembers each ticker's highest watermark.
    A message it cannot decode goes to features.ready.v1.dlq, as every consumer's does."""

    def __init__(self, bus: BusSettings, start: dict[int, int] | None = None) -> None:
        """Follow from `start` (partition -> offset: a resumed replay re-reads its own run's
        watermarks) or from the end (a new run must not take an older run's watermarks)."""
        ensure_topics(bus, [topics.FEATURES_READY, topics.dlq(topics.FEATURES_READY)], SERVICE)
        self._bus = bus
        self._dead_letters: Producer | None = None  # opened at the first bad message
        # Bad messages not yet on the .dlq twin: the tracker commits no offsets, so until they
        # land these are their only copy, kept while the broker is unreachable.
        self._undelivered: list[tuple[ConsumerRecord, Exception]] = []
        self._next_delivery = 0.0
        self._consumer = KafkaConsumer(
            bootstrap_servers=bus.bootstrap,
            client_id=f"{SERVICE}-watermarks",
            enable_auto_commit=False,
            # The same TLS/SASL as the bus's own clients: a secured Kafka refuses it otherwise.
            **bus.client_security(),
        )
        parts = self._consumer.partitions_for_topic(topics.FEATURES_READY) or set()
        tps = [TopicPartition(topics.FEATURES_READY, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        if start:
            for tp in tps:
                self._consumer.seek(tp, start.get(tp.partition, 0))
        else:
            self._consumer.seek_to_end(*tps)
        # Resolve the positions now, before any bar of this run is published.
        self.start = {tp.partition: self._consumer.position(tp) for tp in tps}
        self._marks: dict[str, datetime] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watermarks", daemon=True)
        self._thread.start()

    @property
    def held_dead_letters(self) -> int:
        """Bad messages read but not yet acknowledged on the .dlq twin."""
        return len(self._undelivered)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for records in self._consumer.poll(timeout_ms=100).values():
                    self._record_until_full(records)
                self._deliver_dead_letters()
                if not self._undelivered and self._consumer.paused():
                    self._consumer.resume(*self._consumer.paused())
        finally:
            self._consumer.close()
            self._close_dead_letters()

    def _record_until_full(self, records: list[ConsumerRecord]) -> None:
        """Take a polled batch in order; once DEAD_LETTER_HOLD_MAX letters are held, rewind
        the partition to the first record not taken and pause fetching until they are
        delivered (`_run` resumes it), so that record is read again then. Watermarks behind
        it wait too: a broker that refuses writes holds them back."""
        for record in records:
            if len(self._undelivered) >= DEAD_LETTER_HOLD_MAX:
                log.error(
                    "holding %d undelivered dead letters: reading features.ready stops until "
                    "the broker takes them", len(self._undelivered),
                )  # fmt: skip
                self._consumer.seek(TopicPartition(record.topic, record.partition), record.offset)
                self._consumer.pause(*self._consumer.assignment())
                return
            self._record(record)

    def _record(self, record: ConsumerRecord) -> None:
        try:
            msg = envelopes.decode(record.value or b"", pb.FeaturesReady).payload
        except envelopes.EnvelopeError as exc:
            log.warning("dead-lettering an undecodable features.ready message: %s", exc)
            self._undelivered.append((record, exc))
            self._next_delivery = 0.0  # now, not after an earlier failure's pause
            return
        mark = envelopes.to_datetime(msg.watermark)
        with self._cond:
            if msg.ticker not in self._marks or mark > self._marks[msg.ticker]:
                self._marks[msg.ticker] = mark
            self._cond.notify_all()

    def _deliver_dead_letters(self) -> None:
        """The held bad messages, their bytes and headers as they came, to the .dlq twin,
        flushed at once. A broker that cannot be reached keeps them held, to try again after
        DEAD_LETTER_RETRY_S, and the follower goes on: a later watermark of the ticker
        supersedes the bad one, so waits are released meanwhile."""
        if not self._undelivered or time.monotonic() < self._next_delivery:
            return
        try:
            if self._dead_letters is None:
                self._dead_letters = Producer(self._bus, SERVICE)
            for record, error in self._undelivered:
                self._dead_letters.dead_letter(
                    topics.FEATURES_READY,
                    record.value or b"",
                    key=record.key,
                    headers=list(record.headers or []),
                    error=error,
                )
            self._dead_letters.flush()
        except KafkaError as exc:
            # At least once: a retry may send again what landed before the failure.
            log.error(
                "could not dead-letter %d features.ready message(s) (%s); trying again in %.0f s",
                len(self._undelivered), exc, DEAD_LETTER_RETRY_S,
            )  # fmt: skip
            self._next_delivery = time.monotonic() + DEAD_LETTER_RETRY_S
            return
        self._undelivered.clear()

    def _close_dead_letters(self) -> None:
        self._next_delivery = 0.0
        self._deliver_dead_letters()
        if self._undelivered:
            log.error(
                "closing with %d features.ready message(s) not dead-lettered: the broker was "
                "unreachable; the raw bytes were: %r",
                len(self._undelivered), [r.value for r, _ in self._undelivered],
            )  # fmt: skip
        if self._dead_letters is not None:
            try:
                self._dead_letters.close()
            except KafkaError as exc:
                log.error("closing the dead-letter producer failed: %s", exc)

    def wait(self, ticker: str, until: datetime, timeout_s: float) -> bool:
        """True once `ticker`'s watermark reaches `until`; False after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while ticker not in self._marks or self._marks[ticker] < until:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# Bars in, messages out
# ---------------------------------------------------------------------------------------------


def bar_from_pb(bar: pb.Bar) -> BarData:
    start = envelopes.to_datetime(bar.start)
    end = envelopes.to_datetime(bar.end) if bar.HasField("end") else start
    return BarData(bar.ticker, start, bar.open, bar.high, bar.low, bar.close, bar.volume, end)


def bar_to_pb(bar: BarData) -> pb.Bar:
    msg = pb.Bar(
        ticker=bar.ticker,
        open=bar.open,
        high=bar.high,
        low=bar.low,
        close=bar.close,
        volume=bar.volume,
    )
    set_time(msg.start, bar.time)
    set_time(msg.end, bar.cutoff)
    return msg


def frame_bars(frame: pd.DataFrame, ticker: str) -> list[BarData]:
    """The frame's rows as bars; each ends `attrs["bar_seconds"]` after it starts."""
    vol = frame["volume"].fillna(0.0)
    length = pd.Timedelta(seconds=float(frame.attrs["bar_seconds"]))
    return [
        BarData(
            ticker,
            t.to_pydatetime(),
            float(o),
            float(h),
            float(lo),
            float(c),
            float(v),
            (t + length).to_pydatetime(),
        )
        for t, o, h, lo, c, v in zip(
            frame.index,
            frame["open"],
            frame["high"],
            frame["low"],
            frame["close"],
            vol,
            strict=True,
        )
    ]


def _decision_pb(ticker: str, d: Decision, when: datetime) -> pb.Decision:
    msg = pb.Decision(
        ticker=ticker,
        action=d.action,
        value=d.value,
        explanation=d.explanation or "",
        model_version=d.model_version,
        fallback_reason=d.fallback_reason,
    )
    msg.probabilities.update(d.probabilities)
    set_time(msg.decision_time, when)
    return msg


def outputs_of(step: StepOutput, ticker: str, run_id: str) -> list[Outgoing]:
    """The messages of one bar, in order, with ids derived from (run, ticker, time, kind) so a
    re-processed bar re-produces the same ids and consumers drop the duplicates."""
    out: list[Outgoing] = []

    def add(topic: str, payload: Any, when: datetime, kind: str) -> None:
        out.append(
            Outgoing(
                topic,
                payload,
                ticker,
                when,
                envelopes.derived_id(run_id, ticker, when.isoformat(), kind),
            )
        )

    for fill_time, fill, decided_at in step.fills:
        msg = pb.Fill(
            ticker=ticker,
            quantity=fill.quantity,
            price=fill.price,
            cost=fill.cost,
            decision_id=envelopes.derived_id(run_id, ticker, decided_at.isoformat(), "decision"),
        )
        set_time(msg.fill_time, fill_time)
        add(topics.TRADING_FILLS, msg, fill_time, f"fill:{decided_at.isoformat()}")
    if step.feedback is not None:
        fb = step.feedback
        msg = pb.MarketFeedback(
            ticker=ticker,
            state=state_block(fb.state),
            action=fb.decision.action,
            reward=fb.reward,
            realised_return=fb.realised_return,
            model_version=fb.decision.model_version,
            value=fb.decision.value,
        )
        msg.probabilities.update(fb.decision.probabilities)
        set_time(msg.decision_time, fb.decision_time)
        set_time(msg.realised_time, fb.realised_time)
        add(topics.MARKET_FEEDBACK, msg, fb.realised_time, "feedback")
    assert step.decision is not None
    add(
        topics.TRADING_DECISIONS,
        _decision_pb(ticker, step.decision, step.bar.time),
        step.bar.time,
        "decision",
    )
    snap = pb.PortfolioSnapshot(
        cash=step.cash,
        net_worth=step.net_worth,
        buy_and_hold_net_worth=step.buy_and_hold_net_worth,
        model_version=step.decision.model_version,
    )
    snap.positions.add(ticker=ticker, quantity=step.position, price=step.bar.close)
    set_time(snap.as_of, step.bar.time)
    PORTFOLIO_VALUE.labels(ticker).set(step.net_worth)
    BUY_AND_HOLD_VALUE.labels(ticker).set(step.buy_and_hold_net_worth)
    add(topics.PORTFOLIO_SNAPSHOTS, snap, step.bar.time, "snapshot")
    return out


class Trader:
    """Per-ticker sessions, the policy, the optional features wait and reader."""

    def __init__(
        self, settings: SimulatorSettings, policy: Policy, watermarks: WatermarkTracker | None
    ) -> None:
        self.settings = settings
        self.policy = PolicyCaller(policy, settings.policy_unavailable_wait_s)
        self.watermarks = watermarks
        self.sessions: dict[str, TradingSession] = {}
        self.reader = _load_reader(settings.features_reader)
        if self.reader is None and settings.features_source == "feast":
            from services.simulator.feature_source import FeastFeatures

            self.reader = FeastFeatures()
        self.run_id = run_id(settings)
        self.shadow = (
            ShadowTrader(
                CandidateClient(
                    settings.policy_url, settings.candidate_model, settings.policy_timeout_s
                )
            )
            if settings.policy_url and settings.shadow
            else None
        )
        self.ledger = Ledger(settings.ledger_dir) if settings.ledger_dir else None

    def decide(self, state: MarketState) -> Decision:
        """The policy's decision; any failure becomes hold, a metric and a log line."""
        return self.policy.decide(state)

    def session(self, ticker: str) -> TradingSession:
        if ticker not in self.sessions:
            self.sessions[ticker] = TradingSession(ticker, self.settings.execution())
        return self.sessions[ticker]

    def export_state(self) -> SimulatorState:
        """Every session and the policy's progress (the caller adds its input positions)."""
        return SimulatorState(
            sessions={t: session_to_dict(s) for t, s in self.sessions.items()},
            policy=self.policy.get_state(),
            extra={"shadow": self.shadow.export()} if self.shadow else {},
        )

    def restore(self, state: SimulatorState) -> None:
        for ticker, saved in state.sessions.items():
            restore_session(self.session(ticker), saved)
        self.policy.set_state(state.policy)
        if self.shadow is not None:
            blank = TradingSession("", self.settings.execution())
            self.shadow.restore(state.extra.get("shadow", {}), blank)

    def _features(self, bar: BarData) -> tuple[dict[str, float], float | None, str]:
        # The features service stamps a bar's watermark with the bar's end; waiting for its
        # start would accept the previous bar's watermark when bars are contiguous.
        if self.watermarks is not None and not self.watermarks.wait(
            bar.ticker, bar.cutoff, self.settings.features_timeout_s
        ):
            FEATURES_WAIT_TIMEOUTS.labels(bar.ticker).inc()
            log.warning(
                "no features watermark for %s at %s after %.1fs; trading on prices only",
                bar.ticker,
                bar.time,
                self.settings.features_timeout_s,
            )
            return {}, None, ""
        if self.reader is None:
            return {}, None, ""
        try:
            values = dict(self.reader(bar.ticker, bar.cutoff))
        except Exception as exc:  # noqa: BLE001 - a store outage degrades to price features, visibly
            FEATURES_READ_ERRORS.labels(bar.ticker).inc()
            log.warning(
                "feature read for %s at %s failed (%s); trading on prices only",
                bar.ticker,
                bar.cutoff,
                exc,
            )
            return {}, None, ""
        return clean_features(values)

    def on_bar(self, bar: BarData) -> list[Outgoing]:
        session = self.session(bar.ticker)
        features, sentiment, summary = self._features(bar)
        account = self.shadow.before_live(session) if self.shadow else None
        live_before = net_worth(session)
        step = session.on_bar(bar, self.decide, features, sentiment, summary)
        BARS_TRADED.labels(bar.ticker, self.settings.mode).inc()
        out = outputs_of(step, bar.ticker, self.run_id)
        shadow = None
        if account is not None:
            assert self.shadow is not None
            shadow = self.shadow.trade(
                account, bar, features, sentiment, summary, live=(step, live_before)
            )
            decision = _decision_pb(bar.ticker, shadow.decision, bar.time)
            out.append(shadow.outgoing(self.run_id, decision))
        if self.ledger is not None:
            self.ledger.record(step, sentiment, summary, shadow)
        return out


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def clean_features(values: dict[str, Any]) -> tuple[dict[str, float], float | None, str]:
    """A reader's answer as (finite numeric features, sentiment in [-1, 1] or None, summary):
    what MarketState accepts. NaN (e.g. a return before enough history) is not a value."""
    summary = str(values.pop("news_summary", "") or "")
    sentiment = _finite(values.pop("sentiment", None))
    numeric = {k: v for k, v in ((k, _finite(v)) for k, v in values.items()) if v is not None}
    clipped = None if sentiment is None else max(-1.0, min(1.0, sentiment))
    return numeric, clipped, summary


def _load_reader(spec: str | None) -> Callable[[str, datetime], dict[str, Any]] | None:
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"features_reader {spec!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def build_policy(settings: SimulatorSettings) -> Policy:
    if settings.policy_url:
        return HttpPolicy(
            settings.policy_url, settings.policy_timeout_s, explain_every=settings.explain_every
        )
    return make_policy(settings.baseline_policy, seed=settings.seed)


def run_id(settings: SimulatorSettings) -> str:
    """What the run's event ids derive from: its mode, its market and its seed. A prices file
    (or a scenario's YAML) counts by its content, not its path, so the same file replayed from
    two clones gives the same ids, and a file edited in place gives new ones that consumers do
    not drop as duplicates of the old run's. A shipped scenario counts by its shipped YAML,
    whatever lies in the working folder under its name."""
    market = settings.scenario  # live mode names a scenario it never reads
    if settings.prices_csv is not None:
        market = _named_by_content(settings.prices_csv.name, settings.prices_csv.read_bytes())
    elif settings.scenario in SHIPPED or Path(settings.scenario).is_file():
        text = scenario_text(settings.scenario)
        market = _named_by_content(Path(settings.scenario).name, text.encode())
    return f"{settings.mode}:{market}:{settings.seed}"


def _named_by_content(name: str, content: bytes) -> str:
    return f"{name}@{hashlib.sha256(content).hexdigest()[:16]}"


# ---------------------------------------------------------------------------------------------
# The two modes
# ---------------------------------------------------------------------------------------------


def replay_bars(settings: SimulatorSettings) -> list[BarData]:
    """The bars to replay, from the CSV or the generator."""
    if settings.prices_csv is not None:
        frame = load_prices_csv(settings.prices_csv, settings.price_column)
        ticker = settings.ticker or settings.prices_csv.stem.upper()
    else:
        params = load_params(settings.scenario)
        frame, _ = generate_market(params, settings.days, settings.seed)
        ticker = settings.ticker or params.ticker
    end = None if settings.max_bars is None else settings.start_bar + settings.max_bars
    frame = frame.iloc[settings.start_bar : end]
    return frame_bars(frame, ticker)


class Replay:
    """Publishes bars one by one and trades each after its features watermark."""

    def __init__(self, settings: SimulatorSettings, bus: BusSettings) -> None:
        self.settings = settings
        ensure_topics(bus, [topics.MARKET_BARS, *OUTPUT_TOPICS], SERVICE)
        self.producer = Producer(bus, SERVICE)
        self.store = StateFile(settings.state_file) if settings.state_file else None
        saved = self.store.load() if self.store else None
        marks = (saved.extra if saved else {}).get("features_ready", {})
        watermarks = (
            WatermarkTracker(bus, {int(p): o for p, o in marks.items()})
            if settings.wait_for_features
            else None
        )
        self.trader = Trader(settings, build_policy(settings), watermarks)
        if saved is not None:
            self.trader.restore(saved)
            log.info("resuming the replay from %s", settings.state_file)
        self._stop = threading.Event()
        self.bars_done = 0

    def _traded(self, bar: BarData) -> bool:
        """Whether a run before a restart already traded (and flushed) this bar."""
        session = self.trader.sessions.get(bar.ticker)
        last = None if session is None else session.last_time
        return last is not None and bar.time <= last

    def _save(self) -> None:
        """After a bar's outputs are flushed: the state, and where its watermarks started."""
        if self.store is None:
            return
        state = self.trader.export_state()
        if self.trader.watermarks is not None:
            state.extra["features_ready"] = {
                str(p): o for p, o in self.trader.watermarks.start.items()
            }
        self.store.save(state)

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        bars = replay_bars(self.settings)
        log.info("replaying %d bars of %s", len(bars), bars[0].ticker if bars else "?")
        try:
            for bar in bars:
                if self._stop.is_set():
                    break
                if self._traded(bar):
                    continue
                started = time.monotonic()
                self.producer.publish(
                    topics.MARKET_BARS,
                    bar_to_pb(bar),
                    key=bar.ticker,
                    event_time=bar.time,
                    id=envelopes.derived_id(
                        self.trader.run_id, bar.ticker, bar.time.isoformat(), "bar"
                    ),
                )
                self.producer.flush()  # the features service can see the bar before we wait on it
                for out in self.trader.on_bar(bar):
                    self.producer.publish(
                        out.topic, out.payload, key=out.key, event_time=out.event_time, id=out.id
                    )
                self.producer.flush()
                self._save()
                self.bars_done += 1
                if self.settings.speed > 0:
                    self._stop.wait(
                        max(0.0, 1.0 / self.settings.speed - (time.monotonic() - started))
                    )
        finally:
            self.close()
        return self.bars_done

    def close(self) -> None:
        if self.trader.watermarks is not None:
            self.trader.watermarks.close()
        self.producer.close()


class _SavingProducer(Producer):
    """A Producer that saves the simulator's state after every flush. The state then reflects
    exactly the bars whose outputs are on the broker, and ConsumerLoop commits their offsets
    only after this flush returns: a SIGKILL anywhere leaves state and outputs in agreement."""

    def __init__(self, bus: BusSettings, save: Callable[[], None]) -> None:
        super().__init__(bus, SERVICE)
        self._save = save

    def flush(self) -> None:
        super().flush()
        self._save()


def live_loop(settings: SimulatorSettings, bus: BusSettings) -> ConsumerLoop:
    """A ConsumerLoop over market.bars.v1 trading each wanted ticker's bars; with
    `state_file`, the account survives a restart (state_store.py)."""
    watermarks = WatermarkTracker(bus) if settings.wait_for_features else None
    trader = Trader(settings, build_policy(settings), watermarks)
    wanted = set(settings.tickers)
    store = StateFile(settings.state_file) if settings.state_file else None
    saved = store.load() if store else None
    if saved is not None:
        trader.restore(saved)
        log.info("resuming %d sessions from %s", len(saved.sessions), settings.state_file)
    done = dict(saved.offsets) if saved else {}
    """"topic:partition" -> the next offset not yet reflected in the sessions."""

    def handle(incoming: Incoming) -> list[Outgoing]:
        where = f"{incoming.topic}:{incoming.partition}"
        redelivered = incoming.offset < done.get(where, 0)
        if not redelivered:
            done[where] = incoming.offset + 1
        # Other tickers' bars are not this simulator's to judge, whatever their content.
        if wanted and incoming.payload.ticker not in wanted:
            return []
        bar = bar_from_pb(incoming.payload)
        try:
            # Skipping by time, saved offsets are not needed (and are stale after a broker
            # that kept its topics in memory restarted: new bars come at old offsets).
            if republished(bar) or (redelivered and settings.republished_bars != "skip"):
                return already_traded(bar)
            if is_history(incoming.envelope.source):
                trader.session(bar.ticker).observe(bar)
                HISTORY_BARS.labels(bar.ticker).inc()
                return []
            return trader.on_bar(bar)
        except ValueError as exc:  # a bad or out-of-order bar: dead-lettered with this text
            raise ValidationFailed(str(exc)) from exc

    def republished(bar: BarData) -> bool:
        """A bar no later than its ticker's last traded one, where settings say such a bar is
        a re-publication to skip rather than an out-of-order one to dead-letter."""
        if settings.republished_bars != "skip":
            return False
        session = trader.sessions.get(bar.ticker)
        return (
            session is not None and session.last_time is not None and bar.time <= session.last_time
        )

    def already_traded(bar: BarData) -> list[Outgoing]:
        """A bar the saved state already reflects (only its commit was lost): its outputs are on
        the broker, so it is dropped. A malformed one gets its first delivery's answer again,
        a dead letter: its checks depend on the bar alone, not on the sessions."""
        bar.check()
        BARS_ALREADY_TRADED.inc()
        return []

    def save() -> None:
        assert store is not None
        state = trader.export_state()
        state.offsets = dict(done)
        store.save(state)

    return ConsumerLoop(
        service=SERVICE,
        topics=[topics.MARKET_BARS],
        settings=bus,
        handle=handle,
        group_id=settings.group_id,
        create_topics=OUTPUT_TOPICS,
        producer=_SavingProducer(bus, save) if store else None,
    )


def main() -> int:
    """Entry point of `python -m services.simulator`; returns the exit code."""
    settings = SimulatorSettings()
    bus = BusSettings()
    if settings.mode == "live":
        return run_consumer_service(SERVICE, lambda: live_loop(settings, bus))
    logs = LogSettings()
    json_logging.configure(SERVICE, logs.level, logs.json_format)
    health = HealthApp(SERVICE)
    server = start_http(SERVICE, health)
    try:
        replay = Replay(settings, bus)
    except Exception:
        log.exception(
            "could not start the replay: the broker, the data or the policy is unavailable"
        )
        server.stop()
        return 2
    health.add_readiness_check("replay", lambda: not replay._stop.is_set())
    on_sigterm(replay.request_stop)
    try:
        done = replay.run()
    except Exception:
        log.exception("replay stopped on an error")
        return 1
    finally:
        server.stop()
    log.info("replay finished after %d bars", done)
    return 0

"""Shadow trading: while the trainer holds a candidate (a student that passed the backtest gate,
served beside the teacher as `<policy>-candidate`), every live bar is also traded by the
candidate in a shadow account. The shadow account starts as a copy of the live one at the
candidate's first bar and then follows the same bars, features, execution and costs with the
candidate's decisions; the live account never sees them. Each shadow bar goes to
trading.shadow.v1 with both accounts' returns on that bar: the evidence the trainer judges the
candidate on, from bars neither model was trained or selected on.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from prometheus_client import Counter
from pydantic import ValidationError

from services.common import envelope as envelopes
from services.common import topics
from services.common.bus import Outgoing
from services.common.market_state import Decision, MarketState
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.market import accounting as acc
from services.market.baseline_policies import hold_decision
from services.simulator.session import BarData, StepOutput, TradingSession
from services.simulator.state_store import restore_session, session_to_dict

log = logging.getLogger(__name__)

SHADOW_BARS = Counter(
    "rlmf_simulator_shadow_bars_total", "Bars the candidate traded in shadow", ["ticker"]
)
SHADOW_FALLBACKS = Counter(
    "rlmf_simulator_shadow_fallbacks_total",
    "Shadow bars the candidate did not answer (booked as hold)",
    ["ticker"],
)


class CandidateClient:
    """The policy server's candidate over KServe v1. `version()` is None while there is none
    (404): the simulator asks every bar, so a staged candidate is traded from the next bar."""

    def __init__(self, url: str, model_name: str, timeout_s: float) -> None:
        base = url.rstrip("/")
        self.status_url = f"{base}/v1/models/{model_name}:status"
        self.predict_url = f"{base}/v1/models/{model_name}:predict"
        self.client = httpx.Client(timeout=timeout_s)

    def version(self) -> str | None:
        try:
            response = self.client.get(self.status_url)
        except httpx.HTTPError as exc:
            log.warning("candidate status unavailable (%s); no shadow decision this bar", exc)
            return None
        if response.status_code != 200:
            return None
        try:
            version = response.json().get("model_version")
        except (ValueError, AttributeError) as exc:
            log.warning("candidate status is not a status (%s); no shadow decision", exc)
            return None
        return str(version) if version else None

    def decide(self, state: MarketState) -> Decision:
        """The candidate's decision; a failure is a hold with its reason (the shadow account
        does what the live one does when its policy fails)."""
        body = {"instances": [state.model_dump(mode="json")]}
        try:
            response = self.client.post(self.predict_url, json=body)
            response.raise_for_status()
            return Decision.model_validate(response.json()["predictions"][0])
        except (httpx.HTTPError, KeyError, IndexError, ValueError, ValidationError) as exc:
            SHADOW_FALLBACKS.labels(state.ticker).inc()
            log.warning("candidate failed on %s (%s); holding in shadow", state.ticker, exc)
            return hold_decision(f"candidate: {exc}"[:500])

    def close(self) -> None:
        self.client.close()


@dataclass
class ShadowAccount:
    """One ticker's shadow account under one candidate."""

    version: str
    session: TradingSession
    bars: int = 0
    net_worth: float = 0.0
    """At the last shadow bar's close (at the start: the live account's, which it copies)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "bars": self.bars,
            "net_worth": self.net_worth,
            "session": session_to_dict(self.session),
        }


def net_worth(session: TradingSession) -> float:
    """A session's net worth at its last close (its starting cash before any bar)."""
    if not session.closes:
        return session.book.cash
    return acc.net_worth(session.book.cash, session.book.position, session.closes[-1])


class ShadowTrader:
    """The candidate's shadow accounts, one per ticker, kept beside the live sessions."""

    def __init__(self, client: CandidateClient) -> None:
        self.client = client
        self.accounts: dict[str, ShadowAccount] = {}

    def before_live(self, live: TradingSession) -> ShadowAccount | None:
        """Called before the live session takes a bar: the shadow account that will trade it,
        started now as a copy of the live account for a new candidate; None without one."""
        version = self.client.version()
        if version is None:
            self.accounts.pop(live.ticker, None)  # retired or promoted: the stretch is over
            return None
        account = self.accounts.get(live.ticker)
        if account is None or account.version != version:
            account = ShadowAccount(version, copy.deepcopy(live), net_worth=net_worth(live))
            self.accounts[live.ticker] = account
            log.info("shadow trading %s on %s from the next bar", version, live.ticker)
        return account

    def trade(
        self,
        account: ShadowAccount,
        bar: BarData,
        features: dict[str, float],
        sentiment: float | None,
        summary: str,
        live: tuple[StepOutput, float],
    ) -> ShadowBar:
        """The candidate decides on `bar` in the shadow account; `live` is the live step and
        the live account's net worth before it."""
        step = account.session.on_bar(bar, self.client.decide, features, sentiment, summary)
        before, account.net_worth = account.net_worth, step.net_worth
        account.bars += 1
        SHADOW_BARS.labels(bar.ticker).inc()
        live_step, live_before = live
        assert step.decision is not None and live_step.decision is not None
        return ShadowBar(
            ticker=bar.ticker,
            time=bar.time,
            decision=step.decision,
            teacher=live_step.decision,
            shadow_return=step.net_worth / before - 1.0,
            live_return=live_step.net_worth / live_before - 1.0,
            shadow_net_worth=step.net_worth,
            live_net_worth=live_step.net_worth,
            shadow_bar=account.bars,
        )

    def export(self) -> dict[str, Any]:
        return {ticker: account.to_dict() for ticker, account in self.accounts.items()}

    def restore(self, saved: dict[str, Any], blank: TradingSession) -> None:
        """Put the saved accounts back; `blank` is a fresh session built from the settings."""
        for ticker, data in saved.items():
            session = copy.deepcopy(blank)
            session.ticker = ticker
            restore_session(session, data["session"])
            self.accounts[ticker] = ShadowAccount(
                data["version"], session, int(data["bars"]), float(data["net_worth"])
            )


@dataclass(frozen=True)
class ShadowBar:
    ticker: str
    time: datetime
    decision: Decision
    teacher: Decision
    shadow_return: float
    live_return: float
    shadow_net_worth: float
    live_net_worth: float
    shadow_bar: int

    def outgoing(self, run_id: str, decision_pb: pb.Decision) -> Outgoing:
        msg = pb.ShadowDecision(
            teacher_version=self.teacher.model_version,
            teacher_action=self.teacher.action,
            shadow_return=self.shadow_return,
            live_return=self.live_return,
            shadow_net_worth=self.shadow_net_worth,
            live_net_worth=self.live_net_worth,
            shadow_bar=self.shadow_bar,
        )
        msg.decision.CopyFrom(decision_pb)
        when = self.time.isoformat()
        shadow_id = envelopes.derived_id(
            run_id, self.ticker, when, f"shadow:{self.decision.model_version}"
        )
        return Outgoing(topics.TRADING_SHADOW, msg, self.ticker, self.time, shadow_id)

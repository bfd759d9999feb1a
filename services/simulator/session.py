"""One ticker's live trading session: bars arrive one at a time; the same rules as the envs.

On each bar t: the order decided on bar t-1 fills at t's open (or was filled at t-1's close);
the account is valued at t's close; the feedback for t-1 is produced now that t is known (its
realised move and the env's reward); then the policy decides on the state at t. A bar never
sees a later bar, so nothing here can look ahead. `tests/unit/test_env_session.py` checks this
reproduces `DiscreteTradingEnv` step for step.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from services.common.market_state import ACTIONS, MAX_RECENT_PRICES, Decision, MarketState
from services.market import accounting as acc
from services.market.accounting import ExecutionConfig, Fill, RewardConfig


@dataclass(frozen=True)
class BarData:
    ticker: str
    time: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    end: datetime | None = None
    """When the bar closed (features are stamped with it); defaults to `time`."""

    @property
    def cutoff(self) -> datetime:
        return self.end or self.time

    def check(self) -> None:
        """Raises ValueError naming the field of a bar that cannot be traded on."""
        for name in ("open", "high", "low", "close"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(
                    f"bar {self.ticker} {self.time}: {name} = {value} is not a positive price"
                )


@dataclass(frozen=True)
class Feedback:
    """What the trainer learns from: day t's state and action, known once t+1 is."""

    ticker: str
    decision_time: datetime
    realised_time: datetime
    state: MarketState
    decision: Decision
    reward: float
    realised_return: float


@dataclass
class StepOutput:
    """Everything one bar produced, in publishing order."""

    bar: BarData
    fills: list[tuple[datetime, Fill, datetime]] = field(default_factory=list)
    """(fill time, fill, time of the decision it executes)."""
    feedback: Feedback | None = None
    state: MarketState | None = None
    decision: Decision | None = None
    cash: float = 0.0
    position: float = 0.0
    net_worth: float = 0.0
    buy_and_hold_net_worth: float = 0.0


@dataclass
class _Pending:
    decision_time: datetime
    state: MarketState
    decision: Decision
    nw_before: float
    volatility: float
    sentiment: float
    fill: Fill | None = None


class _Book:
    """An account in one asset, moved only through the accounting core."""

    def __init__(self, cfg: ExecutionConfig) -> None:
        self.cfg = cfg
        self.cash = cfg.initial_cash
        self.position = 0.0

    def trade(self, action: int, price: float, fraction: float) -> Fill | None:
        qty = acc.discrete_quantity(action, self.cash, self.position, price, fraction, self.cfg)
        self.cash, self.position, fill = acc.execute(self.cash, self.position, qty, price, self.cfg)
        return fill


class TradingSession:
    """Feeds bars through a policy and the accounting core, one ticker."""

    def __init__(
        self,
        ticker: str,
        execution: ExecutionConfig | None = None,
        reward_config: RewardConfig | None = None,
        window: int = 10,
        state_closes: int = 32,
        trade_fraction: float = 1.0,
    ) -> None:
        self.ticker = ticker
        self.cfg = execution or ExecutionConfig()
        self.reward_config = reward_config or RewardConfig()
        self.window, self.state_closes, self.trade_fraction = window, state_closes, trade_fraction
        self.book = _Book(self.cfg)
        self.benchmark = _Book(self.cfg)  # Buy & Hold under the same rules
        self.closes: deque[float] = deque(maxlen=max(MAX_RECENT_PRICES, state_closes))
        self.log_returns: deque[float] = deque([0.0] * window, maxlen=window)
        self.last_time: datetime | None = None
        self.pending: _Pending | None = None
        self._bench_pending = False
        self.decisions = 0
        """Decisions made so far (what `rlmf status` reports per ticker)."""

    # -- per bar ---------------------------------------------------------------------------------

    def fill_pending(self, bar: BarData, out: StepOutput) -> None:
        """Execute the previous decision at this bar's open (next_open rule)."""
        if self.pending is None or self.cfg.fill_at != "next_open":
            return
        p = self.pending
        p.fill = self.book.trade(p.decision.action_index, bar.open, self.trade_fraction)
        if p.fill:
            out.fills.append((bar.time, p.fill, p.decision_time))
        if self._bench_pending:
            self.benchmark.trade(acc.BUY, bar.open, 1.0)
            self._bench_pending = False

    def feedback_for_pending(self, bar: BarData) -> Feedback | None:
        """The previous decision's feedback, now that this bar (t+1) is known."""
        if self.pending is None:
            return None
        p = self.pending
        nw_now = acc.net_worth(self.book.cash, self.book.position, bar.close)
        notional = p.fill.notional if p.fill else 0.0
        cost = p.fill.cost if p.fill else 0.0
        alignment = p.sentiment * (p.decision.action_index - 1) if p.fill else 0.0
        r = acc.reward(
            p.nw_before, nw_now, notional, cost, alignment, p.volatility, self.reward_config
        )
        realised = bar.close / p.state.recent_closes[-1] - 1.0
        return Feedback(self.ticker, p.decision_time, bar.time, p.state, p.decision, r, realised)

    def build_state(
        self, bar: BarData, features: dict[str, float], sentiment: float | None, summary: str
    ) -> MarketState:
        closes = list(self.closes)[-self.state_closes :]
        rets = np.asarray(self.log_returns)
        merged = {
            "return_1": float(rets[-1]),
            f"return_{self.window}": float(rets.sum()),
            "volatility": float(rets.std()),
        }
        merged.update(features)
        return MarketState(
            ticker=self.ticker,
            as_of=bar.time,
            recent_closes=closes,
            position=max(self.book.position, 0.0),
            cash=max(self.book.cash, 0.0),
            features=merged,
            news_summary=summary[:2000],
            sentiment=sentiment,
        )

    def observe(self, bar: BarData) -> None:
        """A history bar (published before the live start): it extends the price window the
        states show, and nothing is decided, filled or fed back on it.

        Raises:
            ValueError: a bad bar, or one not after the previous bar.
        """
        bar.check()
        if self.last_time is not None and bar.time <= self.last_time:
            raise ValueError(
                f"bar {self.ticker} {bar.time} is not after the previous bar {self.last_time}"
            )
        if self.pending is not None:
            raise ValueError(
                f"history bar {self.ticker} {bar.time} after a live decision: history comes "
                "before the first live bar"
            )
        if self.closes:
            self.log_returns.append(math.log(bar.close / self.closes[-1]))
        self.closes.append(bar.close)
        self.last_time = bar.time

    def on_bar(
        self,
        bar: BarData,
        decide: object,
        features: dict[str, float] | None = None,
        sentiment: float | None = None,
        summary: str = "",
    ) -> StepOutput:
        """Process bar t; `decide(state) -> Decision` is asked once, about bar t only.

        Raises:
            ValueError: a bad bar, or one not after the previous bar (out of order or repeated).
        """
        bar.check()
        if self.last_time is not None and bar.time <= self.last_time:
            raise ValueError(
                f"bar {self.ticker} {bar.time} is not after the previous bar {self.last_time}"
            )
        out = StepOutput(bar)
        self.fill_pending(bar, out)
        if self.closes:
            self.log_returns.append(math.log(bar.close / self.closes[-1]))
        self.closes.append(bar.close)
        out.feedback = self.feedback_for_pending(bar)
        self.last_time = bar.time
        state = self.build_state(bar, features or {}, sentiment, summary)
        decision: Decision = decide(state)  # type: ignore[operator]
        self.decisions += 1
        nw = acc.net_worth(self.book.cash, self.book.position, bar.close)
        vol = float(np.asarray(self.log_returns).std())
        self.pending = _Pending(bar.time, state, decision, nw, vol, sentiment or 0.0)
        if self.benchmark.position == 0 and self.benchmark.cash == self.cfg.initial_cash:
            self._bench_pending = True
        if self.cfg.fill_at == "close":
            self.pending.fill = self.book.trade(
                decision.action_index, bar.close, self.trade_fraction
            )
            if self.pending.fill:
                out.fills.append((bar.time, self.pending.fill, bar.time))
            if self._bench_pending:
                self.benchmark.trade(acc.BUY, bar.close, 1.0)
                self._bench_pending = False
        out.state, out.decision = state, decision
        out.cash, out.position = self.book.cash, self.book.position
        out.net_worth = acc.net_worth(self.book.cash, self.book.position, bar.close)
        out.buy_and_hold_net_worth = acc.net_worth(
            self.benchmark.cash, self.benchmark.position, bar.close
        )
        return out


__all__ = ["ACTIONS", "BarData", "Feedback", "StepOutput", "TradingSession"]

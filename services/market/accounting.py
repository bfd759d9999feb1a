"""The accounting core every env, backtest and the live service trade through.

One account: cash and a position per asset; net worth = cash + sum(position * price), always.
An order is clipped to what the account may do (no negative cash, no short position unless
enabled), costs are basis points of the traded notional plus a fixed fee per trade, and an
execution changes net worth (at the fill price) by exactly minus its cost.

Fill timing lives with the caller: a decision made on bar t fills at bar t+1's open by default
(`fill_at="next_open"`) or at bar t's close (`fill_at="close"`), never at a price the decision
could not have known. The functions here are plain float arithmetic on purpose: they run once
per env step in training rollouts, where numpy scalars or pandas would cost more than the math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# A buy is sized slightly under what cash allows so float rounding never leaves cash at -1e-13.
_AFFORD_MARGIN = 1.0 - 1e-12
# Quantities below this are rounding noise, not trades.
MIN_QUANTITY = 1e-12


@dataclass(frozen=True)
class ExecutionConfig:
    """How orders fill and what they cost."""

    initial_cash: float = 10_000.0
    """Cash at the start of an episode or backtest."""
    cost_bps: float = 10.0
    """Proportional cost in basis points of the traded notional (10 bps = 0.1 %)."""
    fixed_fee: float = 0.0
    """Fixed fee per executed trade, in cash units."""
    fill_at: Literal["next_open", "close"] = "next_open"
    """Fill a decision made on bar t at bar t+1's open (default) or at bar t's close."""
    allow_short: bool = False
    """Allow a negative position (a sell beyond holdings)."""
    allow_negative_cash: bool = False
    """Allow buying on margin (cash below zero)."""

    def __post_init__(self) -> None:
        if self.initial_cash <= 0:
            raise ValueError(f"initial_cash must be positive, got {self.initial_cash}")
        if self.cost_bps < 0 or self.fixed_fee < 0:
            raise ValueError("cost_bps and fixed_fee must be non-negative")
        if self.fill_at not in ("next_open", "close"):
            raise ValueError(f"fill_at must be 'next_open' or 'close', got {self.fill_at!r}")


@dataclass(frozen=True)
class Fill:
    """One executed trade: positive quantity buys, negative sells."""

    quantity: float
    price: float
    cost: float

    @property
    def notional(self) -> float:
        return abs(self.quantity) * self.price


def order_cost(notional: float, cfg: ExecutionConfig) -> float:
    """The cost of trading `notional` (absolute cash value) once."""
    return abs(notional) * cfg.cost_bps * 1e-4 + cfg.fixed_fee


def net_worth(cash: float, position: float, price: float) -> float:
    return cash + position * price


def _affordable_buy(cash: float, price: float, cfg: ExecutionConfig) -> float:
    spendable = cash - cfg.fixed_fee
    if spendable <= 0:
        return 0.0
    return spendable / (price * (1.0 + cfg.cost_bps * 1e-4)) * _AFFORD_MARGIN


def clip_quantity(
    quantity: float, cash: float, position: float, price: float, cfg: ExecutionConfig
) -> float:
    """`quantity` limited to what the account may trade at `price`."""
    if quantity > 0 and not cfg.allow_negative_cash:
        quantity = min(quantity, _affordable_buy(cash, price, cfg))
    elif quantity < 0 and not cfg.allow_short:
        quantity = max(quantity, -max(position, 0.0))
    return quantity


def execute(
    cash: float, position: float, quantity: float, price: float, cfg: ExecutionConfig
) -> tuple[float, float, Fill | None]:
    """Trade up to `quantity` at `price`; returns (cash, position, fill or None if nothing traded).

    Raises:
        ValueError: a price that is not positive and finite.
    """
    if not price > 0 or price == float("inf"):
        raise ValueError(f"fill price must be positive and finite, got {price}")
    quantity = clip_quantity(quantity, cash, position, price, cfg)
    if abs(quantity) < MIN_QUANTITY:
        return cash, position, None
    cost = order_cost(quantity * price, cfg)
    new_cash = cash - quantity * price - cost
    if new_cash < 0 and not cfg.allow_negative_cash:
        # Only a sell whose proceeds do not cover the fixed fee gets here: not worth trading.
        return cash, position, None
    return new_cash, position + quantity, Fill(quantity, price, cost)


# ---------------------------------------------------------------------------------------------
# Actions -> order quantities (the one mapping every env and the service use)
# ---------------------------------------------------------------------------------------------

SELL, HOLD, BUY = 0, 1, 2  # index order of services.common.market_state.ACTIONS


def discrete_quantity(
    action: int, cash: float, position: float, price: float, fraction: float, cfg: ExecutionConfig
) -> float:
    """Order quantity for a discrete action: buy spends `fraction` of cash, sell sells `fraction`
    of holdings (or, with shorting enabled and no holdings, shorts `fraction` of net worth)."""
    if action == BUY:
        return fraction * max(cash, 0.0) / price
    if action == SELL:
        if position > 0 or not cfg.allow_short:
            return -fraction * max(position, 0.0)
        return -fraction * max(net_worth(cash, position, price), 0.0) / price
    return 0.0


def continuous_quantity(
    kind: float, amount: float, cash: float, position: float, price: float, hold_tolerance: float
) -> tuple[float, int]:
    """The News-driven RL seed's action: kind in [0,2] (< 1 buy, > 1 sell, ~1 hold), amount in
    [0, 0.5] of cash (buy) or holdings (sell). Returns (quantity, direction -1/0/+1)."""
    if kind < 1.0 - hold_tolerance:
        return amount * max(cash, 0.0) / price, 1
    if kind > 1.0 + hold_tolerance:
        return -amount * max(position, 0.0), -1
    return 0.0, 0


# ---------------------------------------------------------------------------------------------
# Reward
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardConfig:
    """Reward = change in net worth - stability penalty - costs + sentiment-alignment bonus.

    Every term is a fraction of the previous net worth so rewards are comparable across
    price levels. The change in net worth already includes the costs paid; `cost_coef` charges
    them once more, as the News-driven RL seed's formula does (set it to 0 to count them once).
    """

    stability_coef: float = 0.1
    """Penalty per unit of traded notional / net worth (discourages large position swings)."""
    cost_coef: float = 1.0
    """Extra penalty per unit of cost / net worth."""
    sentiment_coef: float = 0.001
    """Bonus for trading in the direction of the news sentiment."""
    vol_sensitivity: float = 50.0
    """The bonus is divided by (1 + vol_sensitivity * volatility of period returns)."""


def reward(
    nw_prev: float,
    nw_now: float,
    traded_notional: float,
    cost: float,
    alignment: float,
    volatility: float,
    cfg: RewardConfig,
) -> float:
    """One step's reward; `alignment` = sentiment * trade direction (summed over assets)."""
    base = nw_prev if nw_prev > 0 else 1.0
    value = (nw_now - nw_prev) / base
    value -= cfg.stability_coef * traded_notional / base
    value -= cfg.cost_coef * cost / base
    value += cfg.sentiment_coef * alignment / (1.0 + cfg.vol_sensitivity * volatility)
    return value

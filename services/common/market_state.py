"""What the policy sees at one decision: the state the simulator sends and the prompt shows.

It crosses a boundary (simulator -> policy server over HTTP, and into training data), so it is a
pydantic model that validates itself. It only ever holds information known at `as_of`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The legal actions of the discrete policy, in a fixed order every tensor follows.
ACTIONS: tuple[str, str, str] = ("sell", "hold", "buy")

MAX_RECENT_PRICES = 64
MAX_SUMMARY_CHARS = 2000


class MarketState(BaseModel):
    """One ticker's state at the decision cutoff `as_of`."""

    model_config = ConfigDict(extra="forbid")

    ticker: str = Field(
        pattern=r"^[A-Z][A-Z0-9.\-]{0,9}$", description="Exchange ticker, e.g. MSFT"
    )
    as_of: datetime = Field(description="Decision cutoff (event time); nothing after it is in here")
    recent_closes: list[float] = Field(
        min_length=1, max_length=MAX_RECENT_PRICES, description="Closes up to as_of, oldest first"
    )
    position: float = Field(default=0.0, ge=0.0, description="Shares held")
    cash: float = Field(default=0.0, ge=0.0, description="Cash available")
    features: dict[str, float] = Field(default_factory=dict, description="Feature-store values")
    news_summary: str = Field(default="", max_length=MAX_SUMMARY_CHARS)
    sentiment: float | None = Field(default=None, ge=-1.0, le=1.0)

    @field_validator("recent_closes")
    @classmethod
    def _prices_positive(cls, closes: list[float]) -> list[float]:
        for i, price in enumerate(closes):
            if not math.isfinite(price) or price <= 0:
                raise ValueError(f"recent_closes[{i}] = {price} is not a positive finite price")
        return closes

    @field_validator("features")
    @classmethod
    def _features_finite(cls, features: dict[str, float]) -> dict[str, float]:
        bad = [name for name, value in features.items() if not math.isfinite(value)]
        if bad:
            raise ValueError(f"features not finite: {', '.join(sorted(bad))}")
        return features

    def returns(self) -> list[float]:
        """Period returns between consecutive recent closes."""
        c = self.recent_closes
        return [c[i] / c[i - 1] - 1.0 for i in range(1, len(c))]

    @property
    def price(self) -> float:
        return self.recent_closes[-1]

    @property
    def net_worth(self) -> float:
        return self.cash + self.position * self.price


Action = Literal["sell", "hold", "buy"]


class Decision(BaseModel):
    """One policy answer (the KServe v1 prediction shape) plus why it fell back, if it did."""

    action: Action
    probabilities: dict[str, float] = Field(default_factory=dict)
    value: float = 0.0
    explanation: str | None = None
    model_version: str
    fallback_reason: str = ""

    @property
    def action_index(self) -> int:
        return ACTIONS.index(self.action)


# The join keys of a Feast row, which are not state values.
FEATURE_ROW_KEYS = ("ticker", "event_timestamp")


def state_values(row: Mapping[str, Any]) -> dict[str, Any]:
    """One joined Feast row as the decision state takes it: the finite numeric features, plus
    "sentiment" (None on a day without news) and "news_summary" ("" on a day without news).
    The simulator reads it at decision time and the trainer builds its training states from
    the offline store with the same function, so both see the same state."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name in FEATURE_ROW_KEYS or value is None or isinstance(value, str):
            continue
        number = float(value)
        if math.isfinite(number):
            out[str(name)] = number
    count = out.get("news_count", 0.0)
    mean = out.get("news_sentiment_mean")
    # No news that day: the state says "no sentiment" rather than a fake neutral 0.
    out["sentiment"] = max(-1.0, min(1.0, mean)) if count and mean is not None else None
    # The feature is the latest summary known, carried over days without news; the prompt's
    # news_summary is the day's news, so an earlier day's headline must not pass for it (the
    # policy read it as today's and traded on it).
    summary = row.get("news_latest_summary")
    out["news_summary"] = summary if count and isinstance(summary, str) else ""
    return out

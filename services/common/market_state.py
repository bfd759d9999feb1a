"""What the policy sees at one decision: the state the simulator sends and the prompt shows.

It crosses a boundary (simulator -> policy server over HTTP, and into training data), so it is a
pydantic model that validates itself. It only ever holds information known at `as_of`.
"""

from __future__ import annotations

import math
from datetime import datetime

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

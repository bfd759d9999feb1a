"""The RLMF seed's regime-switching synthetic market, seeded and reproducible.

Daily log returns follow o_t = mu_s + phi_s * o_{t-1} + sigma_s * eps_t, eps_t ~ N(0, 1), with
the regime s switching as a Markov chain; `forced_shifts` pin the regime from a given day on
(the "regime-shift" scenario: a calm bull market forced into a volatile bear on day 250).
Parameters live in a small YAML; `load_params("default" | "regime-shift" | path)`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.market.market_data import infer_periods_per_year

SHIPPED = ("default", "regime-shift")


class RegimeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mu: float
    phi: float = Field(
        gt=-1.0, lt=1.0, description="AR(1) coefficient; |phi| < 1 keeps it stationary"
    )
    sigma: float = Field(gt=0.0)


class ForcedShift(BaseModel):
    model_config = ConfigDict(extra="forbid")

    day: int = Field(ge=1, description="0-based bar index from which the regime is forced")
    regime: str


class MarketParams(BaseModel):
    """The generator's YAML, validated."""

    model_config = ConfigDict(extra="forbid")

    ticker: str = "SYN"
    start_price: float = Field(default=100.0, gt=0)
    initial_regime: str
    regimes: dict[str, RegimeParams]
    transitions: dict[str, dict[str, float]]
    forced_shifts: list[ForcedShift] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> MarketParams:
        names = set(self.regimes)
        if self.initial_regime not in names:
            raise ValueError(
                f"initial_regime {self.initial_regime!r} is not one of {sorted(names)}"
            )
        if set(self.transitions) != names:
            raise ValueError(f"transitions must have one row per regime {sorted(names)}")
        for source, row in self.transitions.items():
            if set(row) - names:
                raise ValueError(
                    f"transitions[{source}] names unknown regimes {sorted(set(row) - names)}"
                )
            if any(p < 0 for p in row.values()) or abs(sum(row.values()) - 1.0) > 1e-9:
                raise ValueError(f"transitions[{source}] must be non-negative and sum to 1")
        for shift in self.forced_shifts:
            if shift.regime not in names:
                raise ValueError(f"forced shift to unknown regime {shift.regime!r}")
        return self


def scenario_text(name_or_path: str | Path = "default") -> str:
    """The YAML of a shipped scenario by name (a file of that name in the working folder does
    not shadow it), or of a YAML file."""
    if str(name_or_path) in SHIPPED:
        return (
            resources.files("services.market.scenarios")
            .joinpath(f"{name_or_path}.yaml")
            .read_text()
        )
    return Path(name_or_path).read_text()


def load_params(name_or_path: str | Path = "default") -> MarketParams:
    """A shipped scenario by name, or a YAML file."""
    return MarketParams.model_validate(yaml.safe_load(scenario_text(name_or_path)))


def _regime_path(params: MarketParams, n_days: int, rng: np.random.Generator) -> list[str]:
    names = list(params.regimes)
    matrix = np.array([[params.transitions[a].get(b, 0.0) for b in names] for a in names])
    forced = {s.day: s.regime for s in params.forced_shifts}
    pinned: str | None = None
    path = [params.initial_regime]
    for day in range(1, n_days):
        if day in forced:
            pinned = forced[day]
        if pinned is not None:
            path.append(pinned)
            continue
        row = matrix[names.index(path[-1])]
        path.append(names[int(rng.choice(len(names), p=row))])
    return path


def generate_market(
    params: MarketParams, n_days: int, seed: int, start: str | pd.Timestamp = "2020-01-01"
) -> tuple[pd.DataFrame, list[tuple[pd.Timestamp, str, str]]]:
    """Generate `n_days` business-day OHLCV bars.

    Returns:
        (frame shaped like load_prices_csv's plus a `regime` column, the shifts as
        (time of the first bar in the new regime, from, to)).
    """
    if n_days < 3:
        raise ValueError("n_days must be at least 3")
    rng = np.random.default_rng(seed)
    regimes = _regime_path(params, n_days, rng)
    eps = rng.standard_normal((n_days, 4))
    log_ret = np.zeros(n_days)
    for t in range(1, n_days):
        p = params.regimes[regimes[t]]
        log_ret[t] = p.mu + p.phi * log_ret[t - 1] + p.sigma * eps[t, 0]
    close = params.start_price * np.exp(np.cumsum(log_ret))
    sigma = np.array([params.regimes[r].sigma for r in regimes])
    prev_close = np.concatenate([[params.start_price], close[:-1]])
    # The open gaps a little from the previous close; high/low bracket open and close.
    opens = prev_close * np.exp(0.25 * sigma * eps[:, 1])
    high = np.maximum(opens, close) * np.exp(0.5 * sigma * np.abs(eps[:, 2]))
    low = np.minimum(opens, close) * np.exp(-0.5 * sigma * np.abs(eps[:, 3]))
    volume = np.round(1e6 * np.exp(0.3 * rng.standard_normal(n_days) + 20 * sigma))
    index = pd.bdate_range(pd.Timestamp(start, tz="UTC"), periods=n_days, name="time")
    frame = pd.DataFrame(
        {
            "open": opens,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "regime": regimes,
        },
        index=index,
    )
    ppy, frequency = infer_periods_per_year(index)
    frame.attrs.update(
        periods_per_year=ppy,
        frequency=frequency,
        bar_seconds=86_400.0,
        source=f"regime_market(seed={seed}, ticker={params.ticker})",
        price_column="close",
        ohlc_from_close=False,
    )
    shifts = [
        (index[t], regimes[t - 1], regimes[t])
        for t in range(1, n_days)
        if regimes[t] != regimes[t - 1]
    ]
    return frame, shifts

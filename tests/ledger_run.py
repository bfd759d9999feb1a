"""A short real trading run for the ledger, report and live-page tests: the simulator's own
`Trader` (a baseline policy, no bus) trades the repo's daily bars with a features reader that
gives each day a sentiment and, every third day, a news summary."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from services.market.market_data import load_prices_csv
from services.simulator.service import Trader, build_policy, frame_bars
from services.simulator.session import BarData
from services.simulator.settings import SimulatorSettings

REPO = Path(__file__).resolve().parents[1]
READER = "tests.ledger_run:news_features"
FIRST_DAY = "2009-05-22"


def news_features(ticker: str, as_of: datetime) -> dict[str, Any]:
    """The features service's answer for one bar: a sentiment that swings with the day, so the
    sentiment rule buys and sells, and a summary on every third day."""
    day = as_of.toordinal()
    sentiment = [0.6, -0.5, 0.1, 0.3, -0.3][day % 5]
    return {"sentiment": sentiment, "news_summary": f"{ticker} news" if day % 3 == 0 else ""}


def bars(ticker: str, n: int, source: str = "GOOGL.csv") -> list[BarData]:
    """The first `n` daily bars of a repo price file from GOOGL.csv's first day (MSFT.csv
    starts in 1986), as the simulator receives them."""
    frame = load_prices_csv(REPO / "data" / source)
    return frame_bars(frame.loc[FIRST_DAY:].iloc[:n], ticker)


def settings(ledger_dir: Path | None, policy: str = "sentiment-rule") -> SimulatorSettings:
    return SimulatorSettings(
        mode="live",
        wait_for_features=False,
        baseline_policy=policy,
        seed=1,
        features_reader=READER,
        ledger_dir=ledger_dir,
    )


def trader(ledger_dir: Path | None, policy: str = "sentiment-rule") -> Trader:
    chosen = settings(ledger_dir, policy)
    return Trader(chosen, build_policy(chosen), None)

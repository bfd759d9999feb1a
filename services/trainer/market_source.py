"""Which bars a cycle trains on: a price CSV, the trainer's Kafka history (cluster), or the
regime generator, and that only when asked for; no bars at all is a clear error."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import pandas as pd

from services.trainer.kafka_history import History, NoMarketData

if TYPE_CHECKING:
    from services.trainer.settings import TrainerSettings

SYNTHETIC_FIELDS = frozenset({"market_scenario", "market_days", "market_seed"})
"""Setting any of these (RLMF_TRAINER_MARKET_*) asks for the synthetic market."""


def resolve(settings: TrainerSettings) -> str:
    """csv, kafka or synthetic: data_source when given; with `auto`, the CSV when there is
    one, the regime generator only when one of its settings was given, else NoMarketData."""
    if settings.data_source != "auto":
        return settings.data_source
    if settings.prices_csv is not None:
        return "csv"
    if SYNTHETIC_FIELDS & settings.model_fields_set:
        return "synthetic"
    raise NoMarketData(
        "no market data to train on: set RLMF_TRAINER_PRICES_CSV, or "
        "RLMF_TRAINER_DATA_SOURCE=kafka to read market.bars.v1 (the cluster's CronJob does), "
        "or ask for the synthetic market with RLMF_TRAINER_DATA_SOURCE=synthetic"
    )


def load_prices(settings: TrainerSettings) -> pd.DataFrame:
    source = resolve(settings)
    if source == "csv":
        if settings.prices_csv is None:
            raise NoMarketData("RLMF_TRAINER_DATA_SOURCE=csv needs RLMF_TRAINER_PRICES_CSV")
        from services.market.market_data import load_prices_csv

        return load_prices_csv(settings.prices_csv)
    if source == "kafka":
        return History(settings.work_dir, settings.ticker).prices()
    from services.market.regime_market import generate_market, load_params

    frame, _ = generate_market(
        load_params(settings.market_scenario), settings.market_days, settings.market_seed
    )
    return frame


def known_by(prices: pd.DataFrame, day: date) -> pd.DataFrame:
    """The bars whose day is `day` or earlier: what a cycle run on that day may know."""
    return prices[prices.index.date <= day]

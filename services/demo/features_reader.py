"""The simulator's features reader in the demo: `services.demo.features_reader:read`.

The simulator calls it as read(ticker, as_of) after the bar's features.ready watermark arrived,
so the online store holds that day's row (bars are replayed one at a time: nothing later has
been pushed). It returns the online features with the news summary and sentiment, which the
simulator lifts into the policy's MarketState.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from services.common.market_state import state_values


@lru_cache(maxsize=1)
def _reader() -> Any:
    # Built once per simulator process, from RLMF_FEATURES_* (the same store the service writes).
    from services.features.store import FeatureReader

    return FeatureReader()


def read(ticker: str, as_of: datetime) -> dict[str, Any]:
    """Online features of `ticker` (as of the last served day, which is `as_of`'s), as the
    decision state takes them (services.common.market_state.state_values, the function the
    cluster's point-in-time reader and the trainer use): a day without news has no sentiment
    and no summary, never a neutral 0.0 or the last day's headline."""
    return state_values(_reader().online(ticker))

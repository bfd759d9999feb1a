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


@lru_cache(maxsize=1)
def _reader() -> Any:
    # Built once per simulator process, from RLMF_FEATURES_* (the same store the service writes).
    from services.features.store import FeatureReader

    return FeatureReader()


def read(ticker: str, as_of: datetime) -> dict[str, Any]:
    """Online features of `ticker` (as of the last served day, which is `as_of`'s)."""
    values = dict(_reader().online(ticker))
    for key in [k for k, v in values.items() if isinstance(v, float) and v != v]:
        values.pop(key)  # NaN (e.g. a return before enough history) is not a feature value
    # The simulator lifts these two names into MarketState.sentiment / .news_summary: the day's
    # mean news sentiment (what the synthetic news is informative about) and its latest summary.
    # A day without news has no sentiment (None in MarketState), not a neutral 0.0: the prompt
    # and the reward's alignment term must tell "no news" from "neutral news", as the
    # cluster's point-in-time reader (services.simulator.feature_source) does.
    # Its latest summary likewise: the feature carries the last one over days without news,
    # which the prompt must not present as the day's (state_values does the same).
    has_news = values.get("news_count", 0.0) > 0
    if "news_sentiment_mean" in values and has_news:
        values["sentiment"] = values["news_sentiment_mean"]
    if "news_latest_summary" in values:
        summary = values.pop("news_latest_summary")
        values["news_summary"] = summary if has_news else ""
    return values

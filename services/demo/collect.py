"""The run as tables (bars, decisions, snapshots, news, promotions) from the bus events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from services.common import topics
from services.common.bus_reader import Event
from services.common.envelope import to_datetime


@dataclass
class RunTables:
    bars: pd.DataFrame
    decisions: pd.DataFrame
    snapshots: pd.DataFrame
    news: pd.DataFrame
    promotions: list[dict[str, Any]] = field(default_factory=list)
    feedback: pd.DataFrame = field(default_factory=pd.DataFrame)


def _frame(rows: list[dict[str, Any]], index: str) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(columns=[index]).set_index(index)
    return pd.DataFrame(rows).sort_values(index).drop_duplicates(index).set_index(index)


def tables(events: dict[str, list[Event]], since: Any = None) -> RunTables:
    """The run's topics as tables; `since` (the window's first bar) leaves out the feed's
    history bars published before the replay."""
    bars = _frame(
        [
            {"time": e.event_time, "close": e.payload.close, "open": e.payload.open}
            for e in events[topics.MARKET_BARS]
            if since is None or e.event_time >= since
        ],
        "time",
    )
    decisions = _frame(
        [
            {
                "time": e.event_time,
                "id": e.id,
                "action": e.payload.action,
                "model_version": e.payload.model_version,
                "value": e.payload.value,
                "p_buy": e.payload.probabilities.get("buy", float("nan")),
                "p_hold": e.payload.probabilities.get("hold", float("nan")),
                "p_sell": e.payload.probabilities.get("sell", float("nan")),
                "explanation": e.payload.explanation,
                "fallback": e.payload.fallback_reason,
            }
            for e in events[topics.TRADING_DECISIONS]
        ],
        "time",
    )
    snapshots = _frame(
        [
            {
                "time": e.event_time,
                "net_worth": e.payload.net_worth,
                "cash": e.payload.cash,
                "buy_and_hold": e.payload.buy_and_hold_net_worth,
                "model_version": e.payload.model_version,
                "position": sum(p.quantity for p in e.payload.positions),
            }
            for e in events[topics.PORTFOLIO_SNAPSHOTS]
        ],
        "time",
    )
    news = pd.DataFrame(
        [
            {
                "time": to_datetime(e.payload.item.published_at),
                "sentiment": e.payload.sentiment,
                "headline": e.payload.item.headline,
                "summary": e.payload.summary,
                "synthetic": e.payload.item.synthetic,
                "model": e.payload.model_name,
            }
            for e in events[topics.NEWS_ENRICHED]
        ],
        columns=["time", "sentiment", "headline", "summary", "synthetic", "model"],
    )
    feedback = pd.DataFrame(
        [
            {
                "decision_time": to_datetime(e.payload.decision_time),
                "realised_time": to_datetime(e.payload.realised_time),
                "event_time": e.event_time,
                "action": e.payload.action,
                "reward": e.payload.reward,
                "realised_return": e.payload.realised_return,
                "state": e.payload.state,
            }
            for e in events[topics.MARKET_FEEDBACK]
        ]
    )
    promotions = [
        _promotion(e) for e in sorted(events[topics.MODELS_PROMOTIONS], key=lambda e: e.event_time)
    ]
    return RunTables(bars, decisions, snapshots, news.sort_values("time"), promotions, feedback)


def _promotion(e: Event) -> dict[str, Any]:
    p = e.payload
    return {
        "time": e.event_time,
        "student": p.student_version,
        "teacher": p.teacher_version,
        "promoted": p.promoted,
        "reason": p.reason,
        "inputs_sha256": p.inputs_sha256,
        "torch_threads": p.torch_threads,
        "ppo_iterations": p.ppo_iterations,
        "budget_cut": p.budget_cut,
        "sharpe_diff": p.sharpe_diff if p.HasField("sharpe_diff") else None,
        "sharpe_diff_low": p.sharpe_diff_low if p.HasField("sharpe_diff_low") else None,
        "sharpe_diff_high": p.sharpe_diff_high if p.HasField("sharpe_diff_high") else None,
        "p_value": p.p_value if p.HasField("p_value") else None,
        "holdout_bars": p.holdout_bars,
        "student_metrics": dict(p.student_metrics),
        "teacher_metrics": dict(p.teacher_metrics),
        "buy_and_hold_metrics": dict(p.buy_and_hold_metrics),
        "failed_guards": list(p.failed_guards),
        "artifact_path": p.artifact_path,
        "window_start": to_datetime(p.window_start) if p.HasField("window_start") else None,
        "window_end": to_datetime(p.window_end) if p.HasField("window_end") else None,
        "outcome": p.outcome,
        "stage": p.stage or "backtest",
        "shadow_bars": p.shadow_bars,
        "shadow_sharpe_diff": p.shadow_sharpe_diff if p.HasField("shadow_sharpe_diff") else None,
        "shadow_p_value": p.shadow_p_value if p.HasField("shadow_p_value") else None,
    }


def shadow_stretches(promotions: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    """(first, last) bar of each candidate's shadow stretch, from the verdicts."""
    return [
        (p["window_start"], p["window_end"])
        for p in promotions
        if p.get("stage") == "shadow" and p.get("window_start") is not None
    ]


def daily_sentiment(
    news: pd.DataFrame, bar_times: pd.DatetimeIndex, bar_seconds: float
) -> tuple[pd.Series, pd.Series]:
    """Per bar: mean sentiment of the news published before its close, and their headlines."""
    from services.market.news_series import bucket_news

    frame = pd.DataFrame(
        {
            "time": pd.to_datetime(news["time"], utc=True),
            "sentiment": news["sentiment"],
            "summary": news["headline"],
        }
    )
    return bucket_news(frame, bar_times, bar_seconds)

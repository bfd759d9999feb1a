"""The state block: how one `MarketState` is written into the policy's prompt.

It is a wire contract, not a policy detail: the simulator puts the rendered block into every
`market.feedback.v1` record, the trainer rebuilds training prompts from it, and the policy
server renders the same text for the state it is asked about. `STATE_FIELDS` is the prompt's
description of the block, so the two stay side by side.
"""

from __future__ import annotations

import json

from services.common.market_state import MarketState

STATE_FENCE = "```"
MAX_PROMPT_PRICES = 6
MAX_PROMPT_RETURNS = 5

STATE_FIELDS = (
    "The state, given between ``` fences, has these fields:\n"
    "- recent_closes: the last daily closing prices, oldest first\n"
    "- recent_returns_pct: the last daily returns in percent, oldest first\n"
    "- position_shares and cash: what the portfolio holds now\n"
    "- features: indicators computed up to that date (e.g. rsi_14, volatility, momentum)\n"
    "- sentiment: the tone of the day's news, from -1 (very negative) to 1 (very positive)\n"
    "- news_summary: a short summary of the day's news about the company"
)


def _fmt(value: float, digits: int = 4) -> str:
    # Few significant digits: SmolLM2 spells numbers digit by digit, so every digit is a token
    # of the per-decision suffix that the prefix cache cannot save.
    return f"{value:.{digits}g}"


def _series(values: list[float], digits: int = 4) -> str:
    return ",".join(_fmt(v, digits) for v in values)


def state_block(state: MarketState) -> str:
    """The state as fenced `key: value` lines, from `state` alone (nothing after as_of)."""
    features = ",".join(f"{k}={_fmt(v, 3)}" for k, v in sorted(state.features.items()))
    sentiment = "none" if state.sentiment is None else _fmt(state.sentiment, 2)
    # json.dumps puts the news on one line with quotes and newlines escaped, and the fence
    # marker is removed, so news text cannot close the data block and pose as instructions.
    news = json.dumps(state.news_summary, ensure_ascii=False).replace(STATE_FENCE, "'''")
    returns_pct = [100 * r for r in state.returns()[-MAX_PROMPT_RETURNS:]]
    lines = [
        f"ticker: {state.ticker}",
        f"date: {state.as_of.date().isoformat()}",
        f"recent_closes: {_series(state.recent_closes[-MAX_PROMPT_PRICES:])}",
        f"recent_returns_pct: {_series(returns_pct, 3)}",
        f"position_shares: {_fmt(state.position)}",
        f"cash: {_fmt(state.cash)}",
        f"features: {features or 'none'}",
        f"sentiment: {sentiment}",
        f"news_summary: {news}",
    ]
    return STATE_FENCE + "\n" + "\n".join(lines) + "\n" + STATE_FENCE

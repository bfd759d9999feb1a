"""The state block: how one `MarketState` is written into the policy's prompt.

It is a wire contract, not a policy detail: the simulator puts the rendered block into every
`market.feedback.v1` record, the trainer rebuilds training prompts from it, and the policy
server renders the same text for the state it is asked about. `STATE_FIELDS` is the prompt's
description of the block, so the two stay side by side.

The block is ordered for caching: everything fixed for a market day comes first (`day_part`:
ticker, date, prices, returns, features, sentiment, news), and the portfolio comes last, as one
coarse line (`portfolio_part`: the share of net worth invested, in 25% steps). So the frozen
layers' work on "prompt prefix + day part" is the same for every decision of that day, in
every episode, epoch and cycle, and a day cache can keep it (services/policy/day_cache.py).
"""

from __future__ import annotations

import json

from services.common.market_state import MarketState
from services.common.prompt_text import neutralise_special_tokens

STATE_FENCE = "```"
MAX_PROMPT_PRICES = 6
MAX_PROMPT_RETURNS = 5
# Bumped whenever the rendered prompt changes: a policy artifact records the version it was
# trained on, and a server refuses an artifact built for another one (it would be mis-served).
PROMPT_VERSION = 2
# The portfolio line's resolution: few distinct tails (five), so each day's tails are cached too:
# every tail costs the frozen layers about 19 tokens per day, a fifth of the day part.
INVESTED_STEP_PCT = 25
PORTFOLIO_KEY = "invested_pct"

STATE_FIELDS = (
    "The state, given between ``` fences, has these fields:\n"
    "- ticker and date: the stock and the trading day\n"
    "- recent_closes: the last daily closing prices, oldest first\n"
    "- recent_returns_pct: the last daily returns in percent, oldest first\n"
    "- features: indicators computed up to that date (e.g. rsi_14, volatility, momentum)\n"
    "- sentiment: the tone of the day's news, from -1 (very negative) to 1 (very positive)\n"
    "- news_summary: a short summary of the day's news about the company\n"
    f"- {PORTFOLIO_KEY}: the share of the portfolio's net worth held in the stock now, in "
    f"percent, rounded to {INVESTED_STEP_PCT}% steps"
)


def _fmt(value: float, digits: int = 4) -> str:
    # Few significant digits: SmolLM2 spells numbers digit by digit, so every digit is a token.
    return f"{value:.{digits}g}"


def _series(values: list[float], digits: int = 4) -> str:
    return ",".join(_fmt(v, digits) for v in values)


def invested_pct(state: MarketState) -> int:
    """The share of net worth in the stock, rounded to the nearest `INVESTED_STEP_PCT` step."""
    worth = state.net_worth
    share = 0.0 if worth <= 0 else state.position * state.price / worth
    steps = round(min(max(share, 0.0), 1.0) * 100 / INVESTED_STEP_PCT)
    return int(steps * INVESTED_STEP_PCT)


def day_part(state: MarketState) -> str:
    """The opening fence and every line fixed for the day: from `state` alone (nothing after
    as_of), and the same for every portfolio the policy might hold that day."""
    features = ",".join(f"{k}={_fmt(v, 3)}" for k, v in sorted(state.features.items()))
    sentiment = "none" if state.sentiment is None else _fmt(state.sentiment, 2)
    # json.dumps puts the news on one line with quotes and newlines escaped, the fence marker is
    # removed, and special-token strings are defused (last, so nothing after can rebuild one), so
    # news text can neither close the data block nor open a chat turn of its own. Ordinary news
    # renders exactly as before: PROMPT_VERSION is unchanged.
    news = neutralise_special_tokens(
        json.dumps(state.news_summary, ensure_ascii=False).replace(STATE_FENCE, "'''")
    )
    returns_pct = [100 * r for r in state.returns()[-MAX_PROMPT_RETURNS:]]
    lines = [
        f"ticker: {state.ticker}",
        f"date: {state.as_of.date().isoformat()}",
        f"recent_closes: {_series(state.recent_closes[-MAX_PROMPT_PRICES:])}",
        f"recent_returns_pct: {_series(returns_pct, 3)}",
        f"features: {features or 'none'}",
        f"sentiment: {sentiment}",
        f"news_summary: {news}",
    ]
    return STATE_FENCE + "\n" + "\n".join(lines) + "\n"


def portfolio_part(pct: int) -> str:
    """The portfolio line and the closing fence: the only part of the block that changes
    within a day."""
    return f"{PORTFOLIO_KEY}: {pct}\n{STATE_FENCE}"


def all_portfolio_parts() -> list[str]:
    """Every portfolio part a state can render to, in order (0%, 25%, ..., 100%)."""
    return [portfolio_part(pct) for pct in range(0, 101, INVESTED_STEP_PCT)]


def state_block(state: MarketState) -> str:
    """The state as fenced `key: value` lines: `day_part` then `portfolio_part`."""
    return day_part(state) + portfolio_part(invested_pct(state))


def split_block(block: str) -> tuple[str, str] | None:
    """A rendered block back into (day part, portfolio part); None when it is not in this
    version's layout (e.g. a feedback record written under an older prompt)."""
    marker = f"\n{PORTFOLIO_KEY}: "
    at = block.rfind(marker)
    if at < 0 or not block.startswith(STATE_FENCE + "\n"):
        return None
    day, tail = block[: at + 1], block[at + 1 :]
    return (day, tail) if tail in all_portfolio_parts() else None

"""The simulator's per-bar ledger: one JSON line per traded bar in `<ledger_dir>/<TICKER>.jsonl`.

Why a file beside the state file: the embedded broker of `rlmf up` keeps its topics in memory,
so after a restart the history of decisions and net worth is gone from the bus; `rlmf report`
and the live page draw from this ledger instead. A line is written when the bar is traded,
before its outputs are flushed: a bar traded again after a kill (its state was not saved)
replaces its line and any after it, so the ledger always tells what the saved accounts did.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from services.simulator.session import StepOutput
from services.simulator.shadow import ShadowBar

log = logging.getLogger(__name__)

TAIL_BYTES = 64 * 1024
"""Enough of a file's end to hold its last line (a line is well under 2 kB)."""


class Ledger:
    """Appends one line per traded bar; remembers each ticker's last written bar time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._last: dict[str, datetime | None] = {}

    def path(self, ticker: str) -> Path:
        return self.folder / f"{ticker}.jsonl"

    def last_time(self, ticker: str) -> datetime | None:
        """The newest bar time in the ticker's file (read from its tail once, then kept)."""
        if ticker not in self._last:
            self._last[ticker] = _last_time_on_disk(self.path(ticker))
        return self._last[ticker]

    def record(
        self, step: StepOutput, sentiment: float | None, summary: str, shadow: ShadowBar | None
    ) -> None:
        """Append the bar's line. A bar the file already holds is being traded again: the
        session accepted it, so the state a restart resumed from predates it, and the lines
        from it on describe trading that state undid; they are replaced, never duplicated."""
        ticker, when = step.bar.ticker, step.bar.time
        last = self.last_time(ticker)
        if last is not None and when <= last:
            self._drop_from(ticker, when)
        line = json.dumps(ledger_row(step, sentiment, summary, shadow)) + "\n"
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.path(ticker).open("a", encoding="utf-8") as handle:
            handle.write(line)
        self._last[ticker] = when

    def _drop_from(self, ticker: str, when: datetime) -> None:
        """Rewrite the ticker's file without its lines at or after `when` (after a restart
        only, so reading the whole file is rare)."""
        path = self.path(ticker)
        kept = [r for r in read_ledger(path) if datetime.fromisoformat(r["time"]) < when]
        log.info("ledger %s: bar %s traded again after a restart; its lines from it replaced",
                 ticker, when.isoformat())  # fmt: skip
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, path)  # a kill mid-rewrite leaves the old file, never a half one


def ledger_row(
    step: StepOutput, sentiment: float | None, summary: str, shadow: ShadowBar | None
) -> dict[str, Any]:
    """One bar's line: the bar, the live decision and account, Buy & Hold, the news seen,
    and the candidate's shadow decision and account when one traded the bar."""
    bar, decision = step.bar, step.decision
    assert decision is not None
    state_sentiment = step.state.sentiment if step.state is not None else sentiment
    return {
        "time": bar.time.isoformat(),
        "ticker": bar.ticker,
        "open": bar.open,
        "high": bar.high,
        "low": bar.low,
        "close": bar.close,
        "volume": bar.volume,
        "action": decision.action,
        "probabilities": dict(decision.probabilities),
        "model_version": decision.model_version,
        "fallback_reason": decision.fallback_reason,
        "cash": step.cash,
        "position": step.position,
        "net_worth": step.net_worth,
        "buy_and_hold_net_worth": step.buy_and_hold_net_worth,
        "sentiment": state_sentiment,
        "news_summary": bool(summary),
        "shadow": None
        if shadow is None
        else {
            "version": shadow.decision.model_version,
            "action": shadow.decision.action,
            "net_worth": shadow.shadow_net_worth,
        },
    }


def _last_time_on_disk(path: Path) -> datetime | None:
    """The time of the file's last complete line. A torn last line (a kill mid-write) is cut
    off first, so the next append starts on a line of its own and the bar is written again."""
    if not path.is_file():
        return None
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = max(0, size - TAIL_BYTES)
        handle.seek(start)
        tail = handle.read()
        if tail and not tail.endswith(b"\n"):
            keep = tail.rfind(b"\n") + 1
            log.warning("cutting a torn last line of %s: %.80r", path, tail[keep:])
            handle.truncate(start + keep)
            tail = tail[:keep]
    lines = tail.splitlines()
    if not lines:
        return None
    return datetime.fromisoformat(json.loads(lines[-1])["time"])


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """A ticker's lines, oldest first; a torn line (a kill mid-write) is skipped with a log."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("skipping a torn line of %s: %.80s", path, line)
    return rows

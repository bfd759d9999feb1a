"""`rlmf status`: what a running or stopped `rlmf up` has done, read from its state folder alone
(the simulator's state file, the trainer's stores and cycle record, the policy's `current`
pointer), so it answers the same while `up` runs and after it stopped."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.common.up_state import RunInfo, StateDir, running
from services.simulator.state_store import StateFile, StateFileError
from services.trainer.cycle_log import CycleLog
from services.trainer.kafka_history import StreamHistory
from services.trainer.shadow import ShadowFiles, shadow_series


def collect(state: StateDir) -> dict[str, Any]:
    """The status as plain data: `rlmf status --json` prints it as it is."""
    info = state.read_run()
    sessions = _sessions(state.simulator_state)
    bars = StreamHistory(state.trainer).bar_counts()
    needed = info.bars_needed if info else None
    tickers = {
        ticker: _ticker(bars.get(ticker, 0), sessions.get(ticker), needed)
        for ticker in sorted(set(bars) | set(sessions))
    }
    return {
        "state_dir": str(state.root),
        "running": running(info),
        "started_at": info.started_at if info else None,
        "stopped_at": info.stopped_at if info else None,
        "served": _served(info),
        "tickers": tickers,
        "shadow": _shadow(state.trainer),
        "cycles": CycleLog(state.trainer / "cycles.jsonl").records(),
    }


def _sessions(path: Path) -> dict[str, dict[str, Any]]:
    try:
        saved = StateFile(path).load()
    except StateFileError as exc:
        raise StatusError(f"cannot read the simulator's state {path}: {exc}") from exc
    return saved.sessions if saved else {}


class StatusError(RuntimeError):
    pass


def _ticker(bars: int, session: dict[str, Any] | None, needed: int | None) -> dict[str, Any]:
    """One ticker's line: bars the trainer has, decisions, the account's net worth beside Buy &
    Hold's under the same rules, and the bars still missing before a cycle can train."""
    last_close = session["closes"][-1] if session and session["closes"] else None

    def worth(cash_key: str, position_key: str) -> float | None:
        if session is None or last_close is None:
            return None
        return float(session[cash_key] + session[position_key] * last_close)

    return {
        "bars": bars,
        "decisions": int(session.get("decisions", 0)) if session else 0,
        "last_bar": session.get("last_time") if session else None,
        "net_worth": worth("cash", "position"),
        "buy_and_hold_net_worth": worth("benchmark_cash", "benchmark_position"),
        "bars_needed_for_cycle": None if needed is None else max(0, needed - bars),
    }


def _shadow(trainer_dir: Path) -> dict[str, Any] | None:
    """The candidate in shadow: its version, the bar times it traded so far and those its
    verdict waits for; None when no candidate is in shadow."""
    files = ShadowFiles(trainer_dir)
    candidate = files.read_candidate()
    if candidate is None:
        return None
    times, _ = shadow_series(files.shadow_bars(candidate.version))
    return {
        "version": candidate.version,
        "bars": len(times),
        "needed": candidate.needed,
        "staged_at": candidate.staged_at,
    }


def _served(info: RunInfo | None) -> dict[str, Any]:
    """The version the `current` pointer names, and since when (the pointer's last move)."""
    if info is None:
        return {"version": None, "since": None}
    pointer = Path(info.models_root) / "current"
    if not pointer.is_file():
        return {"version": None, "since": None}
    moved = datetime.fromtimestamp(pointer.stat().st_mtime, UTC)
    return {
        "version": pointer.read_text().strip(),
        "since": moved.isoformat(timespec="seconds"),
    }


def render(status: dict[str, Any]) -> str:
    """The status as a few lines for a terminal."""
    state = "running" if status["running"] else f"stopped (last start {status['started_at']})"
    served = status["served"]
    lines = [
        f"rlmf up in {status['state_dir']}: {state}",
        f"served: {served['version']} since {served['since']}",
    ]
    for ticker, t in status["tickers"].items():
        worth = "-" if t["net_worth"] is None else f"{t['net_worth']:.2f}"
        bh = "-" if t["buy_and_hold_net_worth"] is None else f"{t['buy_and_hold_net_worth']:.2f}"
        wait = t["bars_needed_for_cycle"]
        cycle = "enough for a cycle" if wait == 0 else f"{wait} more bars before a cycle"
        lines.append(
            f"  {ticker}: {t['bars']} bars, {t['decisions']} decisions, net worth {worth} "
            f"(Buy & Hold {bh}); {cycle}"
        )
    shadow = status["shadow"]
    lines.append(
        "shadow: none"
        if shadow is None
        else f"shadow: {shadow['version']}, {shadow['bars']} of {shadow['needed']} bars"
    )
    lines.append(f"cycles: {len(status['cycles'])}")
    for c in status["cycles"]:
        lines.append(
            f"  as of {c['as_of']} ({c['data_source']}, {','.join(c['tickers'])}, bars "
            f"{c['bars_from'][:10]}..{c['bars_to'][:10]}): {c['outcome']}"
            + (f", p = {c['p_value']:.3f}" if c.get("p_value") is not None else "")
        )
    return "\n".join(lines)

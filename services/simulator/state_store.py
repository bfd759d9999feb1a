"""The simulator's account on disk: every session's book, history and pending decision, the
input offsets they reflect, written atomically once the bars' outputs are on the broker.

Why a file and not a compacted Kafka topic (docs/simulator.md says the same): the state must
match exactly the outputs that reached the broker, so it is written after each flush and
before the offsets are committed; a file replaced with `os.replace` is all-or-nothing, and a
restart reads it back in one step. A compacted topic would need a read to its end at start,
and the embedded broker may report a partition's end before its last batch (tests/helpers.py,
read_topic), so a restart could miss the newest state without knowing it.

JSON keeps floats exact (Python writes the shortest repr that reads back to the same float),
so a resumed session's numbers equal an uninterrupted one's bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from services.common.market_state import Decision, MarketState
from services.market.accounting import Fill
from services.simulator.session import TradingSession, _Pending

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


class StateFileError(ValueError):
    """A state file that cannot be read back: the simulator refuses to start on it."""


@dataclass
class SimulatorState:
    """What a restart needs to continue exactly where the last flushed bar left off."""

    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    """ticker -> `session_to_dict` of its TradingSession."""
    offsets: dict[str, int] = field(default_factory=dict)
    """"topic:partition" -> the next input offset not yet reflected in `sessions` (live mode)."""
    policy: dict[str, Any] = field(default_factory=dict)
    """The policy's own progress (policy_caller.py: the HTTP policy's call count, the random
    baseline's generator), so a restart asks and explains exactly as the first run would."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Mode-specific positions (replay: the features.ready offsets its watermarks start at)."""


def session_to_dict(session: TradingSession) -> dict[str, Any]:
    """Everything of a session that changes bar by bar; its configuration comes from settings."""
    pending = session.pending
    return {
        "cash": session.book.cash,
        "position": session.book.position,
        "benchmark_cash": session.benchmark.cash,
        "benchmark_position": session.benchmark.position,
        "closes": list(session.closes),
        "log_returns": list(session.log_returns),
        "last_time": None if session.last_time is None else session.last_time.isoformat(),
        "bench_pending": session._bench_pending,
        "pending": None if pending is None else _pending_to_dict(pending),
        "decisions": session.decisions,
    }


def restore_session(session: TradingSession, data: dict[str, Any]) -> None:
    """Put a fresh session (built from the same settings) into the saved state."""
    session.book.cash, session.book.position = data["cash"], data["position"]
    session.benchmark.cash = data["benchmark_cash"]
    session.benchmark.position = data["benchmark_position"]
    session.closes.clear()
    session.closes.extend(data["closes"])
    session.log_returns.clear()
    session.log_returns.extend(data["log_returns"])
    last = data["last_time"]
    session.last_time = None if last is None else datetime.fromisoformat(last)
    session._bench_pending = data["bench_pending"]
    pending = data["pending"]
    session.pending = None if pending is None else _pending_from_dict(pending)
    session.decisions = int(data.get("decisions", 0))  # files saved before the count: 0


def _pending_to_dict(p: _Pending) -> dict[str, Any]:
    fill = None if p.fill is None else [p.fill.quantity, p.fill.price, p.fill.cost]
    return {
        "decision_time": p.decision_time.isoformat(),
        "state": p.state.model_dump(mode="json"),
        "decision": p.decision.model_dump(mode="json"),
        "nw_before": p.nw_before,
        "volatility": p.volatility,
        "sentiment": p.sentiment,
        "fill": fill,
    }


def _pending_from_dict(d: dict[str, Any]) -> _Pending:
    fill = None if d["fill"] is None else Fill(*d["fill"])
    return _Pending(
        datetime.fromisoformat(d["decision_time"]),
        MarketState.model_validate(d["state"]),
        Decision.model_validate(d["decision"]),
        d["nw_before"],
        d["volatility"],
        d["sentiment"],
        fill,
    )


class StateFile:
    """One JSON file, replaced atomically on every save."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> SimulatorState | None:
        """The saved state, or None when there is no file yet (a first start).

        Raises:
            StateFileError: the file exists but is not a state this version wrote.
        """
        if not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") != FORMAT_VERSION:
                raise StateFileError(
                    f"{self.path}: state format {data.get('version')!r}, expected {FORMAT_VERSION}"
                )
            return SimulatorState(
                sessions=data["sessions"],
                offsets={k: int(v) for k, v in data["offsets"].items()},
                policy=data["policy"],
                extra=data.get("extra", {}),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, StateFileError):
                raise
            raise StateFileError(f"{self.path}: unreadable simulator state ({exc})") from exc

    def save(self, state: SimulatorState) -> None:
        """Write to a temporary file beside the target, fsync it, then rename over the target:
        a SIGKILL at any point leaves either the old state or the new one, never a mix."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(
            {
                "version": FORMAT_VERSION,
                "sessions": state.sessions,
                "offsets": state.offsets,
                "policy": state.policy,
                "extra": state.extra,
            },
            separators=(",", ":"),
        )
        fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename itself is durable only once the folder's entry is synced (power loss; a
    # SIGKILL alone cannot lose it, the kernel already holds the rename).
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

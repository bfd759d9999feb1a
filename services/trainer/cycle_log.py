"""The embedded trainer's record of its cycles: one JSON line per cycle, run or failed, in
work_dir/cycles.jsonl. `rlmf status` and `rlmf report` read it; it says which bars each cycle
trained on and where they came from, so a user can check that a cycle learnt from their stream."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from services.trainer.cycle import CycleResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CycleRecord:
    as_of: str
    """The feedback day the cycle ran as of: it saw no bar after it."""
    data_source: str
    """csv, kafka (the bars streamed on market.bars.v1) or synthetic."""
    tickers: list[str]
    bars_from: str
    """The first bar the cycle trained on (before it finished: the first bar it had)."""
    bars_to: str
    """The last bar the cycle saw: the end of its held-out block."""
    bars: int
    outcome: str = "running"
    """promoted, rejected, rolled_back, failed (the promotion), or error (the cycle itself)."""
    student_version: str = ""
    teacher_version: str = ""
    p_value: float | None = None
    detail: str = ""
    finished_at: str = ""

    @classmethod
    def starting(
        cls, day: date, source: str, tickers: list[str], prices: pd.DataFrame
    ) -> CycleRecord:
        """`prices`: the cycle's own ticker's bars (the first of `tickers`)."""
        index = prices.index
        return cls(
            as_of=day.isoformat(),
            data_source=source,
            tickers=list(tickers),
            bars_from=index[0].isoformat() if len(index) else "",
            bars_to=index[-1].isoformat() if len(index) else "",
            bars=len(index),
        )

    def finished(self, result: CycleResult) -> CycleRecord:
        return dataclasses.replace(
            self,
            bars_from=result.window_start.isoformat(),
            bars_to=result.eval_end.isoformat(),
            tickers=result.tickers or self.tickers,
            outcome=result.outcome or ("promoted" if result.promoted else "rejected"),
            student_version=result.student_version,
            teacher_version=result.teacher_version,
            p_value=result.sharpe_test.get("p_value"),
            detail=result.reason,
            finished_at=_now(),
        )

    def failed(self, error: BaseException) -> CycleRecord:
        return dataclasses.replace(
            self, outcome="error", detail=f"{type(error).__name__}: {error}", finished_at=_now()
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class CycleLog:
    """Appends records; reads them back oldest first (a torn last line, from a kill mid-write,
    is skipped: the cycle it describes is re-run or re-recorded)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, record: CycleRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(dataclasses.asdict(record)) + "\n")

    def add_verdict(self, verdict: dict[str, Any]) -> None:
        """A candidate's shadow verdict: its cycle's outcome from now on (see `records`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps({"verdict": verdict}) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """The cycles, oldest first; a candidate's cycle carries its shadow verdict (under
        "shadow") and the verdict's outcome (promoted, retired, failed)."""
        if not self.path.is_file():
            return []
        records: list[dict[str, Any]] = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("skipping a torn line of %s: %.80s", self.path, line)
                continue
            if "verdict" not in row:
                records.append(row)
                continue
            verdict = row["verdict"]
            for record in records:
                if record.get("student_version") == verdict["version"]:
                    record["shadow"], record["outcome"] = verdict, verdict["outcome"]
        return records

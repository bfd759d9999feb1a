"""When a training cycle is due: the one rule the trainer runs by and the demo paces by."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date


def cycle_due(days: Sequence[date], last_cycle_day: date | None, every_days: int) -> date | None:
    """The newest feedback day once it is `every_days` calendar days past the last cycle's day
    (or past the first feedback day when no cycle ran yet); None while no cycle is due.

    `days` are the feedback days seen so far, oldest first.
    """
    if not days:
        return None
    since = last_cycle_day or days[0]
    return days[-1] if (days[-1] - since).days >= every_days else None

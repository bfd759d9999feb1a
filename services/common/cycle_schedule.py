"""When a training cycle is due: the one rule the trainer runs by and the demo paces by."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date


def cycle_due(days: Sequence[date], last_cycle_day: date | None, every_days: int) -> date | None:
    """The first feedback day that is `every_days` calendar days past the last cycle's day (or
    past the first feedback day when no cycle ran yet); None while no cycle is due.

    `days` are the feedback days seen so far, oldest first. Read one record at a time, the first
    such day is the newest; after a restart that finds a backlog already logged, it is still
    the same day, so a restarted trainer runs the cycles an uninterrupted one would have.
    """
    if not days:
        return None
    since = last_cycle_day or days[0]
    return next((day for day in days if (day - since).days >= every_days), None)

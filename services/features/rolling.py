"""O(1) rolling-window statistics: the incremental state behind each market feature.

Hand-written because the streaming libraries that offer this (river, bytewax) would be a large
dependency for three numbers; pandas' rolling windows recompute over a frame per call, which is
what this replaces (bench/features.py measures the difference).
"""

from __future__ import annotations

import math
from collections import deque


class RollingMoments:
    """Mean and sample standard deviation of the last `window` values, updated in O(1).

    Running sums drift when values are added and removed for a long time, and sums of squares
    cancel badly when the values are large (volumes): so the sums are kept around a shift
    (the window's mean at the last re-anchor) and recomputed exactly once every `window`
    updates, which keeps the cost amortised O(1) and the error at one window's worth.
    """

    def __init__(self, window: int) -> None:
        if window < 2:
            raise ValueError(f"window must be at least 2, got {window}")
        self.window = window
        self.values: deque[float] = deque(maxlen=window)
        self._shift = 0.0
        self._s1 = 0.0
        self._s2 = 0.0
        self._since_anchor = 0

    def add(self, value: float) -> None:
        if len(self.values) == self.window:
            old = self.values[0] - self._shift
            self._s1 -= old
            self._s2 -= old * old
        self.values.append(value)
        d = value - self._shift
        self._s1 += d
        self._s2 += d * d
        self._since_anchor += 1
        if self._since_anchor >= self.window:
            self._reanchor()

    def _reanchor(self) -> None:
        n = len(self.values)
        self._shift = math.fsum(self.values) / n
        deltas = [v - self._shift for v in self.values]
        self._s1 = math.fsum(deltas)
        self._s2 = math.fsum(d * d for d in deltas)
        self._since_anchor = 0

    def to_state(self) -> dict[str, float | int | list[float]]:
        """Everything that resumes this window exactly (the engine's saved state)."""
        return {
            "window": self.window,
            "values": list(self.values),
            "shift": self._shift,
            "s1": self._s1,
            "s2": self._s2,
            "since_anchor": self._since_anchor,
        }

    @classmethod
    def from_state(
        cls, window: int, values: list[float], shift: float, s1: float, s2: float,
        since_anchor: int,
    ) -> RollingMoments:  # fmt: skip
        """The window `to_state` described, sums and all (no re-anchor, so no drift)."""
        moments = cls(window)
        moments.values.extend(values)
        moments._shift, moments._s1, moments._s2 = shift, s1, s2
        moments._since_anchor = since_anchor
        return moments

    @property
    def full(self) -> bool:
        return len(self.values) == self.window

    @property
    def mean(self) -> float:
        return self._shift + self._s1 / len(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1), as pandas' rolling std."""
        n = len(self.values)
        if n < 2:
            return 0.0
        var = (self._s2 - self._s1 * self._s1 / n) / (n - 1)
        return math.sqrt(var) if var > 0 else 0.0


class WilderAverage:
    """An exponential average with alpha = 1/period, seeded by the first value: Wilder's RSI
    smoothing as pandas computes `ewm(alpha=1/period, adjust=False)`."""

    def __init__(self, period: int) -> None:
        self.alpha = 1.0 / period
        self.value = 0.0
        self.count = 0

    def add(self, x: float) -> None:
        self.value = x if self.count == 0 else self.value + self.alpha * (x - self.value)
        self.count += 1

"""A quantile of F's recent latencies, which sets how long a coding group waits for real members.

A group that waits about as long as F usually takes closes, in the common case, after its lone member was already
answered: it then needs no parity at all. Only members still unanswered by then (the stragglers) get a parity,
completed with fillers; under load, groups fill with real members long before. So the parity's cost follows the
load and the stragglers instead of doubling F's work at moderate load, where closing groups after a fixed few
milliseconds gave almost every request a parity of its own.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class LatencyQuantile:
    """The ``quantile`` of the last ``window`` latencies (None before the first): recomputed at each of the first
    ``every`` samples, so it is usable from the start, then every ``every`` samples."""

    def __init__(self, quantile: float, window: int = 256, every: int = 32) -> None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        self._quantile = quantile
        self._samples: deque[float] = deque(maxlen=window)
        self._every = every
        self._count = 0
        self.value: float | None = None

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._count += 1
        if self._count <= self._every or self._count % self._every == 0:
            self.value = float(np.quantile(np.fromiter(self._samples, dtype=np.float64), self._quantile))

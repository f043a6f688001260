"""A circuit breaker for one parity model: after a failure, no calls to it for a cooldown that doubles while failures
repeat, and resets after a success.

A call to a dead Python-backend instance can take Triton about a second to fail, and holds other calls meanwhile, so
probing a dead parity model often would cost F's own answers. There is one breaker per parity model: with r > 1, a
dead one leaves the others working, and the code decodes from the parities that still answer.
"""

from __future__ import annotations

MAX_DOUBLINGS = 5
"""The cooldown grows to at most 2**5 = 32 times ``parity_cooldown_ms``."""


class Breaker:
    """Open (calls refused) until ``down_until`` after a failure; times are the event loop's clock, in seconds."""

    def __init__(self, cooldown_s: float) -> None:
        self._cooldown_s = cooldown_s
        self.down_until = float("-inf")
        self.failures_in_row = 0

    def is_open(self, now: float) -> bool:
        return now < self.down_until

    def failed(self, now: float) -> float | None:
        """Records a failure; returns the cooldown it starts, or None when one is already running (calls sent before
        it opened may still fail, and must not extend it)."""
        if self.is_open(now):
            return None
        self.failures_in_row += 1
        cooldown = self._cooldown_s * 2 ** min(self.failures_in_row - 1, MAX_DOUBLINGS)
        self.down_until = now + cooldown
        return cooldown

    def succeeded(self) -> None:
        self.failures_in_row = 0

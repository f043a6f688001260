"""Which late members get a parity computed on demand: stragglers always, merely late members within a budget.

A member is *late* once F had ``decode_after`` to answer it. Late has two causes that call for opposite actions:

- its F call is stuck (a paused, starved or dying instance): other F calls that started after it come back first.
  A parity is what rebuilds it, and it is cheap next to the wait;
- the whole box is busy (a burst of arrivals, every instance behind): calls come back in about the order they
  left, all late. A parity then competes with F for the same CPUs and makes everyone later still, which makes more
  members late: measured at 100 requests/s on two cores, unbounded on-demand parities kept the parity instance busy
  for hundreds of milliseconds at a time and pushed the no-fault p99 from 32 ms (equal resources) to 227 ms.

So a member whose F call was *overtaken* by ``straggler_overtakes`` answers to later requests is a straggler: its
group closes at once (with fillers if need be), its parity is sent and its rebuild allowed without waiting for
``decode_after`` (a quantile of recent latencies, which a burst inflates just when stragglers matter most). Any other
late member gets a parity only while ``ParityBudget`` has a token, earned at
``parity_budget`` tokens per request (and ``MIN_TOKENS_PER_S`` per second) up to ``parity_burst`` (a token bucket, as
gRPC's retry throttling and Envoy's retry budgets bound retries); one that finds the bucket empty is tried again when
it will have a token. At low load the budget is rarely empty, so a paused member is rebuilt as soon as it is
late; under a burst the budget runs dry and only stragglers cost parity work.
"""

from __future__ import annotations

MIN_TOKENS_PER_S = 1.0
"""The bucket also fills by time at this rate: at very low load a stuck member may have no later request to earn
its token (nor to overtake it), yet a parity a second costs under 1% of one CPU with an F of a few milliseconds."""


class ParityBudget:
    """A token bucket credited per request (so the share of parity work is the same at every rate) and, slowly,
    per second (``MIN_TOKENS_PER_S``). Times are the event loop's clock, in seconds."""

    def __init__(self, per_request: float, burst: float, now: float) -> None:
        self._per_request = per_request
        self._burst = burst
        self._updated = now
        self.tokens = burst

    def credit(self) -> None:
        """One more request arrived."""
        self.tokens = min(self._burst, self.tokens + self._per_request)

    def take(self, now: float) -> bool:
        """Spends a token if there is one."""
        self._refill(now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def seconds_until_token(self, now: float) -> float:
        """How long until a token is there, if no request arrives meanwhile."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / MIN_TOKENS_PER_S)

    def _refill(self, now: float) -> None:
        self.tokens = min(self._burst, self.tokens + (now - self._updated) * MIN_TOKENS_PER_S)
        self._updated = now

"""The parity models' circuit breaker on its own: cooldowns double while failures repeat, up to a cap, and reset."""

from __future__ import annotations

import pytest

from parm.backend.orchestrator.breaker import MAX_DOUBLINGS, Breaker


def test_cooldown_doubles_while_failures_repeat_and_is_capped() -> None:
    breaker = Breaker(0.1)
    now = 0.0
    cooldowns = []
    for _ in range(MAX_DOUBLINGS + 3):
        cooldowns.append(breaker.failed(now))
        assert breaker.is_open(now) and breaker.failed(now) is None, "a failure inside the cooldown does not extend it"
        now = breaker.down_until
        assert not breaker.is_open(now)
    assert cooldowns[:3] == pytest.approx([0.1, 0.2, 0.4])
    assert cooldowns[-1] == pytest.approx(0.1 * 2**MAX_DOUBLINGS) == cooldowns[-2]


def test_a_success_resets_the_doubling() -> None:
    breaker = Breaker(0.1)
    breaker.failed(0.0)
    breaker.failed(1.0)
    breaker.succeeded()
    assert breaker.failed(2.0) == pytest.approx(0.1)

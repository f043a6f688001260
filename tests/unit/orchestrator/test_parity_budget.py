"""On-demand parity under load: stragglers (F calls overtaken by later answers) always get their parity; members
that are merely late (a busy box, calls coming back in order) only within the parity budget, and only when the
parity could rebuild them."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from parm.backend.orchestrator import AnswerSource
from parm.backend.orchestrator.budget import MIN_TOKENS_PER_S, ParityBudget
from parm.backend.orchestrator.groups import ParityReason

from .helpers import Harness, LinearF, linear_f, run_checked


def test_the_budget_earns_a_share_of_a_parity_per_request_and_slowly_by_time_up_to_its_burst():
    budget = ParityBudget(per_request=0.25, burst=2.0, now=0.0)
    assert budget.take(0.0) and budget.take(0.0) and not budget.take(0.0), "it starts full"
    for _ in range(3):
        budget.credit()
    assert not budget.take(0.0), "three requests earn 0.75 of a parity"
    budget.credit()
    assert budget.take(0.0)
    assert budget.seconds_until_token(0.0) == pytest.approx(1.0 / MIN_TOKENS_PER_S)
    assert not budget.take(0.5 / MIN_TOKENS_PER_S) and budget.take(1.0 / MIN_TOKENS_PER_S), "time fills it too"
    for _ in range(100):
        budget.credit()
    assert budget.tokens == 2.0


def _harness(**config) -> Harness:
    config.setdefault("decode_after_ms", 20.0)
    config.setdefault("decode_after_quantile", 0.0)
    config.setdefault("fill_timeout_ms", 1.0)
    config.setdefault("fill_timeout_quantile", 0.0)
    config.setdefault("request_timeout_ms", 2000.0)
    return Harness(f=LinearF(), **config)


def test_a_stuck_call_overtaken_by_later_answers_gets_its_parity_with_no_budget_left():
    async def scenario():
        h = _harness(parity_budget=0.0, parity_burst=1.0, straggler_overtakes=2)
        spend = h.f.hold[0.05] = asyncio.Event()
        first = [h.submit(0.05), h.submit(0.06)]  # a late member, overtaken once: the one token buys its parity
        assert (await h.answer(first[0])).source is AnswerSource.REBUILT
        assert h.dispatcher.stats.parities[ParityReason.BUDGET] == 1
        spend.set()
        await h.answer(first[1])
        gate = h.f.hold[0.1] = asyncio.Event()
        stuck, partner = h.submit(0.1), h.submit(0.2)
        assert (await h.answer(partner)).source is AnswerSource.ORIGINAL
        await asyncio.sleep(0.05)  # late now, overtaken once: no parity yet
        assert h.parity.calls == 1 and h.dispatcher.stats.parities_withheld == 1
        later = h.submit(0.3)
        assert (await h.answer(later)).source is AnswerSource.ORIGINAL  # the second overtake
        answer = await h.answer(stuck)
        assert answer.source is AnswerSource.REBUILT
        np.testing.assert_allclose(answer.outputs["y"], linear_f(h.queries[stuck]["x"]), rtol=1e-5, atol=1e-5)
        assert h.dispatcher.stats.parities[ParityReason.STRAGGLER] == 1
        gate.set()
        await h.settle()
        h.assert_exactly_once()

    run_checked(scenario())


def test_late_calls_that_come_back_in_order_cost_no_parity():
    """A busy box: every call of a burst is late, none is overtaken, and each group has both members out, so a
    parity could rebuild nothing yet: none is computed, whatever the budget."""

    async def scenario():
        h = _harness()
        h.f.paused = asyncio.Event()  # every call waits, as behind a long queue
        requests = [h.submit(round(0.1 * (i + 1), 6)) for i in range(6)]
        await asyncio.sleep(0.06)
        assert h.parity.calls == 0
        assert h.dispatcher.stats.parities_withheld == 3
        h.f.paused.set()
        for request in requests:  # released, F's answers race on its threads: a late partner may be rebuilt now
            answer = await h.answer(request)
            np.testing.assert_allclose(answer.outputs["y"], linear_f(h.queries[request]["x"]), rtol=1e-5, atol=1e-5)
        await h.settle()
        h.assert_exactly_once()

    run_checked(scenario())


def test_with_budget_to_spare_a_late_member_is_rebuilt_as_soon_as_it_is_late():
    async def scenario():
        h = _harness()
        gate = h.f.hold[0.1] = asyncio.Event()
        started = asyncio.get_running_loop().time()
        stuck, partner = h.submit(0.1), h.submit(0.2)
        answer = await h.answer(stuck)
        elapsed = asyncio.get_running_loop().time() - started
        assert answer.source is AnswerSource.REBUILT and 0.02 <= elapsed < 0.2
        assert h.dispatcher.stats.parities[ParityReason.BUDGET] == 1
        ((wait, parity, complete),) = h.dispatcher.stats.rebuild_phases  # its time, phase by phase
        assert wait >= 0.02 and parity >= 0 and complete >= 0, "the parity left once the member was late"
        assert wait + parity + complete <= elapsed
        assert (await h.answer(partner)).source is AnswerSource.ORIGINAL
        gate.set()
        await h.settle()
        h.assert_exactly_once()

    run_checked(scenario())


def test_a_straggler_is_rebuilt_long_before_an_inflated_decode_wait():
    """After a burst, F's latency quantile (the decode wait) is large; a call overtaken by later answers is known
    stuck, and is rebuilt without waiting for it. Its lone group is closed with a filler at once."""

    async def scenario():
        h = _harness(decode_after_ms=5000.0, fill_timeout_ms=5000.0, request_timeout_ms=8000.0)
        await h.answer(h.submit(0.05))  # a known answer: a filler for the lone straggler's group
        await h.settle(0.01)
        gate = h.f.hold[0.1] = asyncio.Event()
        started = asyncio.get_running_loop().time()
        stuck = h.submit(0.1)
        await h.settle(0.01)
        for marker in (0.2, 0.3):  # later requests, answered first: two overtakes
            await h.answer(h.submit(marker))
        answer = await h.answer(stuck)
        assert answer.source is AnswerSource.REBUILT
        assert asyncio.get_running_loop().time() - started < 1.0
        np.testing.assert_allclose(answer.outputs["y"], linear_f(h.queries[stuck]["x"]), rtol=1e-5, atol=1e-5)
        assert h.dispatcher.stats.parities[ParityReason.STRAGGLER] == 1
        gate.set()
        await h.settle()
        h.assert_exactly_once()

    run_checked(scenario())

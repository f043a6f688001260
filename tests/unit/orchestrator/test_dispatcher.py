"""The orchestrator core against real in-process targets: answers, rebuilds, deadlines, fillers, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from parm.backend.orchestrator import AnswerSource, ParityPolicy
from parm.backend.orchestrator.groups import ParityReason
from parm.backend.orchestrator.workers import local_pools

from .helpers import FailingTarget, Harness, LinearF, SumEncoder, linear_f, make_dispatcher, query, run_checked


@pytest.fixture(autouse=True, params=["code models", "inline code"])
def code_path(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every scenario runs twice: encoding and decoding through the encoder and decoder models, and in process
    (``code_weights``), where those models must never be called."""
    Harness.inline = request.param == "inline code"
    yield
    Harness.inline = False


def run(coroutine):
    return run_checked(coroutine)


def test_answers_are_f_own_outputs_when_nothing_is_slow():
    async def scenario():
        h = Harness(decode_after_ms=50.0)
        requests = [h.submit(m) for m in (0.1, 0.2, 0.3, 0.4, 0.5)]
        answers = [await h.answer(r) for r in requests]
        await h.settle()
        for request, answer in zip(requests, answers, strict=True):
            assert answer.source is AnswerSource.ORIGINAL
            np.testing.assert_array_equal(answer.outputs["y"], linear_f(h.queries[request]["x"]))
        h.assert_exactly_once()
        assert h.dispatcher.in_flight == 0

    run(scenario())


def test_paused_member_is_rebuilt_exactly_for_linear_f():
    async def scenario():
        h = Harness()
        gate = h.f.hold[0.1] = asyncio.Event()
        slow, fast = h.submit(0.1), h.submit(0.2)
        answer = await h.answer(slow)
        assert answer.source is AnswerSource.REBUILT
        np.testing.assert_allclose(answer.outputs["y"], linear_f(h.queries[slow]["x"]), rtol=1e-5, atol=1e-5)
        assert (await h.answer(fast)).source is AnswerSource.ORIGINAL
        gate.set()
        await h.settle()
        h.assert_exactly_once()
        assert h.dispatcher.stats.fidelity_samples == 1
        assert h.dispatcher.stats.fidelity_argmax_agree == 1

    run(scenario())


def test_batched_requests_are_coded_row_by_row_across_requests():
    async def scenario():
        h = Harness()
        h.f.hold[0.3] = asyncio.Event()
        slow, fast = h.submit(0.3, batch=4), h.submit(0.4, batch=4)
        answer = await h.answer(slow)
        assert answer.source is AnswerSource.REBUILT
        assert answer.outputs["y"].shape == (4, 4)
        np.testing.assert_allclose(answer.outputs["y"], linear_f(h.queries[slow]["x"]), rtol=1e-5, atol=1e-5)
        assert (await h.answer(fast)).source is AnswerSource.ORIGINAL

    run(scenario())


def test_requests_of_different_batch_sizes_never_share_a_group():
    async def scenario():
        h = Harness(fill_timeout_ms=1000.0)
        h.f.hold[0.5] = asyncio.Event()
        slow = h.submit(0.5, batch=2)
        other = h.submit(0.6, batch=3)
        assert (await h.answer(other)).source is AnswerSource.ORIGINAL
        await h.settle()
        assert not h.done[slow].is_set(), "a group of mismatched shapes would have decoded garbage"
        partner = h.submit(0.7, batch=2)
        assert (await h.answer(slow)).source is AnswerSource.REBUILT
        assert (await h.answer(partner)).source is AnswerSource.ORIGINAL

    run(scenario())


def test_decode_after_gives_f_time_to_answer_itself():
    async def scenario():
        h = Harness(decode_after_ms=200.0, request_timeout_ms=1000.0)
        gate = h.f.hold[0.1] = asyncio.Event()
        slow, _ = h.submit(0.1), h.submit(0.2)
        await asyncio.sleep(0.05)
        gate.set()
        assert (await h.answer(slow)).source is AnswerSource.ORIGINAL
        assert h.decoder.calls == 0

    run(scenario())


def test_decode_after_rebuilds_once_the_wait_is_over():
    async def scenario():
        h = Harness(decode_after_ms=30.0)
        h.f.hold[0.1] = asyncio.Event()
        loop = asyncio.get_running_loop()
        start = loop.time()
        slow, _ = h.submit(0.1), h.submit(0.2)
        answer = await h.answer(slow)
        assert answer.source is AnswerSource.REBUILT
        assert loop.time() - start >= 0.03

    run(scenario())


def test_unfilled_group_is_completed_with_a_known_filler():
    async def scenario():
        h = Harness(fill_timeout_ms=2.0)
        warm = h.submit(0.9)
        assert (await h.answer(warm)).source is AnswerSource.ORIGINAL
        await asyncio.sleep(0.01)
        h.f.hold[0.1] = asyncio.Event()
        lonely = h.submit(0.1)
        answer = await h.answer(lonely)
        assert answer.source is AnswerSource.REBUILT
        np.testing.assert_allclose(answer.outputs["y"], linear_f(h.queries[lonely]["x"]), rtol=1e-5, atol=1e-5)
        assert h.dispatcher.stats.groups_filled == 1

    run(scenario())


def test_group_whose_members_all_answered_sends_no_parity():
    async def scenario():
        h = Harness(fill_timeout_ms=20.0)
        first = h.submit(0.9)
        await h.answer(first)
        await asyncio.sleep(0.04)
        assert h.parity.calls == 0
        assert h.dispatcher.stats.groups_unneeded == 1

    run(scenario())


def test_cold_unfilled_group_without_filler_errors_at_the_deadline():
    async def scenario():
        h = Harness(fill_timeout_ms=2.0, request_timeout_ms=80.0)
        h.f.hold[0.1] = asyncio.Event()
        lonely = h.submit(0.1)
        answer = await h.answer(lonely)
        assert answer.source is AnswerSource.ERROR
        assert "request_timeout_ms=80" in answer.error
        assert "without a parity" in answer.error

    run(scenario())


def test_two_slow_members_exceed_the_code_and_both_get_errors():
    async def scenario():
        h = Harness(request_timeout_ms=60.0)
        h.f.hold[0.1] = asyncio.Event()
        h.f.hold[0.2] = asyncio.Event()
        a, b = h.submit(0.1), h.submit(0.2)
        for request in (a, b):
            answer = await h.answer(request)
            assert answer.source is AnswerSource.ERROR
            assert "F did not answer" in answer.error
        assert h.dispatcher.stats.deadline_misses == 2
        h.f.hold[0.1].set()
        h.f.hold[0.2].set()
        await h.settle()
        h.assert_exactly_once()

    run(scenario())


def test_failed_member_is_rebuilt_without_waiting_for_decode_after():
    async def scenario():
        h = Harness(decode_after_ms=300.0, request_timeout_ms=1000.0)
        h.f.fail.add(0.1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        failed, _ = h.submit(0.1), h.submit(0.2)
        answer = await h.answer(failed)
        assert answer.source is AnswerSource.REBUILT
        assert loop.time() - start < 0.3

    run(scenario())


def test_failed_member_with_failed_parity_gets_a_clear_error_at_once():
    async def scenario():
        h = Harness(parity=FailingTarget("f_parity"), request_timeout_ms=5000.0)
        h.f.fail.add(0.1)
        failed, other = h.submit(0.1), h.submit(0.2)
        answer = await h.answer(failed, timeout=1.0)
        assert answer.source is AnswerSource.ERROR
        assert "'f'" in answer.error and "'f_parity'" in answer.error
        assert (await h.answer(other)).source is AnswerSource.ORIGINAL

    run(scenario())


def test_non_finite_query_is_answered_uncoded_and_never_poisons_a_partner():
    async def scenario():
        h = Harness()
        bad = query(0.1)
        bad["x"][0, 1, 1] = np.nan
        h.queries[0] = bad
        h.replies[0] = []
        h.done[0] = asyncio.Event()
        h.dispatcher.submit(bad, lambda a: (h.replies[0].append(a), h.done[0].set()))
        h.f.hold[0.2] = asyncio.Event()
        h.queries[1] = None
        partner = h.submit(0.2)
        partner2 = h.submit(0.3)
        assert (await h.answer(0)).source is AnswerSource.ORIGINAL
        answer = await h.answer(partner)
        assert answer.source is AnswerSource.REBUILT
        assert np.isfinite(answer.outputs["y"]).all()
        assert (await h.answer(partner2)).source is AnswerSource.ORIGINAL
        assert h.dispatcher.stats.uncoded_requests == 1

    run(scenario())


def test_close_answers_everything_in_flight_and_refuses_new_work():
    async def scenario():
        h = Harness(request_timeout_ms=5000.0)
        h.f.hold[0.1] = asyncio.Event()
        h.f.hold[0.2] = asyncio.Event()
        a, b = h.submit(0.1), h.submit(0.2)
        await asyncio.sleep(0.01)
        await h.dispatcher.close()
        await h.dispatcher.close()
        late = h.submit(0.3)
        for request in (a, b, late):
            answer = await h.answer(request)
            assert answer.source is AnswerSource.ERROR
            assert "shutting down" in answer.error
        h.assert_exactly_once()

    run(scenario())


def test_a_reply_callback_that_raises_does_not_break_the_group():
    async def scenario():
        h = Harness(decode_after_ms=50.0)  # F's answer, not a parity racing it, is what the partner must get
        h.dispatcher.submit(query(0.1), lambda answer: 1 / 0)
        other = h.submit(0.2)
        assert (await h.answer(other)).source is AnswerSource.ORIGINAL
        await h.settle()
        assert h.dispatcher.in_flight == 0

    run(scenario())


@pytest.mark.parametrize("targets", [1, 2, 3])
def test_members_of_a_group_go_to_distinct_f_targets_when_there_are_enough(targets):
    async def scenario():
        fs = [LinearF(f"f{i}") for i in range(targets)]
        h = Harness(f_models=tuple(f.name for f in fs))
        pools = local_pools(h.config, fs, [h.parity])
        h.dispatcher = make_dispatcher(h.config, *pools, SumEncoder(), h.decoder)
        for request in [h.submit(m) for m in (0.1, 0.2)]:
            await h.answer(request)
        assert sum(f.calls for f in fs) == 2
        stats = h.dispatcher.stats
        if targets >= 2:
            assert sorted(f.calls for f in fs)[-2:] == [1, 1], "one member per target"
            assert (stats.groups_spread, stats.groups_shared) == (1, 0)
        else:
            assert (stats.groups_spread, stats.groups_shared) == (0, 1)

    run(scenario())


def test_beyond_max_in_flight_requests_are_shed_with_a_clear_error_and_others_still_served():
    async def scenario():
        h = Harness(max_in_flight=3, request_timeout_ms=2000.0, decode_after_ms=50.0)  # F answers, not a parity
        gates = {m: asyncio.Event() for m in (0.1, 0.2, 0.3)}
        h.f.hold.update(gates)
        held = [h.submit(m) for m in (0.1, 0.2, 0.3)]
        shed = h.submit(0.4)
        answer = await h.answer(shed)
        assert answer.source is AnswerSource.ERROR
        assert "overloaded" in answer.error and "max_in_flight=3" in answer.error
        for gate in gates.values():
            gate.set()
        for request in held:
            assert (await h.answer(request)).source is AnswerSource.ORIGINAL
        await h.settle()  # the loop settles an answer sent from a worker thread on its next turn
        assert (await h.answer(h.submit(0.5))).source is AnswerSource.ORIGINAL
        assert h.dispatcher.stats.shed_requests == 1
        h.assert_exactly_once()

    run(scenario())


def test_stats_count_groups_members_and_timings():
    async def scenario():
        h = Harness()
        h.f.hold[0.1] = asyncio.Event()
        slow, _ = h.submit(0.1), h.submit(0.2)
        await h.answer(slow)
        stats = h.dispatcher.stats
        assert stats.groups_full == 1
        assert (stats.group_members_real, stats.group_members_filler) == (2, 0)
        encode, decode = stats.drain_timings()
        assert len(encode) == 1 and len(decode) == 1
        assert stats.drain_timings() == ([], [])
        await h.settle()
        assert h.dispatcher.in_flight_groups == 0
        h.f.hold[0.3] = asyncio.Event()
        h.f.hold[0.4] = asyncio.Event()
        waiting = [h.submit(0.3), h.submit(0.4)]
        await h.settle()
        assert (h.dispatcher.in_flight_groups, h.dispatcher.in_flight) == (1, 2)
        h.f.hold[0.3].set()
        h.f.hold[0.4].set()
        for request in waiting:
            await h.answer(request)
        await h.settle()
        assert h.dispatcher.in_flight_groups == 0

    run(scenario())


def test_a_failed_parity_model_is_left_alone_for_its_cooldown():
    async def scenario():
        parity = LinearF("f_parity")
        parity.fail.add(round(0.1 + 0.2, 6))  # the parity query of the first group is the sum of its members
        h = Harness(parity=parity, parity_cooldown_ms=150.0, request_timeout_ms=100.0)
        first = h.f.hold[0.2] = asyncio.Event()  # late once its partner answered: its parity is computed, and fails
        requests = (h.submit(0.1), h.submit(0.2))
        assert (await h.answer(requests[0])).source is AnswerSource.ORIGINAL
        await h.settle(0.02)
        assert h.dispatcher.stats.parity_failures == 1
        first.set()
        assert (await h.answer(requests[1])).source is AnswerSource.ORIGINAL
        calls = parity.calls
        h.f.hold[0.3] = asyncio.Event()
        during = [h.submit(0.3), h.submit(0.4)]
        answer = await h.answer(during[0])
        assert answer.source is AnswerSource.ERROR
        assert "parity_cooldown_ms=150" in answer.error
        assert parity.calls == calls, "no parity is sent while the breaker is open"
        await asyncio.sleep(0.2)
        h.f.hold[0.5] = asyncio.Event()
        after = [h.submit(0.5), h.submit(0.6)]
        assert (await h.answer(after[0])).source is AnswerSource.REBUILT
        h.f.hold[0.3].set()

    run(scenario())


def test_parity_computations_in_flight_are_bounded_and_a_straggler_waits_for_a_free_slot():
    async def scenario():
        parity = LinearF("f_parity")
        parity_gate = parity.hold[round(0.1 + 0.2, 6)] = asyncio.Event()
        h = Harness(parity=parity, max_parity_in_flight=1, straggler_overtakes=1, request_timeout_ms=1000.0)
        h.f.hold[0.2] = h.f.hold[0.3] = asyncio.Event()
        first = [h.submit(0.1), h.submit(0.2)]
        await h.answer(first[0])  # 0.2 is now late and alone: its group's parity is sent, and held
        await h.settle(0.02)
        second = [h.submit(0.3), h.submit(0.4)]
        await h.answer(second[1])  # overtakes 0.3: a straggler, whose parity waits for the one slot
        await h.settle(0.02)
        assert parity.calls == 1
        parity_gate.set()
        assert (await h.answer(first[1])).source is AnswerSource.REBUILT
        assert (await h.answer(second[0])).source is AnswerSource.REBUILT
        assert parity.calls == 2
        assert h.dispatcher.stats.parities[ParityReason.STRAGGLER] == 1
        assert h.dispatcher.stats.groups_unprotected == 0
        h.f.hold[0.2].set()
        await h.settle(0.02)
        h.assert_exactly_once()

    run(scenario())


def test_the_fill_timeout_follows_f_latency_so_lone_members_answered_in_time_cost_no_parity():
    async def scenario():
        f = LinearF(delay=0.04)
        h = Harness(f=f, fill_timeout_ms=1.0, fill_timeout_quantile=0.9, decode_after_ms=300.0)
        assert h.dispatcher.fill_timeout == 0.001
        for index in range(32):
            await h.answer(h.submit(round(0.001 * (index + 1), 6)))
        assert 0.04 <= h.dispatcher.fill_timeout < 0.4
        f.delay = 0.005  # F now answers well within the learned fill timeout
        await h.settle(0.5)  # the last learning member's group closes before the lone members come
        parity_calls = h.parity.calls
        for index in range(5):
            await h.answer(h.submit(round(0.5 + 0.001 * index, 6)))
            await h.settle(0.06)
        assert h.parity.calls == parity_calls, "lone members answered within the fill timeout need no parity"
        assert h.dispatcher.stats.groups_unneeded >= 5

    run(scenario())


def test_a_member_that_is_not_slow_keeps_f_answer_while_a_stuck_one_is_rebuilt():
    """With decode_after_quantile, a rebuilt answer replaces F's only once F took longer than it usually does: a
    parity that happens to finish first no longer races a healthy F call."""

    async def scenario():
        f = LinearF(delay=0.03)
        parity = LinearF("f_parity")  # answers at once: faster than F every time
        # A budget of one parity per request: this is about the decode wait, not about the budget, which the
        # learning phase's late members would otherwise spend.
        h = Harness(f=f, parity=parity, decode_after_quantile=0.9, fill_timeout_quantile=0.0, parity_budget=1.0)
        assert h.dispatcher.decode_after == 0.0
        for index in range(16):  # pairs fill groups; F's latency is learned meanwhile
            pair = [h.submit(round(0.001 * (2 * index + 1), 6)), h.submit(round(0.001 * (2 * index + 2), 6))]
            for request in pair:
                await h.answer(request)
        assert 0.03 <= h.dispatcher.decode_after < 0.5  # F takes 30 ms, more on a busy machine
        await h.settle()
        learned = h.dispatcher.stats.answers[AnswerSource.ORIGINAL]
        gate = f.hold[0.9] = asyncio.Event()
        healthy, stuck = h.submit(0.8), h.submit(0.9)
        assert (await h.answer(healthy)).source is AnswerSource.ORIGINAL
        answer = await h.answer(stuck)
        assert answer.source is AnswerSource.REBUILT
        np.testing.assert_allclose(answer.outputs["y"], linear_f(h.queries[stuck]["x"]), rtol=1e-5, atol=1e-5)
        gate.set()
        await h.settle()
        h.assert_exactly_once()
        assert h.dispatcher.stats.answers[AnswerSource.ORIGINAL] == learned + 1

    run(scenario())


async def _learn_f_latency(h: Harness, pairs: int = 12) -> None:
    for index in range(pairs):
        pair = [h.submit(round(0.001 * (2 * index + 1), 6)), h.submit(round(0.001 * (2 * index + 2), 6))]
        for request in pair:
            await h.answer(request)
    await h.settle(0.2)


@pytest.mark.parametrize("policy", [ParityPolicy.ON_DEMAND, ParityPolicy.EAGER])
def test_on_demand_parity_is_computed_only_for_groups_with_a_late_member(policy):
    async def scenario():
        f = LinearF(delay=0.03)
        h = Harness(f=f, parity_policy=policy, fill_timeout_quantile=0.0, request_timeout_ms=2000.0, parity_budget=1.0)
        await _learn_f_latency(h)
        f.delay = 0.01  # well within F's learned p90: this pair is not late
        calls = h.parity.calls
        healthy = [h.submit(0.81), h.submit(0.82)]
        for request in healthy:
            assert (await h.answer(request)).source is AnswerSource.ORIGINAL
        await h.settle(0.1)
        if policy is ParityPolicy.ON_DEMAND:
            assert h.parity.calls == calls, "a group whose members answered in time costs no parity"
        else:
            assert h.parity.calls == calls + 1, "ParM computes every closed group's parity"
        gate = f.hold[0.9] = asyncio.Event()
        started = asyncio.get_running_loop().time()
        stuck, partner = h.submit(0.9), h.submit(0.91)
        answer = await h.answer(stuck)
        assert answer.source is AnswerSource.REBUILT
        assert asyncio.get_running_loop().time() - started >= h.config.decode_after_ms / 1000
        np.testing.assert_allclose(answer.outputs["y"], linear_f(h.queries[stuck]["x"]), rtol=1e-5, atol=1e-5)
        assert (await h.answer(partner)).source is AnswerSource.ORIGINAL
        gate.set()
        await h.settle()
        h.assert_exactly_once()

    run(scenario())


def test_on_demand_parity_is_sent_at_once_when_an_f_call_fails():
    async def scenario():
        f = LinearF(delay=0.05)
        h = Harness(f=f, fill_timeout_quantile=0.0, request_timeout_ms=2000.0)
        await _learn_f_latency(h, pairs=4)
        assert h.dispatcher.decode_after >= 0.05
        f.fail.add(0.7)
        f.delay = 0.0  # the failure comes at once, long before the decode wait
        started = asyncio.get_running_loop().time()
        failed, partner = h.submit(0.7), h.submit(0.71)
        answer = await h.answer(failed)
        assert answer.source is AnswerSource.REBUILT
        assert asyncio.get_running_loop().time() - started < 0.03 < h.dispatcher.decode_after
        assert (await h.answer(partner)).source is AnswerSource.ORIGINAL
        await h.settle()
        h.assert_exactly_once()

    run(scenario())


def test_the_parity_cooldown_doubles_while_failures_repeat_and_a_success_readmits_the_model():
    async def scenario():
        parity = LinearF("f_parity")
        h = Harness(parity=parity, parity_cooldown_ms=100.0, parity_policy=ParityPolicy.EAGER)
        breaker = h.dispatcher.parity_workers.workers[0].health
        loop = asyncio.get_running_loop()
        parity.fail.update({round(0.1 + 0.2, 6), round(0.3 + 0.4, 6)})
        for pair in ((0.1, 0.2), (0.3, 0.4)):
            opened = loop.time()
            for request in (h.submit(pair[0]), h.submit(pair[1])):
                await h.answer(request)
            await h.settle(0.01)
            cooldown = breaker.down_until - opened
            await asyncio.sleep(cooldown + 0.01)
            if pair == (0.1, 0.2):
                assert 0.1 <= cooldown < 0.15
            else:
                assert 0.2 <= cooldown < 0.25, "a second failure in a row doubles the cooldown"
        for request in (h.submit(0.5), h.submit(0.6)):
            await h.answer(request)
        await h.settle(0.02)
        assert not breaker.ejected and breaker.ejections == 2 and h.dispatcher.stats.parity_failures == 2

    run(scenario())

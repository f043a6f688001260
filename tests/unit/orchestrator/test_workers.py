"""Workers on their own: health (ejection, doubling cooldowns, probes, readmission), placement as a property, DNS
re-resolution; and through the dispatcher: an ejected worker's calls are rebuilt, a group never shares a domain."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parm.backend.orchestrator import AnswerSource
from parm.backend.orchestrator.groups import ParityReason
from parm.backend.orchestrator.workers import (
    MAX_DOUBLINGS,
    PROBE_FAILURES_TO_EJECT,
    Health,
    Worker,
    WorkerMonitor,
    WorkerPool,
    WorkerRole,
    resolve,
)

from .helpers import Harness, LinearF, SubtractionDecoder, SumEncoder, linear_f, make_dispatcher, run_checked


def test_an_ejection_lasts_a_cooldown_that_doubles_while_ejections_repeat_and_is_capped() -> None:
    health = Health(0.1, readmit_probes=0)
    cooldowns = []
    now = 0.0
    for _ in range(MAX_DOUBLINGS + 3):
        cooldown = health.eject(now)
        assert cooldown is not None
        cooldowns.append(cooldown)
        assert not health.available(now + cooldown - 1e-6)
        now += cooldown
        assert health.available(now), "without a prober, on trial once the cooldown is over"
        health.succeeded(now)
    assert cooldowns[:3] == pytest.approx([0.1, 0.2, 0.4])
    assert max(cooldowns) == pytest.approx(0.1 * 2**MAX_DOUBLINGS)


def test_calls_failing_during_an_ejection_do_not_extend_it() -> None:
    health = Health(1.0, readmit_probes=0)
    assert health.eject(0.0) == 1.0
    assert health.eject(0.5) is None
    assert health.down_until == 1.0


def test_the_cooldown_resets_once_a_worker_served_a_cooldowns_worth_without_ejection() -> None:
    health = Health(0.1, readmit_probes=0)
    health.eject(0.0)
    health.succeeded(0.1)
    assert health.eject(0.15) == pytest.approx(0.2), "ejected again soon: doubled"
    health.succeeded(0.35)
    assert health.eject(10.0) == pytest.approx(0.1), "a long good spell resets it"


def test_a_prober_ejects_after_failed_probes_in_a_row_and_readmits_after_good_ones_past_the_cooldown() -> None:
    health = Health(1.0, readmit_probes=3)
    for _ in range(PROBE_FAILURES_TO_EJECT - 1):
        assert health.probed(False, 0.0) is None
    assert health.probed(True, 0.0) is None, "one good probe resets the count"
    assert [health.probed(False, 0.1) for _ in range(PROBE_FAILURES_TO_EJECT)][-1] == "eject"
    health.eject(0.1)
    assert not health.available(5.0), "with a prober, only good probes readmit"
    assert health.probed(True, 0.5) is None, "probes during the cooldown do not count"
    assert [health.probed(True, 1.2 + i) for i in range(3)] == [None, None, "readmit"]
    assert health.available(3.5)


def _workers(n: int) -> list[Worker]:
    return [Worker(f"w{i}", WorkerRole.F, {"f": LinearF("f")}, Health(1.0, readmit_probes=3)) for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=6),
    k=st.integers(min_value=2, max_value=4),
    loads=st.lists(st.integers(min_value=0, max_value=5), min_size=6, max_size=6),
    ejected=st.sets(st.integers(min_value=0, max_value=5), max_size=5),
)
def test_a_groups_members_land_on_distinct_available_workers_whenever_enough_are_up(n, k, loads, ejected) -> None:
    workers = _workers(n)
    for worker, load in zip(workers, loads, strict=False):
        worker.outstanding = load
    for index in ejected:
        if index < n:
            workers[index].health.eject(0.0)
    pool = WorkerPool(WorkerRole.F, workers)
    up = [w for w in workers if w.available(0.5)]
    used: list[str] = []
    for _ in range(k):
        worker = pool.pick(0.5, exclude=used)
        assert worker is not None, "an F pick always finds a worker"
        if len(up) >= k:
            assert worker in up and worker.name not in used, "distinct available workers"
        elif up:
            assert worker in up, "never an ejected worker while one is up"
        if worker in up:
            free = [w for w in up if w.name not in used] or up
            assert worker.outstanding == min(w.outstanding for w in free), "least outstanding among the candidates"
        used.append(worker.name)
        pool.started(worker)


def test_a_parity_pick_avoids_the_groups_domains_and_finds_none_when_every_worker_is_ejected() -> None:
    workers = _workers(3)
    pool = WorkerPool(WorkerRole.PARITY, workers)
    assert pool.pick(0.0, "f", exclude=["w0", "w1"], fallback=False) is workers[2]
    for worker in workers:
        worker.health.eject(0.0)
    assert pool.pick(0.1, "f", fallback=False) is None
    assert "failed recently" in (pool.unavailable_reason(0.1, "f") or "")


def test_a_pool_follows_its_addresses_new_ones_join_vanished_ones_retire_after_their_calls() -> None:
    async def scenario() -> None:
        closed = []

        def factory(address: str) -> Worker:
            async def close() -> None:
                closed.append(address)

            return Worker(address, WorkerRole.F, {"f": LinearF("f")}, Health(1.0, 3), close=close)

        pool = WorkerPool(WorkerRole.F, factory=factory)
        pool.set_addresses(["a:1", "b:1"])
        busy = pool.workers[1]
        pool.started(busy)
        pool.set_addresses(["a:1", "c:1"])
        assert [w.name for w in pool.workers] == ["a:1", "b:1", "c:1"] and busy.retired
        assert pool.pick(0.0, exclude=["a:1"]).name == "c:1", "a retired worker takes no new work"
        pool.finished(busy, 0.01, 0.0)
        await asyncio.sleep(0)
        assert [w.name for w in pool.workers] == ["a:1", "c:1"] and closed == ["b:1"]

    asyncio.run(scenario())


def test_dns_names_resolve_to_one_worker_per_address_and_plain_addresses_stay() -> None:
    addresses = asyncio.run(resolve(["dns:localhost:8001", "10.0.0.7:9000", "dns:no-such-host.invalid:1"]))
    assert "127.0.0.1:8001" in addresses and "10.0.0.7:9000" in addresses
    assert not any(a.startswith("no-such-host") for a in addresses)


def test_the_monitor_ejects_a_worker_whose_probes_hang_and_readmits_it_once_they_answer() -> None:
    async def scenario() -> None:
        answering = asyncio.Event()

        async def probe(timeout: float) -> bool:
            await answering.wait()
            return True

        worker = Worker("w0", WorkerRole.F, {"f": LinearF("f")}, Health(0.05, readmit_probes=2), probe=probe)
        pool = WorkerPool(WorkerRole.F, [worker])
        loop = asyncio.get_running_loop()
        task = loop.create_task(WorkerMonitor([(pool, ["w0:1"])], 0.02, 60.0, loop.time).run())
        try:
            await asyncio.sleep(0.1)
            assert worker.health.ejected and worker.health.ejections == 1
            answering.set()
            await asyncio.sleep(0.2)
            assert not worker.health.ejected
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_the_calls_an_ejected_worker_holds_are_rebuilt_at_once() -> None:
    async def scenario() -> None:
        stuck, healthy = LinearF("f"), LinearF("f")
        stuck.paused = asyncio.Event()
        h = Harness(request_timeout_ms=2000.0, decode_after_ms=1000.0, decode_after_quantile=0.0)
        workers = [
            Worker("w0", WorkerRole.F, {"f": stuck}, Health(1.0, 3)),
            Worker("w1", WorkerRole.F, {"f": healthy}, Health(1.0, 3)),
        ]
        f_pool = WorkerPool(WorkerRole.F, workers)
        parity_pool = WorkerPool.local(
            WorkerRole.PARITY, [h.parity], 1.0, ejectable=True, setting="parity_cooldown_ms=1000"
        )
        loop = asyncio.get_running_loop()
        h.dispatcher = make_dispatcher(h.config, f_pool, parity_pool, SumEncoder(), SubtractionDecoder())
        first, second = h.submit(0.1), h.submit(0.2)
        assert (await h.answer(second)).source is AnswerSource.ORIGINAL
        await asyncio.sleep(0.05)
        assert not h.replies[first], "decode_after (1 s) holds the rebuild back while the worker is trusted"
        started = loop.time()
        f_pool.failed(workers[0], loop.time(), "test")
        answer = await h.answer(first, timeout=0.5)
        assert answer.source is AnswerSource.REBUILT and loop.time() - started < 0.2
        np.testing.assert_allclose(answer.outputs["y"], (await healthy.infer(h.queries[first], ["y"]))["y"], rtol=1e-4)
        stuck.paused.set()
        await h.settle()
        h.assert_exactly_once()

    run_checked(scenario())


def _two_worker_harness(**config):
    stuck, healthy = LinearF("f"), LinearF("f")
    stuck.paused = asyncio.Event()
    config = {"request_timeout_ms": 2000.0, "decode_after_ms": 1000.0, "decode_after_quantile": 0.0, **config}
    h = Harness(**config)
    workers = [
        Worker("w0", WorkerRole.F, {"f": stuck}, Health(1.0, 3)),
        Worker("w1", WorkerRole.F, {"f": healthy}, Health(1.0, 3)),
    ]
    f_pool = WorkerPool(WorkerRole.F, workers)
    parity_pool = WorkerPool.local(WorkerRole.PARITY, [h.parity], 1.0, ejectable=True, setting="parity_cooldown_ms")
    h.dispatcher = make_dispatcher(h.config, f_pool, parity_pool, SumEncoder(), SubtractionDecoder())
    return h, stuck, healthy, workers


@pytest.mark.parametrize("threshold", [0.0, 5.0])
def test_a_straggler_is_hedged_on_another_worker_only_while_the_workers_have_spare_capacity(threshold) -> None:
    async def scenario() -> None:
        h, stuck, healthy, workers = _two_worker_harness(hedge_below_load=threshold)
        loop = asyncio.get_running_loop()
        if threshold > 0:  # the hedge races the rebuild: a parity held back until the hedge answers decides it
            h.parity.paused = parity_gate = asyncio.Event()
        first, second = h.submit(0.1), h.submit(0.2)
        await h.answer(second)
        calls = healthy.calls
        h.dispatcher.f_workers.failed(workers[0], loop.time(), "test")
        answer = await h.answer(first, timeout=0.5)
        await h.settle()  # the hedge's win is counted on the loop, after its answer went out from F's thread
        stats = h.dispatcher.stats
        if threshold > 0:
            parity_gate.set()
            assert answer.source is AnswerSource.ORIGINAL, "the hedge's answer is F's own"
            assert healthy.calls == calls + 1 and (stats.hedges, stats.hedges_won) == (1, 1)
        else:
            assert answer.source is AnswerSource.REBUILT and stats.hedges == 0
        np.testing.assert_allclose(answer.outputs["y"], (await healthy.infer(h.queries[first], ["y"]))["y"], rtol=1e-4)
        stuck.paused.set()
        await h.settle()
        h.assert_exactly_once()

    run_checked(scenario())


def test_no_hedge_while_the_workers_are_busy() -> None:
    async def scenario() -> None:
        h, stuck, _, workers = _two_worker_harness(hedge_below_load=0.5)
        loop = asyncio.get_running_loop()
        first, second = h.submit(0.1), h.submit(0.2)
        await h.answer(second)
        workers[1].outstanding += 3  # busy elsewhere: 2 calls per worker on average
        h.dispatcher.f_workers.failed(workers[0], loop.time(), "test")
        answer = await h.answer(first, timeout=0.5)
        workers[1].outstanding -= 3
        assert answer.source is AnswerSource.REBUILT and h.dispatcher.stats.hedges == 0
        stuck.paused.set()
        await h.settle()
        h.assert_exactly_once()

    run_checked(scenario())


@pytest.mark.parametrize("threshold", [0.0, 5.0])
def test_a_late_member_is_hedged_when_it_turns_late_instead_of_spending_parity_while_the_workers_have_spare_capacity(
    threshold,
) -> None:
    """No straggler test fires (no later answers overtake it): at spare capacity the late member's hedge answers it
    with F's own answer and no parity is computed; without hedging the parity budget buys its rebuild."""

    async def scenario() -> None:
        h, stuck, healthy, _ = _two_worker_harness(
            hedge_below_load=threshold, decode_after_ms=30.0, straggler_overtakes=100, parity_budget=1.0
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        first, second = h.submit(0.1), h.submit(0.2)
        assert (await h.answer(second)).source is AnswerSource.ORIGINAL
        answer = await h.answer(first, timeout=0.5)
        assert loop.time() - started >= 0.03, "nothing happens before the member is late"
        np.testing.assert_allclose(answer.outputs["y"], (await healthy.infer(h.queries[first], ["y"]))["y"], rtol=1e-4)
        await h.settle()  # the hedge's win is counted on the loop, after its answer went out from F's thread
        stats = h.dispatcher.stats
        if threshold > 0:
            assert answer.source is AnswerSource.ORIGINAL and (stats.hedges, stats.hedges_won) == (1, 1)
            assert h.parity.calls == 0 and sum(stats.parities.values()) == 0
        else:
            assert answer.source is AnswerSource.REBUILT and stats.hedges == 0
            assert stats.parities[ParityReason.BUDGET] == 1
        stuck.paused.set()
        await h.settle()
        h.assert_exactly_once()

    run_checked(scenario())


def test_a_late_member_whose_hedge_fails_gets_its_parity_from_the_budget() -> None:
    """A failed hedge leaves the late member to the budget's parity, as without hedging: no later answers may come
    to make it a straggler."""

    async def scenario() -> None:
        h, stuck, healthy, _ = _two_worker_harness(
            hedge_below_load=5.0, decode_after_ms=30.0, straggler_overtakes=100, parity_budget=1.0
        )
        first, second = h.submit(0.1), h.submit(0.2)
        healthy.fail.add(0.1)  # the hedge lands on the healthy worker, and fails there
        assert (await h.answer(second)).source is AnswerSource.ORIGINAL
        answer = await h.answer(first, timeout=0.5)
        assert answer.source is AnswerSource.REBUILT
        np.testing.assert_allclose(answer.outputs["y"], linear_f(h.queries[first]["x"]), rtol=1e-4, atol=1e-4)
        assert h.dispatcher.stats.hedges == 1 and h.dispatcher.stats.parities[ParityReason.BUDGET] == 1
        stuck.paused.set()
        await h.settle()
        h.assert_exactly_once()

    run_checked(scenario())

"""r > 1: a rebuild uses whichever parities arrived, if they solve the missing slots, and a dead parity model does
not stop the others. Every scenario runs on both decoding paths: the linear code in process (``code_weights``) and
the encoder and decoder models (the decoder contract's ``available`` [k + r] flags the parities that arrived)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from parm.backend.orchestrator import AnswerSource

from .helpers import FailingTarget, Harness, LinearCodeDecoder, LinearCodeEncoder, LinearF, linear_f, run_checked


class InlineHarness(Harness):
    inline = True


TWO_PARITIES = ((1.0, 1.0, 1.0), (1.0, 2.0, 3.0))
"""k = 3, r = 2: any two of the three members, or one member from either parity alone."""


@pytest.fixture(params=["inline code", "code models"])
def two_parity_harness(request):
    """Builds a k = 3, r = 2 harness over ``TWO_PARITIES`` on one of the two decoding paths."""

    def make(parities, **config):
        if request.param == "inline code":
            return InlineHarness(parities=parities, k=3, code_weights=TWO_PARITIES, **config)
        return Harness(
            parities=parities,
            k=3,
            encoder=LinearCodeEncoder(TWO_PARITIES),
            decoder=LinearCodeDecoder(TWO_PARITIES),
            **config,
        )

    return make


def test_with_two_parities_one_that_never_answers_does_not_hold_back_a_rebuild(two_parity_harness):
    async def scenario():
        stuck = LinearF("f_parity0")
        stuck.paused = asyncio.Event()
        h = two_parity_harness([stuck, LinearF("f_parity1")], decode_after_ms=20.0)
        h.f.hold[0.7] = asyncio.Event()
        requests = [h.submit(marker) for marker in (0.5, 0.6, 0.7)]
        answer = await h.answer(requests[2])
        assert answer.source is AnswerSource.REBUILT
        np.testing.assert_allclose(answer.outputs["y"], linear_f(h.queries[2]["x"]), rtol=1e-4, atol=1e-4)
        for request in requests[:2]:
            assert (await h.answer(request)).source is AnswerSource.ORIGINAL
        stuck.paused.set()
        h.f.hold[0.7].set()
        await h.settle()
        h.assert_exactly_once()

    run_checked(scenario())


def test_with_two_parities_a_failed_one_leaves_the_other_to_rebuild_and_three_failures_are_reported(
    two_parity_harness,
):
    async def scenario():
        h = two_parity_harness([FailingTarget("f_parity0"), LinearF("f_parity1")])
        h.f.fail.add(0.7)
        requests = [h.submit(marker) for marker in (0.5, 0.6, 0.7)]
        answer = await h.answer(requests[2])
        assert answer.source is AnswerSource.REBUILT
        np.testing.assert_allclose(answer.outputs["y"], linear_f(h.queries[2]["x"]), rtol=1e-4, atol=1e-4)
        await h.settle()
        h.assert_exactly_once()
        assert h.dispatcher.stats.parity_failures == 1

    async def two_failed_members_and_one_parity():
        h = two_parity_harness([LinearF("f_parity0"), FailingTarget("f_parity1")])
        h.f.fail.update({0.6, 0.7})
        requests = [h.submit(marker) for marker in (0.5, 0.6, 0.7)]
        for request in requests[1:]:
            answer = await h.answer(request)
            assert answer.source is AnswerSource.ERROR
            assert "2 members of its coding group failed, 1 of its 2 parities failed" in answer.error
        await h.settle()
        h.assert_exactly_once()

    run_checked(scenario())
    run_checked(two_failed_members_and_one_parity())


def test_with_two_parities_a_dead_one_is_left_alone_while_the_other_keeps_rebuilding(two_parity_harness):
    async def scenario():
        dead = FailingTarget("f_parity0")
        h = two_parity_harness([dead, LinearF("f_parity1")], parity_cooldown_ms=5000.0)
        for group, failed in enumerate((0.3, 0.6)):
            h.f.fail.add(failed)
            markers = [round(0.1 + 0.3 * group + 0.1 * i, 6) for i in range(3)]
            requests = [h.submit(marker) for marker in markers]
            rebuilt = await h.answer(requests[markers.index(failed)])
            assert rebuilt.source is AnswerSource.REBUILT, rebuilt.error
            await h.settle()
        assert dead.calls == 1, "the dead parity model is not called again during its cooldown"
        assert h.dispatcher.stats.parity_failures == 1
        h.assert_exactly_once()

    run_checked(scenario())

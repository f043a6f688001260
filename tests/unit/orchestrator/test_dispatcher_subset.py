"""r > 1 with a linear code decoded in process: a rebuild uses whichever parities arrived, if they solve the missing
slots, and a dead parity model does not stop the others. (The exported decoder networks take all r parity outputs;
only the in-process code decodes from fewer, so these scenarios run on that path alone.)"""

from __future__ import annotations

import asyncio

import numpy as np

from parm.backend.orchestrator import AnswerSource, CodedDispatcher
from parm.backend.orchestrator.contract import ENCODER_INPUT, ENCODER_OUTPUT

from .helpers import FailingTarget, Harness, LinearF, linear_f, run_checked


class InlineHarness(Harness):
    inline = True


TWO_PARITIES = ((1.0, 1.0, 1.0), (1.0, 2.0, 3.0))
"""k = 3, r = 2: any two of the three members, or one member from either parity alone."""


def test_with_two_parities_one_that_never_answers_does_not_hold_back_a_rebuild():
    async def scenario():
        stuck = LinearF("f_parity0")
        stuck.paused = asyncio.Event()
        h = InlineHarness(parities=[stuck, LinearF("f_parity1")], k=3, code_weights=TWO_PARITIES, decode_after_ms=20.0)
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


def test_with_two_parities_a_failed_one_leaves_the_other_to_rebuild_and_three_failures_are_reported():
    async def scenario():
        h = InlineHarness(parities=[FailingTarget("f_parity0"), LinearF("f_parity1")], k=3, code_weights=TWO_PARITIES)
        h.f.fail.add(0.7)
        requests = [h.submit(marker) for marker in (0.5, 0.6, 0.7)]
        answer = await h.answer(requests[2])
        assert answer.source is AnswerSource.REBUILT
        np.testing.assert_allclose(answer.outputs["y"], linear_f(h.queries[2]["x"]), rtol=1e-4, atol=1e-4)
        await h.settle()
        h.assert_exactly_once()
        assert h.dispatcher.stats.parity_failures == 1

    async def two_failed_members_and_one_parity():
        h = InlineHarness(parities=[LinearF("f_parity0"), FailingTarget("f_parity1")], k=3, code_weights=TWO_PARITIES)
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


def test_with_two_parities_a_dead_one_is_left_alone_while_the_other_keeps_rebuilding():
    async def scenario():
        dead = FailingTarget("f_parity0")
        h = InlineHarness(
            parities=[dead, LinearF("f_parity1")], k=3, code_weights=TWO_PARITIES, parity_cooldown_ms=5000.0
        )
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


class TwoRowSumEncoder:
    """An encoder model for r = 2 whose parity queries are both the plain sum."""

    name = "f_encoder"

    async def infer(self, inputs, output_names, on_outputs=None):
        total = inputs[ENCODER_INPUT].sum(axis=0)
        return {ENCODER_OUTPUT: np.stack([total, total])}


def test_the_decoder_model_needs_every_parity_so_one_dead_parity_model_stops_the_others_being_called():
    async def scenario():
        dead, alive = FailingTarget("f_parity0"), LinearF("f_parity1")
        h = Harness(parities=[dead, alive], parity_cooldown_ms=5000.0)
        loop = asyncio.get_running_loop()
        h.dispatcher = CodedDispatcher(
            h.config, [h.f], [dead, alive], TwoRowSumEncoder(), FailingTarget("f_decoder"), loop
        )
        for group, failed in enumerate((0.2, 0.4)):
            h.f.fail.add(failed)
            requests = [h.submit(round(0.1 + 0.2 * group, 6)), h.submit(failed)]
            answer = await h.answer(requests[1])
            assert answer.source is AnswerSource.ERROR
            if group == 1:
                assert "1 of 2 parity models failed recently" in answer.error, answer.error
            await h.settle()
        assert (dead.calls, alive.calls) == (1, 1), "no parity is sent that the decoder model could not use"
        h.assert_exactly_once()

    run_checked(scenario())

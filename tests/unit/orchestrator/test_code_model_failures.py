"""The code models failing: every member is still answered exactly once, with F's answer or a clear error."""

from __future__ import annotations

import asyncio

from parm.backend.orchestrator import AnswerSource

from .helpers import FailingTarget, Harness, run_checked


def _scenario(**failing):
    async def scenario() -> None:
        h = Harness(**failing, request_timeout_ms=300.0, decode_after_quantile=0.0, fill_timeout_quantile=0.0)
        stuck = 0.1
        h.f.hold[stuck] = asyncio.Event()
        first, second = h.submit(stuck), h.submit(0.2)
        assert (await h.answer(second)).source is AnswerSource.ORIGINAL, "the partner keeps F's answer"
        answer = await h.answer(first, timeout=1.0)
        assert answer.source is AnswerSource.ERROR
        assert "no answer within request_timeout_ms=300" in answer.error
        h.f.hold[stuck].set()
        later = [h.submit(0.3), h.submit(0.4)]
        for request in later:
            assert (await h.answer(request)).source is AnswerSource.ORIGINAL, "service goes on after the failure"
        await h.settle()
        h.assert_exactly_once()

    return scenario()


def test_a_failing_encoder_leaves_a_stuck_member_to_its_deadline_and_answers_the_rest() -> None:
    run_checked(_scenario(encoder=FailingTarget("f_encoder")))


def test_a_failing_decoder_leaves_a_stuck_member_to_its_deadline_and_answers_the_rest() -> None:
    run_checked(_scenario(decoder=FailingTarget("f_decoder")))

"""Property tests of the orchestrator core: any arrival order, batch mix and set of slow or failed members."""

from __future__ import annotations

import asyncio

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parm.backend.orchestrator import AnswerSource
from parm.backend.orchestrator.workers import local_pools

from .helpers import LinearF, SubtractionDecoder, SumEncoder, linear_f, make_config, make_dispatcher, query, run_checked

BEHAVIOURS = ("fast", "slow", "paused", "failed")

request_strategy = st.tuples(
    st.sampled_from([1, 2, 3]),  # batch size
    st.sampled_from(BEHAVIOURS),  # what F does with this request
    st.floats(min_value=0.0, max_value=0.004),  # gap before the next arrival (s)
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(request_strategy, min_size=1, max_size=12),
    k=st.sampled_from([2, 3, 4]),
    decode_after_ms=st.sampled_from([0.0, 3.0]),
)
def test_every_request_gets_exactly_one_correct_answer(requests, k, decode_after_ms):
    run_checked(_scenario(requests, k, decode_after_ms))


async def _scenario(requests, k, decode_after_ms):
    f = LinearF()
    config = make_config(k=k, decode_after_ms=decode_after_ms, request_timeout_ms=150.0, fill_timeout_ms=2.0)
    pools = local_pools(config, [f], [LinearF("f_parity")])
    dispatcher = make_dispatcher(config, *pools, SumEncoder(), SubtractionDecoder())
    replies: list[list] = [[] for _ in requests]
    queries = []
    for index, (batch, behaviour, gap) in enumerate(requests):
        marker = round(0.001 * (index + 1), 6)
        q = query(marker, batch, seed=index)
        queries.append(q)
        if behaviour == "slow":
            f.hold[marker] = asyncio.Event()
            asyncio.get_running_loop().call_later(0.02, f.hold[marker].set)
        elif behaviour == "paused":
            f.hold[marker] = asyncio.Event()
        elif behaviour == "failed":
            f.fail.add(marker)
        dispatcher.submit(q, replies[index].append)
        await asyncio.sleep(gap)
    await asyncio.sleep(0.2)  # past every deadline: any second answer would show up by now
    for event in f.hold.values():
        event.set()
    await asyncio.sleep(0.01)

    for (batch, behaviour, _), got, q in zip(requests, replies, queries, strict=True):
        assert len(got) == 1, f"{behaviour} request answered {len(got)} times"
        answer = got[0]
        expected = linear_f(q["x"])
        if answer.source is AnswerSource.ORIGINAL:
            assert behaviour in ("fast", "slow")
            np.testing.assert_array_equal(answer.outputs["y"], expected)
        elif answer.source is AnswerSource.REBUILT:
            assert answer.outputs["y"].shape == (batch, expected.shape[1])
            np.testing.assert_allclose(answer.outputs["y"], expected, rtol=1e-4, atol=1e-4)
        else:
            assert behaviour in ("paused", "failed"), f"{behaviour} request got error {answer.error}"
            assert answer.error
    assert dispatcher.in_flight == 0
    stats = dispatcher.stats
    assert sum(stats.answers.values()) == len(requests) == stats.requests

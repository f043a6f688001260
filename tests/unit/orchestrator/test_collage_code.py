"""A code whose parity answer is not F's shape (the collage: [k, *o], one head per member) flows through the core.

The collage in miniature, exact: queries whose two columns are equal lose nothing when pooled over columns, so the
tiled parity query (member i's pooled column in column i) holds every member, and a parity model whose head i runs F
on column i, widened back, answers F's own answer to member i.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from parm.backend.orchestrator import AnswerSource
from parm.backend.orchestrator.contract import (
    DECODER_AVAILABLE_INPUT,
    DECODER_OUTPUT,
    DECODER_OUTPUTS_INPUT,
    DECODER_PARITY_INPUT,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
)
from parm.backend.orchestrator.group_code import decoder_inputs
from parm.backend.orchestrator.groups import CodingGroup

from .helpers import IN_SHAPE, OUT_DIM, Harness, linear_f, query, run_checked

K = IN_SHAPE[-1]
"""One tile per column: two members."""


def tileable_query(marker: float, batch: int = 1) -> dict[str, np.ndarray]:
    """A query whose columns are equal, so pooling over columns keeps all of it."""
    x = query(marker, batch)["x"]
    x[..., 1:] = x[..., :1]
    return {"x": x}


class TileEncoder:
    """[k, B, H, k] -> [1, B, H, k]: each member pooled over its columns, member i in column i."""

    name = "f_encoder"

    async def infer(self, inputs, output_names, on_outputs=None, timeout=None):
        queries = inputs[ENCODER_INPUT]
        pooled = queries.mean(axis=-1)  # [k, B, H]
        return {ENCODER_OUTPUT: np.moveaxis(pooled, 0, -1)[None]}


class CollageParity:
    """Head i: F on column i of the tiled query, widened back to F's query shape; answers [B, k, o]."""

    name = "f_parity"

    def __init__(self) -> None:
        self.calls = 0
        self.paused: asyncio.Event | None = None
        """When set to an Event, every call waits for it, so F's answers come first."""

    async def infer(self, inputs, output_names, on_outputs=None, timeout=None):
        self.calls += 1
        if self.paused is not None:
            await self.paused.wait()
        tiled = inputs["x"]
        heads = [linear_f(np.repeat(tiled[..., i : i + 1], K, axis=-1)) for i in range(K)]
        return {"y": np.stack(heads, axis=1)}


class CollageDecoder:
    """The collage decoder's contract, with shape checks a served ONNX decoder would make: ``parity_outputs``
    [1, B, k, o] and ``outputs`` [k, B, o]; an erased member's answer is its head."""

    name = "f_decoder"

    def __init__(self) -> None:
        self.calls = 0

    async def infer(self, inputs, output_names, on_outputs=None, timeout=None):
        self.calls += 1
        parity, outputs = inputs[DECODER_PARITY_INPUT], inputs[DECODER_OUTPUTS_INPUT]
        batch = outputs.shape[1]
        assert parity.shape == (1, batch, K, OUT_DIM), parity.shape
        assert outputs.shape == (K, batch, OUT_DIM), outputs.shape
        arrived = inputs[DECODER_AVAILABLE_INPUT][:K].reshape(K, 1, 1) > 0.5
        return {DECODER_OUTPUT: np.where(arrived, outputs, parity[0].swapaxes(0, 1))}


class CollageHarness(Harness):
    make_query = staticmethod(tileable_query)

    def __init__(self, **config) -> None:
        super().__init__(parity=CollageParity(), encoder=TileEncoder(), decoder=CollageDecoder(), k=K, **config)


def _group(members: list[np.ndarray | None], parities: list[np.ndarray | None]) -> CodingGroup:
    group = CodingGroup(key=(), k=len(members), r=len(parities))
    for answer in members:
        group.add({"x": np.zeros((2, *IN_SHAPE), np.float32)}, None, None if answer is None else {"y": answer})
    group.parity_outputs = [None if answer is None else {"y": answer} for answer in parities]
    return group


def test_decoder_inputs_stack_a_k_headed_parity_answer_apart_from_the_members():
    rng = np.random.default_rng(0)
    first, third = rng.normal(size=(2, 2, OUT_DIM)).astype(np.float32)
    heads = rng.normal(size=(2, 3, OUT_DIM)).astype(np.float32)
    inputs = decoder_inputs(_group([first, None, third], [heads]), "y")
    np.testing.assert_array_equal(inputs[DECODER_PARITY_INPUT], heads[None])
    np.testing.assert_array_equal(inputs[DECODER_OUTPUTS_INPUT], np.stack([first, np.zeros_like(first), third]))
    np.testing.assert_array_equal(inputs[DECODER_AVAILABLE_INPUT], [1, 0, 1, 1])


def test_decoder_inputs_with_every_member_missing_shape_their_rows_as_the_parity_that_arrived():
    """Only a code with r >= k loses every member (its parities answer in F's shape): k = 2, r = 2, one parity."""
    parity = np.ones((3, OUT_DIM), np.float32)
    inputs = decoder_inputs(_group([None, None], [None, parity]), "y")
    np.testing.assert_array_equal(inputs[DECODER_PARITY_INPUT], np.stack([np.zeros_like(parity), parity]))
    np.testing.assert_array_equal(inputs[DECODER_OUTPUTS_INPUT], np.zeros((2, 3, OUT_DIM), np.float32))
    np.testing.assert_array_equal(inputs[DECODER_AVAILABLE_INPUT], [0, 0, 0, 1])


@pytest.mark.parametrize("batch", [1, 3])
def test_a_paused_member_is_answered_by_its_collage_head_exactly_and_once(batch):
    async def scenario():
        h = CollageHarness()
        gate = h.f.hold[0.1] = asyncio.Event()
        slow, fast = h.submit(0.1, batch), h.submit(0.2, batch)
        answer = await h.answer(slow)
        assert answer.source is AnswerSource.REBUILT
        assert answer.outputs["y"].shape == (batch, OUT_DIM), "a rebuilt answer has F's shape, not the parity's"
        np.testing.assert_array_equal(answer.outputs["y"], linear_f(h.queries[slow]["x"]))
        assert (await h.answer(fast)).source is AnswerSource.ORIGINAL
        gate.set()
        h.parity.paused = parity_gate = asyncio.Event()  # decode_after_ms=0: a quick parity would race F's answers
        later = [h.submit(0.3, batch), h.submit(0.4, batch)]
        for request in later:
            assert (await h.answer(request)).source is AnswerSource.ORIGINAL, "service goes on after the pause"
        parity_gate.set()
        await h.settle()
        h.assert_exactly_once()
        assert h.parity.calls >= 1 and h.decoder.calls >= 1
        stats = h.dispatcher.stats
        assert stats.fidelity_samples == batch, "F's late answer is compared with the rebuilt one, row by row"
        assert stats.fidelity_relative_error_sum == 0.0

    run_checked(scenario())

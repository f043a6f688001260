"""Real in-process targets for the orchestrator core: a linear F (where the sum code is exact) and the sum code.

They are the core's real collaborators in miniature, not mocks: F computes, the encoder sums, the decoder subtracts.
A ``Gate`` holds an F call the way a SIGSTOPped instance would, until the test opens it (or forever). F computes on
a worker thread and hands its outputs over from there, as the BLS target does, so the race between F's answer (on
that thread) and rebuilt answers, deadlines and shutdown (on the loop) is exercised for real.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from parm.backend.orchestrator import CodedDispatcher, OrchestratorConfig, TargetError, TensorSpec
from parm.backend.orchestrator.contract import (
    DECODER_AVAILABLE_INPUT,
    DECODER_OUTPUT,
    DECODER_OUTPUTS_INPUT,
    DECODER_PARITY_INPUT,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
)
from parm.backend.orchestrator.dispatcher import TASK_CRASHED
from parm.backend.orchestrator.group_code import group_code
from parm.backend.orchestrator.workers import local_pools

T = TypeVar("T")

IN_SHAPE = (3, 2)
OUT_DIM = 4
WEIGHTS = np.random.default_rng(7).normal(size=(int(np.prod(IN_SHAPE)), OUT_DIM)).astype(np.float32)


def linear_f(x: np.ndarray) -> np.ndarray:
    return (x.reshape(x.shape[0], -1).astype(np.float64) @ WEIGHTS).astype(np.float32)


def make_config(**overrides) -> OrchestratorConfig:
    values = dict(
        inputs=(TensorSpec("x", np.dtype(np.float32), IN_SHAPE),),
        outputs=(TensorSpec("y", np.dtype(np.float32), (OUT_DIM,)),),
        max_batch_size=8,
        f_models=("f",),
        parity_models=("f_parity",),
        encoder_model="f_encoder",
        decoder_model="f_decoder",
        k=2,
        decode_after_ms=0.0,
        request_timeout_ms=400.0,
        fill_timeout_ms=5.0,
    )
    values.update(overrides)
    return OrchestratorConfig(**values)


class LinearF:
    """F(x) = flatten(x) @ W. Calls whose first row's first value is in ``hold`` wait on that gate (a paused
    instance); values in ``fail`` raise TargetError (a failed instance)."""

    def __init__(self, name: str = "f", delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.hold: dict[float, asyncio.Event] = {}
        self.fail: set[float] = set()
        self.paused: asyncio.Event | None = None
        """When set to an Event, every call waits for it (the whole instance is paused)."""
        self.calls = 0

    async def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], on_outputs=None, timeout=None
    ) -> dict[str, np.ndarray]:
        self.calls += 1
        x = inputs["x"]
        marker = round(float(x.reshape(-1)[0]), 6)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.paused is not None:
            await self.paused.wait()
        if marker in self.hold:
            await self.hold[marker].wait()
        if marker in self.fail:
            raise TargetError(self.name, f"instance failed on query {marker}")
        return await asyncio.get_running_loop().run_in_executor(None, _compute, x, on_outputs)


def _compute(x: np.ndarray, on_outputs) -> dict[str, np.ndarray]:
    outputs = {"y": linear_f(x)}
    if on_outputs is not None:
        on_outputs(outputs)
    return outputs


class SumEncoder:
    name = "f_encoder"

    async def infer(self, inputs, output_names, on_outputs=None, timeout=None):
        return {ENCODER_OUTPUT: inputs[ENCODER_INPUT].sum(axis=0, keepdims=True)}


class SubtractionDecoder:
    name = "f_decoder"

    def __init__(self) -> None:
        self.calls = 0

    async def infer(self, inputs, output_names, on_outputs=None, timeout=None):
        self.calls += 1
        outputs = inputs[DECODER_OUTPUTS_INPUT]
        available = inputs[DECODER_AVAILABLE_INPUT][: len(outputs)].reshape(-1, *([1] * (outputs.ndim - 1)))
        rebuilt = inputs[DECODER_PARITY_INPUT][0] - (available * outputs).sum(axis=0)
        return {DECODER_OUTPUT: available * outputs + (1 - available) * rebuilt}


class LinearCodeEncoder:
    """The encoder model of a linear code with weights [r, k]."""

    name = "f_encoder"

    def __init__(self, weights) -> None:
        self.weights = np.asarray(weights, dtype=np.float32)

    async def infer(self, inputs, output_names, on_outputs=None, timeout=None):
        queries = inputs[ENCODER_INPUT]
        parity = self.weights @ queries.reshape(len(queries), -1)
        return {ENCODER_OUTPUT: parity.reshape(len(self.weights), *queries.shape[1:])}


class LinearCodeDecoder:
    """The decoder model of a linear code with weights [r, k], by the decoder contract: least squares for the erased
    members over the rows of the parities flagged in ``available`` [k + r]; missing rows are NaN-proof."""

    name = "f_decoder"

    def __init__(self, weights) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)
        self.calls = 0

    async def infer(self, inputs, output_names, on_outputs=None, timeout=None):
        self.calls += 1
        r, k = self.weights.shape
        outputs, parity = inputs[DECODER_OUTPUTS_INPUT], inputs[DECODER_PARITY_INPUT]
        available = inputs[DECODER_AVAILABLE_INPUT] > 0.5
        members, rows = np.flatnonzero(available[:k]), np.flatnonzero(available[k:])
        erased = np.flatnonzero(~available[:k])
        flat = outputs.reshape(k, -1).astype(np.float64)
        residual = parity.reshape(r, -1)[rows] - self.weights[np.ix_(rows, members)] @ flat[members]
        solved, *_ = np.linalg.lstsq(self.weights[np.ix_(rows, erased)], residual, rcond=None)
        decoded = flat.copy()
        decoded[erased] = solved
        return {DECODER_OUTPUT: decoded.reshape(outputs.shape).astype(outputs.dtype)}


class FailingTarget:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    async def infer(self, inputs, output_names, on_outputs=None, timeout=None):
        self.calls += 1
        raise TargetError(self.name, "unavailable")


def query(marker: float, batch: int = 1, seed: int | None = None) -> dict[str, np.ndarray]:
    """A query whose first value is ``marker`` (so targets can recognise it) and the rest random."""
    rng = np.random.default_rng(int(marker * 1000) if seed is None else seed)
    x = rng.normal(size=(batch, *IN_SHAPE)).astype(np.float32)
    x.reshape(-1)[0] = marker
    return {"x": x}


def make_dispatcher(config, f_pool, parity_pool, encoder, decoder) -> CodedDispatcher:
    """A dispatcher on the running loop whose code reaches ``encoder`` and ``decoder`` by their config names."""
    models = {config.encoder_model: encoder, config.decoder_model: decoder}
    code = group_code(config, models.__getitem__)
    return CodedDispatcher(config, f_pool, parity_pool, code, asyncio.get_running_loop())


class Harness:
    """One dispatcher on the running loop, recording every reply per request. ``inline``: a linear code encoded and
    decoded in process (``code_weights``), where the encoder and decoder models must never be called."""

    inline = False
    make_query = staticmethod(query)
    """How ``submit`` builds a request's query from its marker and batch size."""

    def __init__(self, f=None, parity=None, decoder=None, parities=None, encoder=None, **config) -> None:
        self.f = f or LinearF()
        self.parity = parity or LinearF("f_parity")
        self.parities = parities or [self.parity]
        config.setdefault("parity_models", tuple(target.name for target in self.parities))
        self.encoder = encoder = encoder or SumEncoder()
        if self.inline:
            config.setdefault("code_weights", ((1.0,) * config.get("k", 2),))
            self.encoder = encoder = FailingTarget("f_encoder")
            decoder = FailingTarget("f_decoder")
        self.decoder = decoder or SubtractionDecoder()
        self.config = make_config(**config)
        self.dispatcher = make_dispatcher(
            self.config, *local_pools(self.config, [self.f], self.parities), encoder, self.decoder
        )
        self.replies: dict[int, list] = {}
        self.queries: dict[int, dict] = {}
        self.done: dict[int, asyncio.Event] = {}

    def submit(self, marker: float, batch: int = 1) -> int:
        request = len(self.queries)
        self.queries[request] = self.make_query(marker, batch)
        self.replies[request] = []
        self.done[request] = asyncio.Event()

        loop = asyncio.get_running_loop()

        def reply(answer, request=request):  # F's answers come from a worker thread
            self.replies[request].append(answer)
            loop.call_soon_threadsafe(self.done[request].set)

        self.dispatcher.submit(self.queries[request], reply)
        return request

    async def answer(self, request: int, timeout: float = 2.0):
        await asyncio.wait_for(self.done[request].wait(), timeout)
        return self.replies[request][0]

    async def settle(self, seconds: float = 0.05) -> None:
        """Lets late work finish, so that a second (wrong) reply would show up."""
        await asyncio.sleep(seconds)

    def assert_exactly_once(self) -> None:
        assert all(len(replies) == 1 for replies in self.replies.values()), self.replies
        if self.inline:
            assert self.encoder.calls == self.decoder.calls == 0, "an inline code calls no code model"


def run_checked(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, failing the test if a loop callback raised or an orchestrator task crashed: asyncio and the
    dispatcher only log those, and a test would pass over them."""
    errors: list[str] = []

    class Record(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == TASK_CRASHED:
                errors.append(self.format(record))

    async def main() -> T:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(repr(context)))
        return await coroutine

    handler = Record()
    logger = logging.getLogger("parm.backend.orchestrator")
    logger.addHandler(handler)
    try:
        result = asyncio.run(main())
    finally:
        logger.removeHandler(handler)
    assert not errors, "\n".join(errors)
    return result

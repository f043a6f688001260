"""How a coding group is encoded and decoded: chosen once at setup, one strategy per endpoint.

- ``InlineLinearCode``: a linear code (``code_weights``, with ``inline_code``) run in numpy inside the orchestrator:
  one Triton round trip less on the parity path and on every rebuild; the parities that arrived so far decode
  whenever they solve the erased slots.
- ``CodeModels``: the exported encoder and decoder networks (learned, Berrut, concatenation, collage, or a linear
  code with ``inline_code`` off), called as Triton models by the decoder contract (``contract.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from . import linear
from .config import OrchestratorConfig
from .contract import (
    DECODER_AVAILABLE_INPUT,
    DECODER_OUTPUT,
    DECODER_OUTPUTS_INPUT,
    DECODER_PARITY_INPUT,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
)
from .groups import CodingGroup, Tensors
from .workers import Target


class GroupCode(Protocol):
    async def encode(self, group: CodingGroup) -> Tensors:
        """Each input of the group's k slots -> its r parity queries [r, B, *q]."""
        ...

    async def decode(self, group: CodingGroup) -> dict[str, np.ndarray]:
        """Each output's rebuilt values [k, B, *o] (valid on the erased slots)."""
        ...


def _stacked_inputs(group: CodingGroup) -> tuple[list[str], list[np.ndarray]]:
    names = list(group.slots[0].inputs)
    return names, [np.stack([slot.inputs[name] for slot in group.slots]) for name in names]


class InlineLinearCode:
    def __init__(self, weights: np.ndarray, output_names: Sequence[str]) -> None:
        self._weights = weights
        self._output_names = tuple(output_names)

    async def encode(self, group: CodingGroup) -> Tensors:
        names, stacked = _stacked_inputs(group)
        return {name: linear.encode(self._weights, x) for name, x in zip(names, stacked, strict=True)}

    async def decode(self, group: CodingGroup) -> dict[str, np.ndarray]:
        decoded = {}
        rows = group.arrived_parities()  # a subset of the r parities may do (``CodingGroup.can_decode``)
        for name in self._output_names:
            parity = np.stack([group.parity_outputs[j][name] for j in rows])
            arrived = [None if slot.outputs is None else slot.outputs[name] for slot in group.slots]
            rebuilt = linear.decode(self._weights[rows], parity, arrived)
            template = np.zeros_like(parity[0])
            decoded[name] = np.stack([rebuilt.get(i, template) for i in range(len(group.slots))])
        return decoded


class CodeModels:
    def __init__(self, encoder: Target, decoder: Target, output_names: Sequence[str]) -> None:
        self._encoder = encoder
        self._decoder = decoder
        self._output_names = tuple(output_names)

    async def encode(self, group: CodingGroup) -> Tensors:
        names, stacked = _stacked_inputs(group)
        encoded = await asyncio.gather(*(self._encoder.infer({ENCODER_INPUT: x}, [ENCODER_OUTPUT]) for x in stacked))
        return {name: result[ENCODER_OUTPUT] for name, result in zip(names, encoded, strict=True)}

    async def decode(self, group: CodingGroup) -> dict[str, np.ndarray]:
        names = self._output_names
        results = await asyncio.gather(
            *(self._decoder.infer(decoder_inputs(group, name), [DECODER_OUTPUT]) for name in names)
        )
        return {name: result[DECODER_OUTPUT] for name, result in zip(names, results, strict=True)}


def decoder_inputs(group: CodingGroup, name: str) -> Tensors:
    """The decoder model's inputs for output ``name``: missing answers (members' or parities') are zeros, and
    ``available`` [k + r] says which they are.

    Members and parities are stacked apart, since a parity answer need not have F's shape (the collage's is
    [k, *o], one head per member): each kind's missing rows copy an answer of that kind that arrived. A decode
    always has a parity answer, and a member's unless every member is missing, which only codes with r >= k allow;
    those (linear ParM, codes whose parities F answers) answer parities in F's shape, so a parity shapes the rows
    then.
    """
    members = [None if slot.outputs is None else slot.outputs[name] for slot in group.slots]
    parities = [None if outputs is None else outputs[name] for outputs in group.parity_outputs]
    return {
        DECODER_PARITY_INPUT: _stack(parities, _zeros_like_first(parities)),
        DECODER_OUTPUTS_INPUT: _stack(members, _zeros_like_first(members + parities)),
        DECODER_AVAILABLE_INPUT: np.array([answer is not None for answer in members + parities], dtype=np.float32),
    }


def _zeros_like_first(answers: Sequence[np.ndarray | None]) -> np.ndarray:
    """Zeros shaped as the first answer that arrived: what a missing answer's rows hold (the decoder ignores them)."""
    return np.zeros_like(next(answer for answer in answers if answer is not None))


def _stack(answers: Sequence[np.ndarray | None], template: np.ndarray) -> np.ndarray:
    return np.stack([template if answer is None else answer for answer in answers])


def group_code(config: OrchestratorConfig, target: Callable[[str], Target]) -> GroupCode:
    """The endpoint's code: in process for a linear code with ``inline_code``, else the code models, which
    ``target(name)`` reaches (called only then)."""
    if config.code_weights and config.inline_code:
        return InlineLinearCode(np.array(config.code_weights, dtype=np.float64), config.output_names)
    return CodeModels(target(config.encoder_model), target(config.decoder_model), config.output_names)

"""Codes as torch modules with the tensor signatures of ``contract.py``, looked up by a short registered name.

Each encoder and decoder is exported as its own network and served as its own Triton model, so they are plain
``nn.Module``s whose forward takes and returns the contract's tensors, with k and B left dynamic.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from parm.backend.orchestrator import contract


class Encoder(nn.Module, abc.ABC):
    """Maps k queries to r parity queries: ``queries`` [k, B, *q] -> ``parity_queries`` [r, B, *q]."""

    input_name = contract.ENCODER_INPUT
    output_name = contract.ENCODER_OUTPUT

    def __init__(self, k: int, r: int) -> None:
        super().__init__()
        if k < 2 or r < 1:
            raise ValueError(f"a code needs k >= 2 and r >= 1, got k={k}, r={r}")
        self.k, self.r = k, r

    @abc.abstractmethod
    def forward(self, queries: torch.Tensor) -> torch.Tensor: ...


class Decoder(nn.Module, abc.ABC):
    """Fills erased answers: (``parity_outputs`` [r, B, *o], ``outputs`` [k, B, *o], ``available`` [k]) ->
    ``decoded`` [k, B, *o]."""

    input_names = (contract.DECODER_PARITY_INPUT, contract.DECODER_OUTPUTS_INPUT, contract.DECODER_AVAILABLE_INPUT)
    output_name = contract.DECODER_OUTPUT

    def __init__(self, k: int, r: int) -> None:
        super().__init__()
        if k < 2 or r < 1:
            raise ValueError(f"a code needs k >= 2 and r >= 1, got k={k}, r={r}")
        self.k, self.r = k, r

    @abc.abstractmethod
    def forward(self, parity_outputs: torch.Tensor, outputs: torch.Tensor, available: torch.Tensor) -> torch.Tensor: ...


class SumEncoder(Encoder):
    """ParM's addition code: the single parity query is the sum of the k queries."""

    def __init__(self, k: int) -> None:
        super().__init__(k, r=1)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        return queries.sum(dim=0, keepdim=True)


class SubtractionDecoder(Decoder):
    """ParM's subtraction decoder: an erased answer is the parity output minus the available answers.

    With r = 1 it rebuilds one erasure; if more slots are erased they all receive the same (wrong) value, so callers
    decode only when at most one slot is missing. Erased slots may hold any value, NaN included: they are masked
    with ``where``, never multiplied by zero.
    """

    def __init__(self, k: int) -> None:
        super().__init__(k, r=1)

    def forward(self, parity_outputs: torch.Tensor, outputs: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        mask = (available > 0.5).reshape([-1] + [1] * (outputs.dim() - 1))
        arrived = torch.where(mask, outputs, torch.zeros_like(outputs))
        rebuilt = parity_outputs[0:1] - arrived.sum(dim=0, keepdim=True)
        return torch.where(mask, outputs, rebuilt)


@dataclass(frozen=True)
class Code:
    """A registered code: how to build its encoder and decoder for a given k, and whether it needs a parity model."""

    name: str
    make_encoder: Callable[[int], Encoder]
    make_decoder: Callable[[int], Decoder]
    needs_parity_model: bool


_CODES: dict[str, Code] = {}


def register_code(code: Code) -> None:
    """Add a code under its name; a name can be registered once."""
    if code.name in _CODES:
        raise ValueError(f"code {code.name!r} is already registered")
    _CODES[code.name] = code


def get_code(name: str) -> Code:
    """The code registered as ``name``; the error lists the known names."""
    try:
        return _CODES[name]
    except KeyError:
        raise KeyError(f"unknown code {name!r}; known codes: {sorted(_CODES)}") from None


register_code(Code("sum", SumEncoder, SubtractionDecoder, needs_parity_model=True))

"""Codes as torch modules with the tensor signatures of ``contract.py``, looked up by a short registered name.

Each encoder and decoder is exported as its own network and served as its own Triton model, so they are plain
``nn.Module``s whose forward takes and returns the contract's tensors, with B left dynamic (and k too, for codes whose
networks take any number of members). This module holds the interfaces, the registry and ParM's sum code; the
other built-in codes register themselves from their own modules (``concat``, ``linear_codes``, ``berrut``,
``learned``), imported on the first lookup.
"""

from __future__ import annotations

import abc
import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from torch import nn

from parm.backend.orchestrator import contract
from parm.backend.orchestrator.groups import rebuildable
from parm.errors import ConfigError


def check_shape(k: int, r: int, what: str = "a code") -> None:
    """Every code needs k >= 2 members and r >= 1 parities."""
    if k < 2 or r < 1:
        raise ConfigError(f"{what} needs k >= 2 and r >= 1, got k={k}, r={r}")


class Encoder(nn.Module, abc.ABC):
    """Maps k queries to r parity queries: ``queries`` [k, B, *q] -> ``parity_queries`` [r, B, *q]."""

    input_name = contract.ENCODER_INPUT
    output_name = contract.ENCODER_OUTPUT

    def __init__(self, k: int, r: int) -> None:
        super().__init__()
        check_shape(k, r)
        self.k, self.r = k, r

    @abc.abstractmethod
    def forward(self, queries: torch.Tensor) -> torch.Tensor: ...

    def target_weights(self) -> torch.Tensor:
        """[r, k]: parity model j is trained to answer ``sum_i W[j, i] F(X_i)``. Only codes with trained parity
        models (``ParityKind.TRAINED``) define it."""
        raise NotImplementedError(f"{type(self).__name__} has no trained parity models")

    def parity_targets(self, members: torch.Tensor) -> torch.Tensor:
        """What the trained parity models answer for F's answers to the members ``members`` [k, b, *o]: [r, b, *p].
        ParM's codes: the weighted sums of ``target_weights`` (p = o); a code whose parity model answers in
        another shape (the collage's k heads) overrides it."""
        weights = self.target_weights()
        return (weights @ members.flatten(1)).reshape(self.r, *members.shape[1:])


class Decoder(nn.Module, abc.ABC):
    """Fills erased answers: (``parity_outputs`` [r, B, *o], ``outputs`` [k, B, *o], ``available`` [k + r]) ->
    ``decoded`` [k, B, *o].

    ``available`` flags the k members' answers, then the r parity answers (1.0 = arrived). A missing parity's rows
    may hold any value, as an erased member's may: decoders that rebuild from a subset of parities (linear solve,
    Berrut, learned) mask them; the r = 1 subtraction decoders are only called with their parity present.
    """

    input_names = (contract.DECODER_PARITY_INPUT, contract.DECODER_OUTPUTS_INPUT, contract.DECODER_AVAILABLE_INPUT)
    output_name = contract.DECODER_OUTPUT

    def __init__(self, k: int, r: int) -> None:
        super().__init__()
        check_shape(k, r)
        self.k, self.r = k, r

    @abc.abstractmethod
    def forward(self, parity_outputs: torch.Tensor, outputs: torch.Tensor, available: torch.Tensor) -> torch.Tensor: ...

    def can_rebuild(self, erased: Sequence[int], parities: Sequence[int]) -> bool:
        """Whether the answers of the ``parities`` that arrived determine the ``erased`` members: the orchestrator's
        rule (``groups.rebuildable``); here, as for an MDS code, whenever there are at least as many of them."""
        return rebuildable(None, parities, erased)


def erased_mask(available: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The members' part of ``available`` [k + r] as a boolean mask broadcastable against ``like`` [k, B, *o]
    (True = arrived)."""
    return (available[: like.shape[0]] > 0.5).reshape([-1] + [1] * (like.dim() - 1))


def parity_mask(available: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The parities' part of ``available`` [k + r] as a boolean mask broadcastable against ``like`` [r, B, *o]
    (True = arrived); ``like`` is the parity outputs."""
    return (available[available.shape[0] - like.shape[0] :] > 0.5).reshape([-1] + [1] * (like.dim() - 1))


def availability(k: int, r: int, erased: Sequence[int] = (), lost_parities: Sequence[int] = ()) -> torch.Tensor:
    """The decoders' ``available`` [k + r] input: every answer arrived except the ``erased`` members and the
    ``lost_parities``."""
    available = torch.ones(k + r)
    available[list(erased)] = 0.0
    available[[k + j for j in lost_parities]] = 0.0
    return available


class SumEncoder(Encoder):
    """ParM's addition code: the single parity query is the sum of the k queries."""

    def __init__(self, k: int) -> None:
        super().__init__(k, r=1)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        return queries.sum(dim=0, keepdim=True)

    def target_weights(self) -> torch.Tensor:
        return torch.ones(1, self.k)


class SubtractionDecoder(Decoder):
    """ParM's subtraction decoder: an erased answer is the parity output minus the available answers.

    With r = 1 it rebuilds one erasure; if more slots are erased they all receive the same (wrong) value, so callers
    decode only when at most one slot is missing. Erased slots may hold any value, NaN included: they are masked
    with ``where``, never multiplied by zero.
    """

    def __init__(self, k: int) -> None:
        super().__init__(k, r=1)

    def forward(self, parity_outputs: torch.Tensor, outputs: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        mask = erased_mask(available, outputs)
        arrived = torch.where(mask, outputs, torch.zeros_like(outputs))
        rebuilt = parity_outputs[0:1] - arrived.sum(dim=0, keepdim=True)
        return torch.where(mask, outputs, rebuilt)


class ParityKind(Enum):
    """What answers a code's parity queries."""

    TRAINED = "trained"
    """One parity model per parity query, trained so its answer approximates F's answers combined (ParM)."""
    F = "f"
    """F itself answers the parity queries (learned codes, Berrut): nothing is trained for the parity side."""


@dataclass(frozen=True)
class CodeShape:
    """What a code's networks are built for: k queries, r parities, one query's shape and one answer's shape."""

    k: int
    r: int = 1
    query_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    image_shape: tuple[int, ...] | None = None
    """[C, H, W] when the queries are images given flat (an MLP F on 784 pixels): image codes tile them as such."""

    @property
    def image(self) -> tuple[int, ...]:
        """The queries as images [C, H, W]: ``image_shape``, or ``query_shape`` itself; a clear error otherwise."""
        image = self.image_shape or self.query_shape
        if len(image) != 3 or math.prod(image) != math.prod(self.query_shape):
            raise ConfigError(
                f"this code needs image queries [C, H, W]; queries are {list(self.query_shape)}"
                + (f" and image shape {list(self.image_shape)} does not hold them" if self.image_shape else "")
                + " (give a flat F's image shape with --image-shape C,H,W)"
            )
        return tuple(image)


@dataclass(frozen=True)
class Selection:
    """What a code's ``select`` chose on validation: its networks, and the chosen parameters in words (reported)."""

    encoder: Encoder
    decoder: Decoder
    chosen: str


@dataclass(frozen=True)
class Code:
    """A registered code: how to build its encoder and decoder, what answers its parities, which k and r it takes.

    ``trainable`` codes (learned codes) have encoder/decoder weights trained end to end through F; the others are
    fixed maps. ``ks`` lists the k the code is defined for (None: any k >= 2); ``max_r`` caps r (None: any r >= 1).
    """

    name: str
    make_encoder: Callable[[CodeShape], Encoder]
    make_decoder: Callable[[CodeShape], Decoder]
    parity: ParityKind
    summary: str
    title: str = ""
    """A short human name for reports (defaults to ``name``)."""
    trainable: bool = False
    ks: tuple[int, ...] | None = None
    max_r: int | None = 1
    k_is_dynamic: bool = False
    """True when the networks work for any number of stacked members (their exports keep a symbolic k axis)."""
    linear_weights: Callable[[int, int], np.ndarray] | None = None
    """(k, r) -> the [r, k] weights when the encoder is exactly that weighted sum of the queries and the decoder its
    linear solve: the orchestrator can then encode and decode in process (``code_weights``) without calling the
    encoder and decoder models. None for every other code."""
    parity_output: Callable[[CodeShape], tuple[int, ...]] | None = None
    """The shape of one trained parity model's answer when it is not F's (the collage's k heads: [k, *o]);
    None: F's output shape."""
    select: Callable[[CodeShape, nn.Module, np.ndarray, int], Selection] | None = None
    """Training-free codes with free parameters (LeTCC's smoothing): (shape, F, validation queries [N, *q], seed)
    -> the encoder and decoder whose parameters rebuilt F's answers best on validation. None: nothing to choose
    (``make_encoder``/``make_decoder`` build the code)."""

    def check(self, k: int, r: int) -> None:
        """Raises ``ConfigError`` naming the code when it is not defined for this k and r."""
        check_shape(k, r, f"code {self.name!r}")
        if self.ks is not None and k not in self.ks:
            raise ConfigError(f"code {self.name!r} is defined for k in {list(self.ks)}, got k={k}")
        if self.max_r is not None and r > self.max_r:
            raise ConfigError(f"code {self.name!r} has at most r={self.max_r} parities, got r={r}")

    def parity_output_shape(self, shape: CodeShape) -> tuple[int, ...]:
        """One parity answer's shape, without the batch axis."""
        return tuple(self.parity_output(shape)) if self.parity_output is not None else tuple(shape.output_shape)

    def encoder(self, shape: CodeShape) -> Encoder:
        self.check(shape.k, shape.r)
        return self.make_encoder(shape)

    def decoder(self, shape: CodeShape) -> Decoder:
        self.check(shape.k, shape.r)
        return self.make_decoder(shape)


_CODES: dict[str, Code] = {}
_BUILTIN_MODULES = ("concat", "collage", "linear_codes", "berrut", "letcc", "learned")
"""Modules under ``parm.export`` that register the built-in codes besides ``sum`` (imported on first lookup, since
they import this module for the base classes)."""
_builtins_loaded = False


def register_code(code: Code) -> None:
    """Add a code under its name; a name can be registered once."""
    if code.name in _CODES:
        raise ValueError(f"code {code.name!r} is already registered")
    _CODES[code.name] = code


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(f"{__package__}.{module}")


def get_code(name: str) -> Code:
    """The code registered as ``name``; the error lists the known names."""
    _load_builtins()
    try:
        return _CODES[name]
    except KeyError:
        raise ConfigError(f"unknown code {name!r}; known codes: {sorted(_CODES)}") from None


def code_names() -> list[str]:
    """Every registered code's name, sorted."""
    _load_builtins()
    return sorted(_CODES)


register_code(
    Code(
        "sum",
        lambda shape: SumEncoder(shape.k),
        lambda shape: SubtractionDecoder(shape.k),
        ParityKind.TRAINED,
        "ParM: parity query = sum of the k queries, parity model trained to F's summed answers, subtraction decoder",
        title="ParM sum",
        k_is_dynamic=True,
        linear_weights=lambda k, r: np.ones((r, k), dtype=np.float32),
    )
)

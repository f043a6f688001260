"""Learned codes (Kosaian, Rashmi, Venkataraman, "Learning a Code", 2018): encoder and decoder are small networks.

F stays fixed and answers the r parity queries itself; the encoder network maps the k queries to r parity queries and
the decoder network maps the k + r answers (missing ones masked to zero, plus the availability mask) to the k answers.
Both are trained end to end through the frozen F with a loss on the erased slots only (``train.train_learned_code``).

- ``learned``: MLP encoder over the k flattened queries (the paper's MLP encoder).
- ``learned-conv``: convolutional encoder over the k images stacked as channels, with dilated 3x3 convolutions so
  each parity pixel sees a wide neighbourhood of every member (the paper's convolutional encoder).

Both decoders are MLPs over the k + r outputs. Available slots always pass through unchanged (``where``), so only
erased slots depend on the decoder.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from parm.errors import ConfigError

from .code_registry import Code, Decoder, Encoder, ParityKind, erased_mask, parity_mask, register_code

HIDDEN = 256
"""Width of the encoder and decoder MLPs' hidden layers."""
CONV_CHANNELS = 16
CONV_DILATIONS = (1, 2, 1)
"""The conv encoder: 3x3 convolutions of 16 channels dilated 1, 2, 1 (receptive field 9x9), then a 1x1 to r*C
channels; about 12% of the default F's multiply-accumulates per query at k = 2."""


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs)
    )


class MLPEncoder(Encoder):
    """[k, B, *q] -> [r, B, *q] through an MLP over the k flattened queries of each batch row."""

    def __init__(self, k: int, r: int, query_shape: tuple[int, ...], hidden: int = HIDDEN) -> None:
        super().__init__(k, r)
        if not query_shape:
            raise ConfigError("a learned encoder needs the query shape")
        self.query_shape = tuple(query_shape)
        size = math.prod(self.query_shape)
        self.net = _mlp(k * size, hidden, r * size)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        rows = queries.transpose(0, 1).flatten(1)  # [B, k*Q]
        return self.net(rows).reshape((-1, self.r, *self.query_shape)).transpose(0, 1)


class ConvEncoder(Encoder):
    """[k, B, C, H, W] -> [r, B, C, H, W]: the k images as k*C channels through dilated 3x3 convolutions."""

    def __init__(self, k: int, r: int, query_shape: tuple[int, ...], channels: int = CONV_CHANNELS) -> None:
        super().__init__(k, r)
        if len(query_shape) != 3:
            raise ConfigError(f"the convolutional encoder needs image queries [C, H, W], got {query_shape}")
        self.query_shape = tuple(query_shape)
        c = query_shape[0]
        layers: list[nn.Module] = []
        width = k * c
        for dilation in CONV_DILATIONS:
            layers += [nn.Conv2d(width, channels, 3, padding=dilation, dilation=dilation), nn.ReLU()]
            width = channels
        layers.append(nn.Conv2d(width, r * c, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        c, h, w = self.query_shape
        stacked = queries.transpose(0, 1).reshape(-1, self.k * c, h, w)
        return self.net(stacked).reshape(-1, self.r, c, h, w).transpose(0, 1)


class MLPDecoder(Decoder):
    """Rebuilds erased answers with an MLP over the masked k answers, the masked r parity answers and the k + r
    availability flags (with r > 1 it is trained with lost parities too, ``train.train_learned_code``)."""

    def __init__(self, k: int, r: int, output_shape: tuple[int, ...], hidden: int = HIDDEN) -> None:
        super().__init__(k, r)
        if not output_shape:
            raise ConfigError("a learned decoder needs the output shape")
        self.output_size = math.prod(output_shape)
        self.net = _mlp((k + r) * (self.output_size + 1), hidden, k * self.output_size)

    def forward(self, parity_outputs: torch.Tensor, outputs: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        mask = erased_mask(available, outputs)
        arrived = torch.where(mask, outputs, torch.zeros_like(outputs))
        parity = torch.where(parity_mask(available, parity_outputs), parity_outputs, torch.zeros_like(parity_outputs))
        batch_rows = arrived.transpose(0, 1).flatten(1)  # [B, k*O]
        parity_rows = parity.transpose(0, 1).flatten(1)  # [B, r*O]
        flags = (available > 0.5).to(outputs.dtype).unsqueeze(0).expand(batch_rows.shape[0], self.k + self.r)
        rebuilt = self.net(torch.cat([batch_rows, parity_rows, flags], dim=1))  # [B, k*O]
        rebuilt = rebuilt.reshape(-1, self.k, self.output_size).transpose(0, 1).reshape_as(outputs)
        return torch.where(mask, outputs, rebuilt)


register_code(
    Code(
        "learned",
        lambda shape: MLPEncoder(shape.k, shape.r, shape.query_shape),
        lambda shape: MLPDecoder(shape.k, shape.r, shape.output_shape),
        ParityKind.F,
        "learned code: MLP encoder and MLP decoder trained end to end through the frozen F (F answers the parities)",
        title="learned code (MLP encoder)",
        trainable=True,
        max_r=None,
    )
)
register_code(
    Code(
        "learned-conv",
        lambda shape: ConvEncoder(shape.k, shape.r, shape.query_shape),
        lambda shape: MLPDecoder(shape.k, shape.r, shape.output_shape),
        ParityKind.F,
        "learned code: dilated-CNN encoder and MLP decoder trained end to end through the frozen F",
        title="learned code (conv encoder)",
        trainable=True,
        max_r=None,
    )
)

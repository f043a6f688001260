"""ParM's concatenation encoder for image queries: the k images, downsampled, tiled into one image of the same size.

ParM's authors report it as their most accurate encoder for images: the parity model sees every member at a lower
resolution, side by side, instead of k images summed on top of each other. The parity model is still trained so that
Fp(P) ~ F(X1) + ... + F(Xk), so the decoder is ParM's subtraction decoder.

- k = 2: each [C, H, W] image is average-pooled over pairs of columns to [C, H, W/2]; the halves sit side by side.
- k = 4: each image is average-pooled 2x2 to [C, H/2, W/2]; the four sit in the quadrants (1 2 / 3 4).
"""

from __future__ import annotations

import torch
from torch import nn

from parm.errors import ConfigError

from .code_registry import Code, Encoder, ParityKind, SubtractionDecoder, register_code

CONCAT_KS = (2, 4)


class ConcatEncoder(Encoder):
    """``queries`` [k, B, C, H, W] -> ``parity_queries`` [1, B, C, H, W], the k images downsampled and tiled."""

    def __init__(self, k: int, query_shape: tuple[int, ...] = ()) -> None:
        super().__init__(k, r=1)
        if k not in CONCAT_KS:
            raise ConfigError(f"the concatenation encoder tiles k = 2 (side by side) or 4 (quadrants), got k={k}")
        if query_shape:
            if len(query_shape) != 3:
                raise ConfigError(f"the concatenation encoder needs image queries [C, H, W], got {query_shape}")
            _, height, width = query_shape
            if width % 2 or (k == 4 and height % 2):
                raise ConfigError(
                    f"k={k} tiling needs {'H and W' if k == 4 else 'W'} even, got [H, W]=[{height}, {width}]"
                )
        self.pool = nn.AvgPool2d(kernel_size=(1, 2) if k == 2 else (2, 2))

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        k, batch = queries.shape[0], queries.shape[1]
        small = self.pool(queries.flatten(0, 1))  # [k*B, C, h, w]
        small = small.reshape(k, batch, *small.shape[1:])
        if self.k == 2:
            tiled = torch.cat([small[0], small[1]], dim=-1)
        else:
            top = torch.cat([small[0], small[1]], dim=-1)
            bottom = torch.cat([small[2], small[3]], dim=-1)
            tiled = torch.cat([top, bottom], dim=-2)
        return tiled.unsqueeze(0)

    def target_weights(self) -> torch.Tensor:
        return torch.ones(1, self.k)


register_code(
    Code(
        "concat",
        lambda shape: ConcatEncoder(shape.k, shape.query_shape),
        lambda shape: SubtractionDecoder(shape.k),
        ParityKind.TRAINED,
        "ParM for images: the k queries downsampled and tiled (k=2 side by side, k=4 quadrants), subtraction decoder",
        ks=CONCAT_KS,
        title="ParM concatenation",
    )
)

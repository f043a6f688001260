"""ParM's concatenation encoder for image queries: the k images, downsampled, tiled into one image of the same size.

ParM's authors report it as their most accurate encoder for images: the parity model sees every member at a lower
resolution, side by side, instead of k images summed on top of each other. The parity model is still trained so that
Fp(P) ~ F(X1) + ... + F(Xk), so the decoder is ParM's subtraction decoder. The collage code (``collage``) tiles the
same way and answers every member on its own head instead.

- k = 2: each [C, H, W] image is average-pooled over pairs of columns to [C, H, W/2]; the halves sit side by side.
- k = 3 and 4: each image is average-pooled 2x2 to [C, H/2, W/2]; they sit in the quadrants (1 2 / 3 4), the fourth
  tile empty (zeros) for k = 3.

Queries given flat (an MLP F on 784 pixels) are tiled as the images ``CodeShape.image_shape`` says they are, and the
tiled image is flattened back: the parity query keeps F's input shape.
"""

from __future__ import annotations

import torch
from torch import nn

from parm.errors import ConfigError

from .code_registry import Code, CodeShape, Encoder, ParityKind, SubtractionDecoder, register_code

TILED_KS = (2, 3, 4)


def tile_grid(k: int) -> tuple[int, int]:
    """(rows, columns) of the tiling of k images: side by side for 2, a 2x2 grid for 3 and 4."""
    return (1, 2) if k == 2 else (2, 2)


class TiledEncoder(Encoder):
    """``queries`` [k, B, *q] -> ``parity_queries`` [1, B, *q]: the k images downsampled and tiled into one."""

    def __init__(self, k: int, query_shape: tuple[int, ...] = (), image_shape: tuple[int, ...] | None = None) -> None:
        super().__init__(k, r=1)
        if k not in TILED_KS:
            raise ConfigError(f"tiling takes k = 2 (side by side), 3 or 4 (quadrants), got k={k}")
        self.image_shape: tuple[int, ...] = ()
        if query_shape:
            self.image_shape = CodeShape(k, 1, tuple(query_shape), image_shape=image_shape).image
            _, height, width = self.image_shape
            if width % 2 or (k > 2 and height % 2):
                raise ConfigError(
                    f"k={k} tiling needs {'H and W' if k > 2 else 'W'} even, got [H, W]=[{height}, {width}]"
                )
        self.pool = nn.AvgPool2d(kernel_size=(1, 2) if k == 2 else (2, 2))

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        k, batch, query_shape = queries.shape[0], queries.shape[1], queries.shape[2:]
        images = queries.reshape(k * batch, *self.image_shape) if self.image_shape else queries.flatten(0, 1)
        small = self.pool(images)  # [k*B, C, h, w]
        small = small.reshape(k, batch, *small.shape[1:])
        if self.k == 2:
            tiled = torch.cat([small[0], small[1]], dim=-1)
        else:
            fourth = small[3] if self.k == 4 else torch.zeros_like(small[0])
            top = torch.cat([small[0], small[1]], dim=-1)
            bottom = torch.cat([small[2], fourth], dim=-1)
            tiled = torch.cat([top, bottom], dim=-2)
        return tiled.reshape(1, batch, *query_shape)


class ConcatEncoder(TiledEncoder):
    """ParM's concatenation: the tiled image, its parity model trained to the sum of the members' answers."""

    def target_weights(self) -> torch.Tensor:
        return torch.ones(1, self.k)


register_code(
    Code(
        "concat",
        lambda shape: ConcatEncoder(shape.k, shape.query_shape, shape.image_shape),
        lambda shape: SubtractionDecoder(shape.k),
        ParityKind.TRAINED,
        "ParM for images: the k queries downsampled and tiled (k=2 side by side, k=3, 4 quadrants), subtraction "
        "decoder",
        ks=TILED_KS,
        title="ParM concatenation",
    )
)

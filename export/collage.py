"""The collage code: one parity model classifies a tiled image of the k queries at once, with one head per tile.

ParM's sum and concatenation codes ask a parity model for the *sum* of k answers, and a sum loses which answer was
which: degraded-mode accuracy falls fast with k. The collage keeps the members apart. Its parity query is the
concatenation encoder's tiled image (``concat.TiledEncoder``: k = 2 side by side, 3 and 4 in a 2x2 grid with an
empty tile for 3) and its parity model, F's architecture with its last linear layer widened to k heads
(``models.MultiHead``), answers [k, *o]: head i is trained to match F's answer to member i (MSE on logits, or KL to
F's softmax with the ``kl`` option). The decoder answers an erased member with its tile's head; the answers that
arrived stay F's own (systematic).

Since every head answers its own member, one parity answer could rebuild any number of erased members; the
orchestrator's rule (one erasure per parity, as for every non-linear code) is kept so that serving and the reported
accuracy agree.
"""

from __future__ import annotations

import torch

from .code_registry import Code, Decoder, ParityKind, erased_mask, register_code
from .concat import TILED_KS, TiledEncoder


class CollageEncoder(TiledEncoder):
    """The tiled parity query; its parity model is trained to answer every member's F answer on its own head."""

    def parity_targets(self, members: torch.Tensor) -> torch.Tensor:
        """[k, b, *o] -> [1, b, k, *o]: head i's target is F's answer to member i."""
        return members.transpose(0, 1).unsqueeze(0)


class CollageDecoder(Decoder):
    """``parity_outputs`` [1, B, k, *o] -> an erased member's answer is its head; arrived answers pass through."""

    def __init__(self, k: int) -> None:
        super().__init__(k, r=1)

    def forward(self, parity_outputs: torch.Tensor, outputs: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        heads = parity_outputs[0].transpose(0, 1)  # [k, B, *o]
        return torch.where(erased_mask(available, outputs), outputs, heads)


register_code(
    Code(
        "collage",
        lambda shape: CollageEncoder(shape.k, shape.query_shape, shape.image_shape),
        lambda shape: CollageDecoder(shape.k),
        ParityKind.TRAINED,
        "Collage: the k queries downsampled and tiled into one image, a parity model with one head per tile "
        "trained to F's answer to each member, the erased member's head answers",
        ks=TILED_KS,
        title="Collage",
        parity_output=lambda shape: (shape.k, *shape.output_shape),
    )
)

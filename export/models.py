"""The default deployed model F (a small digits CNN) and the builder of ParM parity models from F.

ParM's rule is that the parity model has F's architecture, trained afresh; ``build_parity_model`` follows it, with an
explicit, opt-in ``width`` for a wider parity network when F's own size cannot carry the sum of k answers.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

DIGITS_INPUT = "input"
"""F's (and the parity model's) input tensor name: FP32 [B, 1, 8, 8]."""
DIGITS_OUTPUT = "logits"
"""F's (and the parity model's) output tensor name: FP32 [B, 10]."""
DIGITS_QUERY_SHAPE = (1, 8, 8)
DIGITS_CLASSES = 10


class DigitsCNN(nn.Module):
    """Two 3x3 conv layers, one 2x2 max-pool and a two-layer head: [B, 1, 8, 8] -> logits [B, 10].

    ``width`` multiplies every hidden size (channels and head), so a wider copy keeps the same topology.
    """

    def __init__(self, width: int = 1) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.width = width
        c1, c2, hidden = 32 * width, 64 * width, 128 * width
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 4 * 4, hidden),
            nn.ReLU(),
            nn.Dropout(0.25),
            nn.Linear(hidden, DIGITS_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_parity_model(f_model: nn.Module, width: int = 1) -> nn.Module:
    """A freshly initialised network with F's architecture (ParM's rule), in training mode.

    ``width > 1`` (a documented deviation from the rule) builds a wider copy; only a ``DigitsCNN`` F supports it,
    since widening needs to know the architecture. Initialisation draws from torch's global RNG: seed it first.
    """
    if width == 1:
        parity = copy.deepcopy(f_model)
        for module in parity.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        for parameter in parity.parameters():
            parameter.requires_grad_(True)
        return parity.train()
    if not isinstance(f_model, DigitsCNN):
        raise ValueError(f"a wider parity model needs a DigitsCNN F, got {type(f_model).__name__}")
    return DigitsCNN(width=f_model.width * width).train()

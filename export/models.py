"""The default deployed model F (a small digits CNN) and the builder of ParM parity models from F.

ParM's rule is that the parity model has F's architecture, trained afresh; ``build_parity_model`` follows it, with an
explicit, opt-in ``width`` for a wider parity network when F's own size cannot carry the sum of k answers.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import torch
from torch import nn

from parm.backend.orchestrator import TensorSpec
from parm.errors import ConfigError

DIGITS_INPUT = "input"
"""F's (and the parity model's) input tensor name: FP32 [B, 1, 8, 8]."""
DIGITS_OUTPUT = "logits"
"""F's (and the parity model's) output tensor name: FP32 [B, 10]."""
DIGITS_QUERY_SHAPE = (1, 8, 8)
DIGITS_CLASSES = 10
DIGITS_INPUT_SPEC = TensorSpec(DIGITS_INPUT, np.dtype(np.float32), DIGITS_QUERY_SHAPE)
DIGITS_OUTPUT_SPEC = TensorSpec(DIGITS_OUTPUT, np.dtype(np.float32), (DIGITS_CLASSES,))
"""The digits F's signature, as the repository writer and the orchestrator see it (without the batch axis)."""


class DigitsCNN(nn.Module):
    """Two 3x3 conv layers, one 2x2 max-pool and a two-layer head: [B, 1, 8, 8] -> logits [B, 10].

    ``width`` multiplies every hidden size (channels and head), so a wider copy keeps the same topology.
    """

    def __init__(self, width: int = 1) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"width must be >= 1, got {width}")
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
    """A freshly initialised network with F's architecture (ParM's rule), without dropout, in training mode.

    Dropout is switched off (``without_dropout``): it changes nothing at inference, and a parity model underfits
    its regression rather than overfitting it. ``width > 1`` (a documented deviation from the rule) builds a wider
    copy; only a ``DigitsCNN`` F supports it, since widening needs to know the architecture. Initialisation draws
    from torch's global RNG: seed it first.
    """
    if width == 1:
        parity = copy.deepcopy(f_model)
        for module in parity.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        for parameter in parity.parameters():
            parameter.requires_grad_(True)
    elif isinstance(f_model, DigitsCNN):
        parity = DigitsCNN(width=f_model.width * width)
    else:
        raise ConfigError(f"a wider parity model needs a DigitsCNN F, got {type(f_model).__name__}")
    return without_dropout(parity).train()


_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def without_dropout(model: nn.Module) -> nn.Module:
    """``model`` with the rate of every dropout layer set to 0, so training sees the network inference runs.

    F's dropout fights overfitting its labels. A parity model regresses sums of F's answers over many random groups
    of queries and fits them too loosely, not too closely: on digits at k = 4 it rebuilt 2.6 points more of F's
    answers on the training split than on validation, and dropout's noise cost it more (validation agreement 90.9%
    with dropout, 93.0% without, same budget).
    """
    for module in model.modules():
        if isinstance(module, _DROPOUTS):
            module.p = 0.0
    return model


class _ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity shortcut (ResNet's basic block, fixed width)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class DeepDigitsCNN(nn.Module):
    """A deeper residual CNN on the same digits: [B, 1, 8, 8] -> logits [B, 10], for benchmarks.

    The default F (``DigitsCNN``) answers in well under a millisecond, cheaper than the orchestration around it; a
    benchmark of tail latency needs an F whose inference costs what a real model costs relative to that overhead.
    This one upsamples the query (nearest, ``upsample`` x), runs a stem convolution and ``blocks`` residual blocks
    of ``width`` channels, then global-average-pools into a linear head. The defaults take about 4 ms per query on
    one thread of a server CPU in onnxruntime (batch norm is folded into the convolutions at load). ParM's parity
    model is the same architecture, re-initialised (``build_parity_model`` deep-copies and resets it).
    """

    def __init__(self, width: int = 80, blocks: int = 12, upsample: int = 2) -> None:
        super().__init__()
        if width < 1 or blocks < 1 or upsample < 1:
            raise ConfigError(f"width, blocks and upsample must be >= 1, got {width}, {blocks}, {upsample}")
        self.width, self.blocks, self.upsample = width, blocks, upsample
        self.features = nn.Sequential(
            nn.Upsample(scale_factor=upsample, mode="nearest") if upsample > 1 else nn.Identity(),
            nn.Conv2d(DIGITS_QUERY_SHAPE[0], width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            *(_ResidualBlock(width) for _ in range(blocks)),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, DIGITS_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BaseMLP(nn.Module):
    """ParM's base-MLP: flat queries [D] -> two ReLU layers of 200 and 100 -> logits [classes].

    ParM's smallest F for MNIST and Fashion-MNIST (784-200-100-10, pixels in [0, 1]); the reference row of
    ``parm eval`` on Fashion-MNIST reproduces ParM's recipe on it.
    """

    def __init__(self, in_features: int = 784, classes: int = 10, hidden: tuple[int, ...] = (200, 100)) -> None:
        super().__init__()
        if in_features < 1 or classes < 1 or not hidden or min(hidden) < 1:
            raise ConfigError(f"BaseMLP needs positive sizes, got {in_features}, {classes}, {hidden}")
        sizes = (in_features, *hidden)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def _downsample(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(),
    )


class SmallResNet(nn.Module):
    """A small residual CNN for image queries [C, H, W] -> logits [classes], the realistic F for 28x28 images.

    ParM used ResNet-18; on 2 CPU cores a network of a few milliseconds per query does: a stem convolution, then 3
    stages of one residual block each (``width``, 2x, 4x channels; the 2nd and 3rd after a stride-2 convolution),
    global average pooling and a linear head. At width 16 on 28x28 it answers in about 1 ms per query on one core
    and reaches about 92% on Fashion-MNIST.
    """

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if channels < 1 or classes < 1 or width < 1:
            raise ConfigError(f"SmallResNet needs positive sizes, got {channels}, {classes}, {width}")
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            _ResidualBlock(width),
            _downsample(width, 2 * width),
            _ResidualBlock(2 * width),
            _downsample(2 * width, 4 * width),
            _ResidualBlock(4 * width),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --- Parity networks for an F without torch source, and the cheap backup baseline (issue 3) ---------------------


class FamilyCNN(nn.Module):
    """A configurable CNN for image queries [C, H, W] -> [*output]: two 3x3 conv layers (32w, 64w channels), an
    adaptive 4x4 average pool and a two-layer head (128w). DigitsCNN's shape, for any image size and output size."""

    def __init__(self, query_shape: tuple[int, ...], output_size: int, width: int = 1) -> None:
        super().__init__()
        if len(query_shape) != 3 or width < 1 or output_size < 1:
            raise ConfigError(f"FamilyCNN needs [C, H, W] queries and width >= 1, got {query_shape}, width={width}")
        c1, c2, hidden = 32 * width, 64 * width, 128 * width
        self.net = nn.Sequential(
            nn.Conv2d(query_shape[0], c1, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(c2 * 16, hidden),
            nn.ReLU(),
            nn.Linear(hidden, output_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FamilyMLP(nn.Module):
    """A configurable MLP for any query shape: flatten, two hidden layers of ``256 * width``, linear output."""

    def __init__(self, query_shape: tuple[int, ...], output_size: int, width: int = 1, hidden: int = 256) -> None:
        super().__init__()
        if width < 1 or output_size < 1:
            raise ConfigError(f"FamilyMLP needs width >= 1 and output_size >= 1, got {width}, {output_size}")
        size = 1
        for dim in query_shape:
            size *= dim
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(size, hidden * width),
            nn.ReLU(),
            nn.Linear(hidden * width, hidden * width),
            nn.ReLU(),
            nn.Linear(hidden * width, output_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiHead(nn.Module):
    """``net`` with its last linear layer widened to answer ``prod(shape)`` values, as [B, *shape]: a parity model
    of about ``net``'s cost with one head per member (the collage code, ``shape`` = [k, *o]). The new layer is
    freshly initialised; the rest of ``net`` is kept as given (a fresh copy of F's architecture)."""

    def __init__(self, net: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        linears = [(name, module) for name, module in net.named_modules() if isinstance(module, nn.Linear)]
        if not linears:
            raise ConfigError(f"{type(net).__name__} has no linear layer to widen into heads")
        name, last = linears[-1]
        parent_name, _, attribute = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, attribute, nn.Linear(last.in_features, math.prod(shape)))
        self.net, self.shape = net, tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).unflatten(-1, self.shape)


class TileHeads(nn.Module):
    """A CNN's convolutional trunk with its global average pool split per tile of a collage and one linear head per
    tile: [B, C, H, W] tiled image -> [B, k, *o], about the CNN's own cost.

    A collage parity model must keep the tiles apart: a global average pool mixes the features of every tile into
    one vector before any head reads it. Here the trunk's feature map is averaged over each tile's region of a
    ``grid`` (rows, columns: the tiling's own; tiles in row-major order, the first k used), the regions rounded
    outwards as adaptive pooling does, and head i reads tile i only. Built from a network with ``features`` (the
    trunk) and ``head`` = average pool to 1x1, flatten, linear (``SmallResNet``, ``DeepDigitsCNN``); the head's
    linear layer gives the size of the new heads, freshly initialised.
    """

    def __init__(
        self, net: nn.Module, image_shape: tuple[int, ...], grid: tuple[int, int], shape: tuple[int, ...]
    ) -> None:
        super().__init__()
        if not has_pooled_head(net):
            raise ConfigError(f"{type(net).__name__} has no global-average-pool head to split per tile")
        k, outputs = shape[0], math.prod(shape[1:])
        linear = net.head[-1]
        self.features, self.shape = net.features, tuple(shape)
        with torch.no_grad():
            _, _, height, width = self.features(torch.zeros(1, *image_shape)).shape
        rows, cols = grid
        self.regions = [(_span(i, rows, height), _span(j, cols, width)) for i in range(rows) for j in range(cols)][:k]
        self.weight = nn.Parameter(torch.empty(k, linear.in_features, outputs))
        self.bias = nn.Parameter(torch.zeros(k, outputs))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        tiles = torch.stack([features[:, :, r0:r1, c0:c1].mean(dim=(2, 3)) for (r0, r1), (c0, c1) in self.regions], 1)
        answers = torch.einsum("bkc,kco->bko", tiles, self.weight) + self.bias
        return answers.unflatten(-1, self.shape[1:])


def has_pooled_head(net: nn.Module) -> bool:
    """Whether ``net`` is a trunk (``features``) and a head of global average pool, flatten, linear."""
    head = getattr(net, "head", None)
    return (
        isinstance(getattr(net, "features", None), nn.Module)
        and isinstance(head, nn.Sequential)
        and len(head) == 3
        and isinstance(head[0], nn.AdaptiveAvgPool2d)
        and head[0].output_size in (1, (1, 1))
        and isinstance(head[1], nn.Flatten)
        and isinstance(head[2], nn.Linear)
    )


def _span(index: int, parts: int, size: int) -> tuple[int, int]:
    """The ``index``-th of ``parts`` regions of ``size`` cells, rounded outwards (adaptive pooling's rule)."""
    return index * size // parts, -(-(index + 1) * size // parts)


PARITY_FAMILIES = ("cnn", "mlp")


def build_family_model(kind: str, query_shape: tuple[int, ...], output_size: int, width: int = 1) -> nn.Module:
    """The parity architecture for an F known only by its signature (ONNX, TorchScript): ``cnn`` for image queries
    [C, H, W], ``mlp`` for any; a fresh, training-mode network. Seed torch's global RNG first."""
    if kind == "cnn":
        return FamilyCNN(query_shape, output_size, width).train()
    if kind == "mlp":
        return FamilyMLP(query_shape, output_size, width).train()
    raise ConfigError(f"unknown parity family {kind!r}; known: {list(PARITY_FAMILIES)}")


class BackupMLP(nn.Module):
    """ParM's "approximate backup" baseline: a small MLP (one hidden layer of 32) answering in F's place, trained on
    the same data. Far cheaper than F, so it is the fair cheap alternative to a parity model."""

    def __init__(self, query_shape: tuple[int, ...], output_size: int, hidden: int = 32) -> None:
        super().__init__()
        size = 1
        for dim in query_shape:
            size *= dim
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, output_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """``model``'s answers to ``x`` in eval mode, without gradients, in bounded-memory batches."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

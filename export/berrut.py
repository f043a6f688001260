"""Berrut coding (BACC / ApproxIFER, Jahani-Nezhad and Maddah-Ali, AAAI 2022), in a systematic form: no training.

ApproxIFER places the K queries on a rational interpolant ``u(z)`` (Berrut's: ``u(z) = sum_j w_j(z) X_j`` with
``w_j(z) ~ (-1)^j / (z - alpha_j)``, normalised to sum to 1), evaluates F at N = K + S points ``u(z_n)`` on N workers
and, from whichever N - S answers come back, rebuilds ``F(X_j) ~ r(alpha_j)`` with Berrut's interpolant ``r``
through the (point, answer) pairs that arrived. It needs no training and works for any F; it is approximate (exact for
a constant F, close for a smooth one).

Here it is mapped onto the systematic orchestrator: the N = K + S points are Chebyshev points of the first kind on
[-1, 1], sorted; S of them, spread evenly inside (position ``floor((s + 1) N / (S + 1))``), are the parity points
``z_s`` and the other K are the query nodes ``alpha_j``. Berrut's interpolant passes through its nodes, so
``u(alpha_j) = X_j``: F's answers to the originals are the systematic N - S evaluations, and the S parity queries
``u(z_s)`` are a fixed linear map of the queries (the encoder, r = S, answered by F itself). The decoder interpolates
through the points whose answers arrived (originals and parities alike, as ``available`` [K + S] flags them), with
signs alternating in the sorted order of those points (a cumsum over the mask, which exports to ONNX), and evaluates
at the erased ``alpha_j``. So, as in ApproxIFER, any S missing answers among the N are tolerated: a lost parity just
leaves one point fewer to interpolate through.
"""

from __future__ import annotations

import numpy as np
import torch

from parm.errors import ConfigError

from .code_registry import Code, Decoder, ParityKind, erased_mask, parity_mask, register_code
from .linear_codes import LinearEncoder


def berrut_points(k: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha [k], z [s]): the query nodes and parity points among N = k + s sorted Chebyshev points."""
    if k < 2 or s < 1:
        raise ConfigError(f"Berrut coding needs k >= 2 and s >= 1, got k={k}, s={s}")
    n = k + s
    points = -np.cos((2 * np.arange(n) + 1) * np.pi / (2 * n))  # ascending
    parity_positions = [(j + 1) * n // (s + 1) for j in range(s)]
    is_parity = np.zeros(n, dtype=bool)
    is_parity[parity_positions] = True
    return points[~is_parity], points[is_parity]


def berrut_basis(nodes: np.ndarray, at: np.ndarray) -> np.ndarray:
    """[len(at), len(nodes)]: Berrut's interpolation weights through ``nodes`` (sorted), evaluated at ``at``."""
    diff = at[:, None] - nodes[None, :]
    if np.any(diff == 0):
        raise ValueError("an evaluation point coincides with a node")
    raw = ((-1.0) ** np.arange(len(nodes)))[None, :] / diff
    return raw / raw.sum(axis=1, keepdims=True)


class BerrutEncoder(LinearEncoder):
    """``parity_queries[s] = u(z_s)``: Berrut's interpolant through (alpha_j, X_j), at the parity points."""

    def __init__(self, k: int, s: int) -> None:
        alpha, z = berrut_points(k, s)
        super().__init__(berrut_basis(alpha, z).astype(np.float32))


class BerrutDecoder(Decoder):
    """Berrut interpolation through the available (point, F answer) pairs, evaluated at the erased query nodes."""

    def __init__(self, k: int, s: int) -> None:
        super().__init__(k, s)
        alpha, z = berrut_points(k, s)
        points = np.concatenate([alpha, z])  # in the order of cat([outputs, parity_outputs])
        order = np.argsort(points)
        diff = alpha[:, None] - points[order][None, :]  # [k, N], zero where a node meets itself
        inverse = np.divide(1.0, diff, out=np.zeros_like(diff), where=diff != 0)
        self.register_buffer("order", torch.as_tensor(order, dtype=torch.int64))
        self.register_buffer("inverse", torch.as_tensor(inverse, dtype=torch.float32))

    def forward(self, parity_outputs: torch.Tensor, outputs: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        mask = erased_mask(available, outputs)
        arrived = torch.where(mask, outputs, torch.zeros_like(outputs))
        parity = torch.where(parity_mask(available, parity_outputs), parity_outputs, torch.zeros_like(parity_outputs))
        values = torch.cat([arrived, parity]).index_select(0, self.order).flatten(1)  # [N, B*O], sorted
        present = (available > 0.5).to(outputs.dtype).index_select(0, self.order)
        before = torch.cumsum(present, dim=0) - 1.0  # index of each available point among the available ones
        sign = 1.0 - 2.0 * (before - 2.0 * torch.floor(before / 2.0))
        weights = self.inverse * (present * sign).unsqueeze(0)  # [k, N]
        rebuilt = (weights @ values) / weights.sum(dim=1, keepdim=True)
        return torch.where(mask, outputs, rebuilt.reshape_as(outputs))


register_code(
    Code(
        "berrut",
        lambda shape: BerrutEncoder(shape.k, shape.r),
        lambda shape: BerrutDecoder(shape.k, shape.r),
        ParityKind.F,
        "Berrut / ApproxIFER: no training; S = r parity queries on Berrut's interpolant, answered by F, Berrut decoder",
        max_r=None,
        title="Berrut (ApproxIFER)",
    )
)

"""ParM with r >= 1 parities: r fixed, independent weighted sums of the k queries, one parity model per sum.

Parity model j is trained so that Fp_j(sum_i W[j, i] X_i) ~ sum_i W[j, i] F(X_i). With e <= r answers erased, the
residuals R_j = Fp_j(...) - sum_{i arrived} W[j, i] F(X_i) equal W[:, E] F(X_E): a small linear system, solved in
the decoder. The weights are the first r rows of the DCT-II matrix, ``W[j, i] = T_j(x_i)`` (Chebyshev polynomials
at the k Chebyshev nodes ``x_i``): row 0 is all ones, so r = 1 is exactly ParM's sum code; the rows are orthogonal,
which keeps the decoder's solve well conditioned in float32 (a Vandermonde matrix on positive nodes lost 3 digits at
k = 4, r = 3); and any e <= r columns are a polynomial basis of degree < r at distinct nodes, hence of full column
rank: any e <= r erasures can be rebuilt. With parities lost, e erasures are rebuilt when the rows that arrived span
their columns, which they need not (k = 3: row 1 is zero on the middle slot); ``LinearSystemDecoder.can_rebuild`` and
the orchestrator check exactly that (``groups.rebuildable``).

The decoder is written with fixed-size torch operations only (no ``torch.linalg``: ONNX opset 17 has no solve or
inverse) so it exports to ONNX and runs on any Triton: it forms the normal equations of the erased unknowns,
``(A^T A + diag(available)) x = A^T R`` with ``A`` the rows of the arrived parities and the columns of the erased
slots, whose matrix is symmetric positive definite whenever those rows span those columns, and solves them by
Gaussian elimination unrolled over the k (static) rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from parm.backend.orchestrator.groups import rebuildable
from parm.errors import ConfigError

from .code_registry import Code, Decoder, Encoder, ParityKind, erased_mask, parity_mask, register_code

RIDGE = 1e-6
"""Added to the decoder's diagonal so a call with more than r erasures returns finite (meaningless) values, not NaN;
far below float32 tolerance for the at-most-r erasures the decoder is used for."""


def chebyshev_weights(k: int, r: int) -> np.ndarray:
    """[r, k] weights ``cos(pi * j * (2i + 1) / (2k))``: the first r rows of the DCT-II matrix (row 0 all ones)."""
    if k < 2 or r < 1:
        raise ConfigError(f"weights need k >= 2 and r >= 1, got k={k}, r={r}")
    if r > k:
        raise ConfigError(f"a linear code has at most r = k independent parities, got k={k}, r={r}")
    j, i = np.meshgrid(np.arange(r), np.arange(k), indexing="ij")
    return np.cos(np.pi * j * (2 * i + 1) / (2 * k)).astype(np.float32)


class LinearEncoder(Encoder):
    """``parity_queries[j] = sum_i weights[j, i] * queries[i]`` for fixed weights [r, k]."""

    def __init__(self, weights: np.ndarray | torch.Tensor) -> None:
        weights = torch.as_tensor(np.asarray(weights, dtype=np.float32))
        if weights.dim() != 2:
            raise ConfigError(f"weights must be [r, k], got shape {tuple(weights.shape)}")
        super().__init__(k=weights.shape[1], r=weights.shape[0])
        self.register_buffer("weights", weights)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        flat = queries.reshape(self.k, -1)
        return (self.weights @ flat).reshape((self.r, *queries.shape[1:]))

    def target_weights(self) -> torch.Tensor:
        return self.weights.clone()


def solve_spd(matrix: torch.Tensor, rhs: torch.Tensor, n: int) -> torch.Tensor:
    """Solves ``matrix`` [n, n] x = ``rhs`` [n, m] for a symmetric positive definite matrix, by Gaussian elimination
    without pivoting (stable for SPD), unrolled over the static ``n`` so it traces to plain ONNX arithmetic."""
    rows = [matrix[i] for i in range(n)]
    values = [rhs[i] for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            factor = rows[j][i] / rows[i][i]
            rows[j] = rows[j] - factor * rows[i]
            values[j] = values[j] - factor * values[i]
    solution: list[torch.Tensor] = [values[0]] * n
    for i in reversed(range(n)):
        acc = values[i]
        for j in range(i + 1, n):
            acc = acc - rows[i][j] * solution[j]
        solution[i] = acc / rows[i][i]
    return torch.stack(solution)


class LinearSystemDecoder(Decoder):
    """Rebuilds erased answers of a linear code with weights [r, k] by solving for them (least squares) from the
    parities that arrived: any e erasures whose columns the arrived parities' rows span (e <= r with every parity;
    ``CodingGroup.can_decode`` checks the same in the orchestrator)."""

    def __init__(self, weights: np.ndarray | torch.Tensor) -> None:
        weights = torch.as_tensor(np.asarray(weights, dtype=np.float32))
        super().__init__(k=weights.shape[1], r=weights.shape[0])
        self.register_buffer("weights", weights)
        self.register_buffer("eye", torch.eye(self.k))

    def can_rebuild(self, erased: Sequence[int], parities: Sequence[int]) -> bool:
        """The arrived parities' rows span the erased columns (``groups.rebuildable`` with this code's weights)."""
        return rebuildable(self.weights.numpy(), parities, erased)

    def forward(self, parity_outputs: torch.Tensor, outputs: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        mask = erased_mask(available, outputs)
        arrived = torch.where(mask, outputs, torch.zeros_like(outputs)).reshape(self.k, -1)  # [k, N]
        parities = parity_mask(available, parity_outputs)
        parity = torch.where(parities, parity_outputs, torch.zeros_like(parity_outputs)).reshape(self.r, -1)
        rows = parities.reshape(self.r, 1).to(outputs.dtype)  # the equations of the parities that arrived
        residual = (parity - self.weights @ arrived) * rows  # [r, N]
        present = mask.reshape(self.k).to(outputs.dtype)
        a = self.weights * (1.0 - present).unsqueeze(0) * rows  # [r, k]: columns of the erased unknowns
        normal = a.t() @ a + self.eye * (present + RIDGE).unsqueeze(0)
        unknown = solve_spd(normal, a.t() @ residual, self.k)  # [k, N]; zero on arrived slots
        return torch.where(mask, outputs, unknown.reshape_as(outputs))


register_code(
    Code(
        "linear",
        lambda shape: LinearEncoder(chebyshev_weights(shape.k, shape.r)),
        lambda shape: LinearSystemDecoder(chebyshev_weights(shape.k, shape.r)),
        ParityKind.TRAINED,
        "ParM with r >= 1: r DCT-weighted sums, r parity models, any r erasures rebuilt by a linear solve",
        max_r=None,
        title="ParM, r weighted sums",
        linear_weights=chebyshev_weights,
    )
)

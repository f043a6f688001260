"""Linear codes computed in the orchestrator itself: no encoder or decoder model call on the parity path.

For ParM's sum code and the weighted-sum codes (``code_weights`` W, [r, k]), encoding is ``P_j = sum_i W[j, i] X_i``
and decoding solves ``W[:, E] F(X_E) = Fp - W[:, A] F(X_A)`` for the erased slots E from the arrived slots A. Both are
a few numpy operations on k small arrays, far cheaper than a round trip through Triton to a separate model (one more
stub process, a shared-memory copy each way); a user who prefers the exported encoder and decoder models (e.g. large
inputs on a GPU) leaves ``code_weights`` unset.

The decode matches the exported ``SubtractionDecoder`` / ``LinearSystemDecoder`` on every erasure pattern the code
tolerates (at most r erased slots); the unit tests hold them to float tolerance. Unlike the exported decoder, it also
works from a subset of the parities (``solvable``): with r > 1, a slow or failed parity model does not hold back a
rebuild that the others can do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import ConfigError


def parse_weights(text: str) -> tuple[tuple[float, ...], ...]:
    """``"1,1"`` -> ((1.0, 1.0),); rows (one per parity) separated by ``;``. Empty text: no inline code."""
    rows = [row for row in text.split(";") if row.strip()]
    weights = tuple(tuple(float(value) for value in row.split(",") if value.strip()) for row in rows)
    if weights and len({len(row) for row in weights}) != 1:
        raise ConfigError(f"code_weights rows must all have k values, got {text!r}")
    return weights


def encode(weights: np.ndarray, stacked: np.ndarray) -> np.ndarray:
    """[k, B, *q] queries -> [r, B, *q] parity queries, in the queries' dtype."""
    flat = stacked.reshape(stacked.shape[0], -1).astype(np.float64)
    return (weights @ flat).reshape((weights.shape[0], *stacked.shape[1:])).astype(stacked.dtype, copy=False)


RANK_TOLERANCE = 1e-6
"""A block of the code counts as singular below this fraction of the code's largest weight: a weight that is zero
up to rounding (cos(pi/2) in a Chebyshev code) must not be divided by."""


def solvable(weights: np.ndarray, parities: Sequence[int], erased: Sequence[int]) -> bool:
    """Whether the parities ``parities`` (row indices of ``weights``) determine the ``erased`` slots: the
    [parities x erased] block of the code has full column rank."""
    if not erased:
        return True
    if len(erased) > len(parities):
        return False
    weights = np.asarray(weights, dtype=np.float64)
    block = weights[np.ix_(list(parities), list(erased))]
    tolerance = RANK_TOLERANCE * float(np.abs(weights).max())
    return int(np.linalg.matrix_rank(block, tol=tolerance)) == len(erased)


def decode(
    weights: np.ndarray, parity_outputs: np.ndarray, outputs: Sequence[np.ndarray | None]
) -> dict[int, np.ndarray]:
    """Rebuilds the erased slots (``outputs[i] is None``) from parity outputs [p, B, *o] and the arrived outputs,
    where ``weights`` [p, k] holds the rows of the parities given; returns {slot: rebuilt [B, *o]}. Refuses an
    erasure pattern those parities cannot solve."""
    erased = [i for i, out in enumerate(outputs) if out is None]
    arrived = [i for i, out in enumerate(outputs) if out is not None]
    if not erased:
        return {}
    if not solvable(weights, range(weights.shape[0]), erased):
        raise ValueError(f"{weights.shape[0]} parities cannot rebuild the erased slots {erased}")
    shape = parity_outputs.shape[1:]
    residual = parity_outputs.reshape(parity_outputs.shape[0], -1).astype(np.float64)
    for i in arrived:
        residual = residual - np.outer(weights[:, i], np.asarray(outputs[i], dtype=np.float64).reshape(-1))
    solution, *_ = np.linalg.lstsq(weights[:, erased], residual, rcond=None)
    return {i: solution[n].reshape(shape).astype(parity_outputs.dtype) for n, i in enumerate(erased)}

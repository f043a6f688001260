"""LeTCC, learning-theoretic coded computing (Moradi, Tahmasebi and Maddah-Ali, NeurIPS 2024), in a systematic form.

LeTCC bounds the coded computation's mean squared error by the decoder's generalisation error plus the encoder's
training error, and for functions in the second-order Sobolev space finds both minimisers to be cubic smoothing
splines: ``argmin_f sum_i (y_i - f(t_i))^2 + lambda * integral f''(t)^2 dt``. The encoder fits one through the K
queries at their points ``alpha_j`` (each query coordinate on its own) and sends its values at the worker points to
the workers; the decoder fits one through the answers that came back and reads it at the ``alpha_j``. Like Berrut's
ApproxIFER, it needs no training and works for any F; unlike it, it has two free parameters, the smoothings
``lambda_enc`` and ``lambda_dec``, which ``select`` chooses for a given F on validation queries.

The systematic mapping is Berrut's (``berrut.berrut_points``): the N = K + S points are sorted Chebyshev points of
the first kind on [-1, 1], the S parity points ``z_s`` spread evenly among them and the K others the query nodes
``alpha_j``. LeTCC reads its decoder at the data points and its encoder at the worker points, two separate sets;
the systematic form needs the query nodes among the worker points, so that F's answers to the originals are worker
answers. Berrut's points are laid out so, and sharing them makes the comparison with Berrut one of interpolants
alone. Chebyshev rather than equispaced points
also keep the end intervals short, where a spline (any interpolant) is least accurate.

- Encoder: the smoothing spline with ``lambda_enc`` through (alpha_j, X_j), read at the ``z_s``: a fixed [S, K]
  linear map (``LinearEncoder``); F answers the S parity queries. At ``lambda_enc = 0`` it interpolates the queries.
- Decoder: the smoothing spline with ``lambda_dec`` through the points whose answers arrived (members and parities
  alike, as ``available`` [K + S] flags them), read at the erased ``alpha_j``. For each availability pattern that is
  a fixed [K, K + S] matrix (zero in the columns of missing answers); all 2^(K+S) of them are precomputed and the
  forward picks one by the pattern's binary index (a Gather in ONNX), so any S missing answers among the N are
  rebuilt, as in ApproxIFER. Arrived answers pass through unchanged; missing ones are masked with ``where``.

Deviation, the end conditions: the Sobolev minimiser over all functions is the *natural* spline (f'' = 0 at both
ends), which reproduces only polynomials of degree <= 1, so even noiseless answers lying on a cubic of the point
(``F(u(z))`` for queries on a line and an F that is cubic in its input, say) would come back wrong. Here the fit
is over the *not-a-knot* cubic splines through the points instead (one cubic across the first two and across the
last two intervals; with 4 points it is the interpolating cubic, with 3 the parabola, with 2 the line): same
penalty, same linear smoother form ``(I + lambda P)^-1``, but at ``lambda = 0`` it reproduces every cubic exactly
(from 4 points on), and for any lambda every line (the penalty's null space). Away from the ends, and as N grows,
the two fits agree; near the ends the not-a-knot one is the more accurate interpolant (O(h^4) against O(h^2)).

What that buys, at lambda = 0: with K <= 4 the encoder's spline is the polynomial of degree K - 1 through the
queries, so for an affine F, ``F(u(z))`` is one too, and every tolerated loss pattern leaves at least K points to
rebuild it from: the code is exact for any affine F (Berrut is only at K = 2, where the two codes coincide). For
queries on a line and an F cubic in its input, ``F(u(z))`` is a cubic in z, rebuilt exactly from any 4 points.
On a toy smooth F (a tanh MLP on nearby queries) the rebuilt answers' squared error is 15 to 90 times below
Berrut's (``test_letcc``); on the bench's digits CNN, far from linear across a group, both codes' rebuilt answers
agree with F's on a third or so of the test queries, and neither wins everywhere (LeTCC 36% against 28% at K = 3
and 27% against 15% at K = 4 with S = 1, 33% against 30% at K = 4, S = 2, but 39% against 47% at K = 3, S = 2).

``select`` (``Code.select``) tries every pair in ``SMOOTHINGS`` and keeps the one whose rebuilt answers agree with
F's most often on validation (``degraded_accuracy``, F itself the label), with F's answers memoised so that each
query and parity query is asked once; ``make_encoder``/``make_decoder`` build the code at lambda = 0.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from parm.errors import ConfigError

from .berrut import berrut_points
from .code_registry import (
    Code,
    CodeShape,
    Decoder,
    ParityKind,
    Selection,
    erased_mask,
    parity_mask,
    register_code,
)
from .data import Dataset
from .degraded import DegradedAccuracy, degraded_accuracy
from .linear_codes import LinearEncoder

MAX_POINTS = 12
"""The decoder holds one [K, K + S] matrix per availability pattern, 2^(K+S) of them: 4,096 at K + S = 12 (under a
megabyte at K = 4), and the codes this project serves have K <= 4 and small S."""
SMOOTHINGS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""The lambdas ``select`` tries for each of the encoder and the decoder, 0 (interpolation) first. At the points used
here the roughness ``P`` has eigenvalues from about 5-20 (a parabola across [-1, 1]) to 10^2-10^4 (point-to-point
wiggles): 1e-4 starts to damp the wiggles, and 1 leaves a tenth or less of the parabola, near the least-squares
line."""
SELECT_ANSWERS = 8_000
"""How many answers ``select`` may ask of F: one per validation query it uses, plus S per group of K for each
``lambda_enc`` (the decoders reuse them). It judges every pair of lambdas on the validation queries in one grouping
into groups of K, on a seeded random subset when all of them would need more: at K = 4, S = 2 that is 2,000
queries, under half a minute for an F of 3 ms a query."""


def not_a_knot_moments(knots: np.ndarray) -> np.ndarray:
    """[n, n]: the second derivatives at the sorted ``knots`` of the not-a-knot cubic spline through values ``v``,
    as a linear map of ``v`` (the spline's moments). Fewer than 4 knots: the interpolating polynomial's."""
    n = len(knots)
    if n <= 2:
        return np.zeros((n, n))
    h = np.diff(knots)
    if n == 3:  # the parabola: its constant second derivative is twice the second divided difference
        weights = 2.0 / np.array([(knots[0] - knots[1]) * (knots[0] - knots[2]), -h[0] * h[1], h[1] * (h[0] + h[1])])
        return np.tile(weights, (3, 1))
    system, rhs = np.zeros((n, n)), np.zeros((n, n))
    for i in range(1, n - 1):  # continuity of the first derivative at each interior knot
        system[i, i - 1 : i + 2] = [h[i - 1], 2.0 * (h[i - 1] + h[i]), h[i]]
        rhs[i, i - 1 : i + 2] = 6.0 * np.array([1.0 / h[i - 1], -1.0 / h[i - 1] - 1.0 / h[i], 1.0 / h[i]])
    # not-a-knot: the third derivative is continuous at the second and the last-but-one knot
    system[0, :3] = [-h[1], h[0] + h[1], -h[0]]
    system[-1, -3:] = [-h[-1], h[-2] + h[-1], -h[-2]]
    return np.linalg.solve(system, rhs)


def spline_basis(knots: np.ndarray, at: np.ndarray) -> np.ndarray:
    """[len(at), n]: the not-a-knot cubic spline through values at the sorted ``knots``, evaluated at ``at`` (beyond
    the ends, the end pieces' cubics continue), as a linear map of the values."""
    n = len(knots)
    if n == 1:
        return np.ones((len(at), 1))
    moments = not_a_knot_moments(knots)
    piece = np.clip(np.searchsorted(knots, at, side="right") - 1, 0, n - 2)
    h = knots[piece + 1] - knots[piece]
    a = (knots[piece + 1] - at) / h
    b = 1.0 - a
    basis = np.zeros((len(at), n))
    rows = np.arange(len(at))
    basis[rows, piece] += a
    basis[rows, piece + 1] += b
    curvature = h[:, None] ** 2 / 6.0
    return basis + curvature * ((a**3 - a)[:, None] * moments[piece] + (b**3 - b)[:, None] * moments[piece + 1])


def roughness(knots: np.ndarray) -> np.ndarray:
    """[n, n] ``P``: ``v^T P v`` is the integral of f''^2 between the end knots, for f the not-a-knot spline through
    values ``v`` (f'' is linear on each piece, so each piece gives ``h/3 (m_i^2 + m_i m_i+1 + m_i+1^2)``)."""
    n = len(knots)
    if n <= 2:
        return np.zeros((n, n))
    h = np.diff(knots)
    gram = np.zeros((n, n))
    for i, width in enumerate(h):
        gram[i : i + 2, i : i + 2] += width / 6.0 * np.array([[2.0, 1.0], [1.0, 2.0]])
    moments = not_a_knot_moments(knots)
    return moments.T @ gram @ moments


def smoothing_spline(nodes: np.ndarray, at: np.ndarray, smoothing: float) -> np.ndarray:
    """[len(at), len(nodes)]: the smoothing spline through values at ``nodes`` (any order, distinct), evaluated at
    ``at``, as a linear map of the values: it fits ``(I + smoothing P)^-1 v`` at the nodes (``roughness``), the
    minimiser of the squared misfit plus ``smoothing`` times the integral of f''^2, and interpolates that."""
    order = np.argsort(nodes)
    knots = np.asarray(nodes, dtype=np.float64)[order]
    fitted = np.linalg.solve(np.eye(len(knots)) + smoothing * roughness(knots), np.eye(len(knots)))
    sorted_map = spline_basis(knots, np.asarray(at, dtype=np.float64)) @ fitted
    result = np.empty_like(sorted_map)
    result[:, order] = sorted_map
    return result


def letcc_points(k: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha [k], z [r]): Berrut's points (see the module docstring), for at most ``MAX_POINTS`` in all."""
    if k + r > MAX_POINTS:
        raise ConfigError(f"LeTCC precomputes 2^(k+r) decoding matrices and takes k + r <= {MAX_POINTS}, got {k + r}")
    return berrut_points(k, r)


class LeTCCEncoder(LinearEncoder):
    """``parity_queries[s]``: the smoothing spline with ``smoothing`` through (alpha_j, X_j), at ``z_s``."""

    def __init__(self, k: int, r: int, smoothing: float = 0.0) -> None:
        alpha, z = letcc_points(k, r)
        super().__init__(smoothing_spline(alpha, z, smoothing).astype(np.float32))
        self.smoothing = smoothing


def decoding_matrices(k: int, r: int, smoothing: float) -> np.ndarray:
    """[2^(k+r), k, k+r]: for each availability pattern (bit i of the index: answer i arrived, members first), the
    smoothing spline through the arrived points read at every ``alpha_j``; zero in missing answers' columns, and all
    zero for the pattern with nothing arrived."""
    alpha, z = letcc_points(k, r)
    points = np.concatenate([alpha, z])  # in the order of cat([outputs, parity_outputs])
    n = k + r
    matrices = np.zeros((2**n, k, n))
    for index in range(1, 2**n):
        arrived = [i for i in range(n) if index >> i & 1]
        matrices[index][:, arrived] = smoothing_spline(points[arrived], alpha, smoothing)
    return matrices


class LeTCCDecoder(Decoder):
    """The smoothing spline through the available (point, answer) pairs, read at the erased query nodes."""

    def __init__(self, k: int, r: int, smoothing: float = 0.0) -> None:
        super().__init__(k, r)
        self.smoothing = smoothing
        self.register_buffer("matrices", torch.as_tensor(decoding_matrices(k, r, smoothing), dtype=torch.float32))
        self.register_buffer("bits", torch.as_tensor([1 << i for i in range(k + r)], dtype=torch.int64))

    def forward(self, parity_outputs: torch.Tensor, outputs: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        mask = erased_mask(available, outputs)
        arrived = torch.where(mask, outputs, torch.zeros_like(outputs))
        parity = torch.where(parity_mask(available, parity_outputs), parity_outputs, torch.zeros_like(parity_outputs))
        values = torch.cat([arrived, parity]).flatten(1)  # [k + r, B*O]
        pattern = ((available > 0.5).to(torch.int64) * self.bits).sum().reshape(1)
        matrix = self.matrices.index_select(0, pattern).squeeze(0)  # [k, k + r]
        return torch.where(mask, outputs, (matrix @ values).reshape_as(outputs))


class _Memoised(nn.Module):
    """F with its answers remembered by the bytes of the batch asked: ``degraded_accuracy`` asks F again for the
    same queries (and, for one encoder, the same parity queries) with every decoder it judges; F is deterministic in
    eval mode, so each distinct batch runs once."""

    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f = f
        self.answers: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = hashlib.blake2b(x.detach().contiguous().numpy().tobytes(), digest_size=16).hexdigest() + str(x.shape)
        if key not in self.answers:
            self.answers[key] = self.f(x)
        return self.answers[key]


def agreement(result: DegradedAccuracy) -> float:
    """The share of all answers rebuilt over every tolerated loss pattern that agree with F's (argmax)."""
    total = sum(e.rebuilt for e in result.by_erasures)
    return sum(e.agreement_with_f * e.rebuilt for e in result.by_erasures) / total


def select(shape: CodeShape, f: nn.Module, val_x: np.ndarray, seed: int) -> Selection:
    """The (lambda_enc, lambda_dec) in ``SMOOTHINGS`` whose answers rebuilt on the validation queries ``val_x``
    agree with F's most often (``agreement``), ties going to less smoothing; F answers at most ``SELECT_ANSWERS``."""
    k, r = shape.k, shape.r
    queries = k * (SELECT_ANSWERS // (k + len(SMOOTHINGS) * r))  # a whole number of groups
    if len(val_x) > queries:
        val_x = val_x[np.sort(np.random.default_rng(seed).choice(len(val_x), queries, replace=False))]
    data, memoised = Dataset(np.ascontiguousarray(val_x, dtype=np.float32)), _Memoised(f)
    encoders = {smoothing: LeTCCEncoder(k, r, smoothing) for smoothing in SMOOTHINGS}
    decoders = {smoothing: LeTCCDecoder(k, r, smoothing) for smoothing in SMOOTHINGS}
    scores = {
        (enc, dec): agreement(degraded_accuracy(memoised, memoised, data, k, encoder, decoder, seed, groupings=1))
        for enc, encoder in encoders.items()  # the outer loop: one encoder's parity answers serve every decoder
        for dec, decoder in decoders.items()
    }
    enc, dec = max(scores, key=scores.__getitem__)  # the first best: less smoothing
    return Selection(encoders[enc], decoders[dec], f"smoothing enc={enc:g}, dec={dec:g}")


register_code(
    Code(
        "letcc",
        lambda shape: LeTCCEncoder(shape.k, shape.r),
        lambda shape: LeTCCDecoder(shape.k, shape.r),
        ParityKind.F,
        "LeTCC: no training; S = r parity queries on a smoothing spline through the queries, answered by F, smoothing "
        "spline decoder, smoothings chosen on validation",
        max_r=None,
        title="LeTCC (smoothing splines)",
        select=select,
    )
)

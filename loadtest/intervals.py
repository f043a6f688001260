"""Uncertainty of the benchmark's ratios: bootstrap intervals over requests, and the spread over rounds.

A tail percentile of a short cell rests on a handful of requests (a p99.9 of 1,000 requests is about its slowest
one), so a ratio of two of them is only as sure as those few. Each target ratio is therefore reported with a
percentile-bootstrap interval (requests of each cell resampled with replacement, the ratio recomputed) and with its
value in each interleaved round; a target counts as met only when its whole interval is on the right side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

LatencyStat = Callable[..., np.ndarray]
"""Latency samples [n_resamples, n_requests], one array per cell -> the statistic per resample [n_resamples]."""

RESAMPLES = 1000
CONFIDENCE = 0.95


def quantile(q: float) -> Callable[[np.ndarray], np.ndarray]:
    """Row-wise ``q``-th percentile of a [resamples, requests] array."""
    return lambda samples: np.percentile(samples, q, axis=-1)


def gap(samples: np.ndarray) -> np.ndarray:
    """p99.9 - p50, row-wise: ParM's measure of the tail."""
    low, high = np.percentile(samples, [50.0, 99.9], axis=-1)
    return high - low


@dataclass(frozen=True)
class Interval:
    """A ratio's point value and its bootstrap interval."""

    value: float
    low: float
    high: float

    def at_most(self, bound: float) -> bool:
        return self.high <= bound

    def at_least(self, bound: float) -> bool:
        return self.low >= bound

    def as_json(self) -> dict[str, float]:
        return {"value": round(self.value, 4), "low": round(self.low, 4), "high": round(self.high, 4)}


def ratio(
    numerator: Callable[[np.ndarray], np.ndarray],
    denominator: Callable[[np.ndarray], np.ndarray],
    top: np.ndarray,
    bottom: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """``numerator(top) / denominator(bottom)`` with a percentile-bootstrap interval: the latencies of each cell are
    resampled independently (the two cells are separate runs). Empty samples give NaN."""
    top, bottom = np.asarray(top, dtype=float), np.asarray(bottom, dtype=float)
    if not len(top) or not len(bottom):
        nan = float("nan")
        return Interval(nan, nan, nan)
    value = float(_safe_divide(numerator(top[None, :]), denominator(bottom[None, :]))[0])
    rng = np.random.default_rng(seed)
    top_samples = top[rng.integers(0, len(top), size=(resamples, len(top)))]
    bottom_samples = bottom[rng.integers(0, len(bottom), size=(resamples, len(bottom)))]
    ratios = _safe_divide(numerator(top_samples), denominator(bottom_samples))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(ratios, [tail, 100 - tail], method="inverted_cdf")  # no interpolation to inf
    return Interval(value, float(low), float(high))


def per_round(
    numerator: Callable[[np.ndarray], np.ndarray],
    denominator: Callable[[np.ndarray], np.ndarray],
    tops: Sequence[np.ndarray],
    bottoms: Sequence[np.ndarray],
) -> list[float]:
    """The ratio computed within each round (round i of one cell against round i of the other)."""
    out = []
    for top, bottom in zip(tops, bottoms, strict=False):
        if len(top) and len(bottom):
            top_row, bottom_row = np.asarray(top, float)[None, :], np.asarray(bottom, float)[None, :]
            out.append(round(float(_safe_divide(numerator(top_row), denominator(bottom_row))[0]), 4))
    return out


def _safe_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.inf)

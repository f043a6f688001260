"""The latency quantile that sets the fill timeout."""

import pytest

from parm.backend.orchestrator.latency import LatencyQuantile


def test_quantile_is_unknown_until_enough_samples_then_tracks_the_window():
    tracker = LatencyQuantile(0.9, window=100, every=10)
    for value in range(9):
        tracker.add(value)
    assert tracker.value is None
    tracker.add(9)
    assert tracker.value == pytest.approx(8.1)
    for _ in range(100):
        tracker.add(1000.0)
    assert tracker.value == 1000.0


def test_quantile_must_be_a_fraction():
    with pytest.raises(ValueError):
        LatencyQuantile(1.0)

"""The latency quantile that sets the fill timeout and the decode wait."""

import pytest

from parm.backend.orchestrator.latency import LatencyQuantile


def test_quantile_is_known_from_the_first_sample_then_tracks_the_window():
    tracker = LatencyQuantile(0.9, window=100, every=10)
    assert tracker.value is None
    tracker.add(5.0)
    assert tracker.value == 5.0
    for value in range(9):
        tracker.add(value)
    assert tracker.value == pytest.approx(7.1)  # 10 samples: recomputed at each of the first 10
    tracker.add(100.0)
    assert tracker.value == pytest.approx(7.1)  # then only every 10th sample
    for _ in range(100):
        tracker.add(1000.0)
    assert tracker.value == 1000.0


def test_quantile_must_be_a_fraction():
    with pytest.raises(ValueError):
        LatencyQuantile(1.0)

"""What the metrics exporter publishes: counter deltas since the last flush, gauges only when they change."""

from __future__ import annotations

from parm.backend.orchestrator import AnswerSource, DispatcherStats
from parm.backend.orchestrator.groups import ParityReason
from parm.backend.orchestrator.metrics import MetricsExporter


class Recorded:
    def __init__(self, calls: list, key: tuple) -> None:
        self._calls, self._key = calls, key

    def increment(self, value: float) -> None:
        self._calls.append(("inc", self._key, value))

    def set(self, value: float) -> None:
        self._calls.append(("set", self._key, value))

    def observe(self, value: float) -> None:
        self._calls.append(("observe", self._key, value))


class RecordingFactory:
    """A metric factory that records every update, as Triton's would send them."""

    def __init__(self) -> None:
        self.calls: list = []

    def _make(self, name, labels):
        return Recorded(self.calls, (name, tuple(sorted(labels.items()))))

    def counter(self, name, description, labels):
        return self._make(name, labels)

    def gauge(self, name, description, labels):
        return self._make(name, labels)

    def histogram(self, name, description, labels, buckets):
        return self._make(name, labels)


def _key(name: str, **labels: str) -> tuple:
    return (name, tuple(sorted({"model": "m", **labels}.items())))


def test_counters_are_pushed_as_deltas_and_unchanged_gauges_cost_nothing() -> None:
    factory = RecordingFactory()
    exporter = MetricsExporter(factory, {"model": "m"})
    stats = DispatcherStats()
    stats.requests = 3
    stats.count_answer(AnswerSource.REBUILT)
    stats.parities[ParityReason.STRAGGLER] = 1
    stats.encode_seconds.append(0.004)
    exporter.flush(stats, in_flight=2, in_flight_groups=1, open_groups=0)
    first = factory.calls[:]
    assert ("inc", _key("parm_requests_total"), 3.0) in first
    assert ("inc", _key("parm_answers_total", source="rebuilt"), 1.0) in first
    assert ("inc", _key("parm_parities_total", reason="straggler"), 1.0) in first
    assert ("set", _key("parm_in_flight_requests"), 2) in first
    assert ("observe", _key("parm_encode_seconds"), 0.004) in first
    assert not any(call[0] == "inc" and call[2] == 0 for call in first), "no zero increments"

    factory.calls.clear()
    stats.requests = 5
    exporter.flush(stats, in_flight=2, in_flight_groups=1, open_groups=0)
    assert factory.calls == [("inc", _key("parm_requests_total"), 2.0)], "only what changed is sent"

    factory.calls.clear()
    exporter.flush(stats, in_flight=0, in_flight_groups=1, open_groups=0)
    assert factory.calls == [("set", _key("parm_in_flight_requests"), 0)]


def test_each_rebuilt_answer_is_observed_once_per_phase() -> None:
    factory = RecordingFactory()
    exporter = MetricsExporter(factory, {"model": "m"})
    stats = DispatcherStats()
    stats.record_rebuild(arrival=1.000, parity_sent=1.015, parity_arrived=1.025, answered=1.026)
    exporter.flush(stats, in_flight=0, in_flight_groups=0, open_groups=0)
    observed = {call[1]: call[2] for call in factory.calls if call[0] == "observe"}
    expected = {"wait": 0.015, "parity": 0.010, "complete": 0.001}
    assert set(observed) == {_key("parm_rebuild_phase_seconds", phase=phase) for phase in expected}
    for phase, seconds in expected.items():
        assert abs(observed[_key("parm_rebuild_phase_seconds", phase=phase)] - seconds) < 1e-9

    factory.calls.clear()
    exporter.flush(stats, in_flight=0, in_flight_groups=0, open_groups=0)
    assert not factory.calls, "a phase is observed once"

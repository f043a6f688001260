"""Prometheus metrics of the coded endpoint, exported from the core's counters.

The Python backend's custom-metrics API sends one message to the server per update, so updating on every event
would put that cost on the request path. Instead ``MetricsExporter.flush`` runs periodically on the orchestrator's
loop (and once at shutdown) and pushes what changed since the last flush: counter deltas, gauge values and the
encode/decode durations recorded meanwhile. The ``MetricFactory`` is the seam to Triton (``pb_utils.MetricFamily``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .groups import AnswerSource, ParityReason
from .stats import REBUILD_PHASES, DispatcherStats
from .workers import Worker

DURATION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
REBUILD_BUCKETS = (0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Finer than ``DURATION_BUCKETS`` where a rebuild's phases fall (a few to a few tens of milliseconds)."""
FLUSH_PERIOD_S = 2.0
"""How often the adapter flushes. In Triton 2.51 a gauge's ``set()`` is a synchronous round trip to the server that
holds the GIL and occupies the server thread that also carries BLS calls and responses, so flushes are rare (a
Prometheus scrape every 15 s or so sees values at most this old) and skip what did not change."""


class Counter(Protocol):
    def increment(self, value: float) -> None: ...


class Gauge(Protocol):
    def set(self, value: float) -> None: ...


class Histogram(Protocol):
    def observe(self, value: float) -> None: ...


class MetricFactory(Protocol):
    """Creates one labelled metric; families with the same name share one description."""

    def counter(self, name: str, description: str, labels: Mapping[str, str]) -> Counter: ...

    def gauge(self, name: str, description: str, labels: Mapping[str, str]) -> Gauge: ...

    def histogram(
        self, name: str, description: str, labels: Mapping[str, str], buckets: tuple[float, ...]
    ) -> Histogram: ...


@dataclass(frozen=True)
class _CounterSpec:
    name: str
    description: str
    labels: Mapping[str, str]
    read: Callable[[DispatcherStats], float]


def _counter_specs() -> list[_CounterSpec]:
    specs = [
        _CounterSpec("parm_requests_total", "Requests received by the coded endpoint", {}, lambda s: s.requests),
        _CounterSpec(
            "parm_deadline_misses_total",
            "Requests answered with an error at request_timeout_ms (neither F nor the code answered)",
            {},
            lambda s: s.deadline_misses,
        ),
        _CounterSpec(
            "parm_shed_requests_total",
            "Requests refused at once because max_in_flight requests were already in flight",
            {},
            lambda s: s.shed_requests,
        ),
        _CounterSpec(
            "parm_uncoded_requests_total",
            "Requests served by F alone, never coded (NaN/Inf in the query)",
            {},
            lambda s: s.uncoded_requests,
        ),
        _CounterSpec(
            "parm_fidelity_comparisons_total",
            "Rebuilt query rows later compared with F's own late answer",
            {},
            lambda s: s.fidelity_samples,
        ),
        _CounterSpec(
            "parm_fidelity_argmax_agreements_total",
            "Compared rows whose rebuilt argmax equals F's own argmax",
            {},
            lambda s: s.fidelity_argmax_agree,
        ),
        _CounterSpec(
            "parm_fidelity_relative_error_sum",
            "Sum over compared rows of ||rebuilt - F|| / ||F||; divide by parm_fidelity_comparisons_total",
            {},
            lambda s: s.fidelity_relative_error_sum,
        ),
    ]
    for source in AnswerSource:
        specs.append(
            _CounterSpec(
                "parm_answers_total",
                "Answers sent, by source: F's own (original), rebuilt by the code, or an error",
                {"source": source.value},
                lambda s, source=source: s.answers[source],
            )
        )
    for fill, field in (
        ("full", "groups_full"),
        ("filled", "groups_filled"),
        ("unneeded", "groups_unneeded"),
        ("unprotected", "groups_unprotected"),
    ):
        specs.append(
            _CounterSpec(
                "parm_groups_total",
                "Coding groups: full (k requests) or filled (completed with fillers) when closed; unneeded (every "
                "member answered in time, no parity sent) or unprotected (no parity possible) when they send none",
                {"fill": fill},
                lambda s, field=field: getattr(s, field),
            )
        )
    for outcome, field in (("sent", "hedges"), ("won", "hedges_won")):
        specs.append(
            _CounterSpec(
                "parm_hedges_total",
                "Late members whose query also went to a second F worker (sent), and those answered by it (won)",
                {"outcome": outcome},
                lambda s, field=field: getattr(s, field),
            )
        )
    for spread, field in (("distinct", "groups_spread"), ("shared", "groups_shared")):
        specs.append(
            _CounterSpec(
                "parm_group_domains_total",
                "Closed coding groups by where their members' F calls went: all to distinct workers (failure "
                "domains), or two or more to one worker (fewer workers were up than members)",
                {"spread": spread},
                lambda s, field=field: getattr(s, field),
            )
        )
    for reason in ParityReason:
        specs.append(
            _CounterSpec(
                "parm_parities_total",
                "Coding groups whose parity was computed, by why: eager (every group), failure (an F call failed), "
                "straggler (a late member's F call was overtaken by later ones), budget (a late member, within the "
                "parity budget)",
                {"reason": reason.value},
                lambda s, reason=reason: s.parities[reason],
            )
        )
    specs.append(
        _CounterSpec(
            "parm_parities_withheld_total",
            "Coding groups with a late member that got no parity when it turned late (no straggler, budget empty)",
            {},
            lambda s: s.parities_withheld,
        )
    )
    for kind, field in (("real", "group_members_real"), ("filler", "group_members_filler")):
        specs.append(
            _CounterSpec(
                "parm_group_members_total",
                "Slots of coding groups that sent a parity: client requests (real) or fillers",
                {"kind": kind},
                lambda s, field=field: getattr(s, field),
            )
        )
    for role, field in (
        ("original", "original_failures"),
        ("parity", "parity_failures"),
        ("decode", "decode_failures"),
    ):
        specs.append(
            _CounterSpec(
                "parm_target_failures_total",
                "Downstream calls that failed: F on an original, the encoder or parity model, the decoder",
                {"role": role},
                lambda s, field=field: getattr(s, field),
            )
        )
    return specs


class MetricsExporter:
    """Pushes a dispatcher's counters to Prometheus metrics, as deltas since the previous flush."""

    def __init__(self, factory: MetricFactory, labels: Mapping[str, str]) -> None:
        self._factory = factory
        self._labels = dict(labels)
        self._workers: dict[tuple[str, str], _WorkerMetrics] = {}
        self._counters = [
            (spec, factory.counter(spec.name, spec.description, {**labels, **spec.labels})) for spec in _counter_specs()
        ]
        self._last = [0.0] * len(self._counters)
        self._in_flight = factory.gauge("parm_in_flight_requests", "Requests accepted and not yet answered", labels)
        self._in_flight_groups = factory.gauge(
            "parm_in_flight_groups", "Coding groups with a member not yet answered", labels
        )
        self._open_groups = factory.gauge("parm_open_groups", "Coding groups still forming", labels)
        self._gauge_values: list[float | None] = [None, None, None]
        """The values last set, so that an unchanged gauge costs no round trip."""
        self._encode = factory.histogram(
            "parm_encode_seconds", "Time to encode a group and run its parity model(s)", labels, DURATION_BUCKETS
        )
        self._decode = factory.histogram(
            "parm_decode_seconds", "Time to decode a group's missing answers", labels, DURATION_BUCKETS
        )

        self._rebuild_phases = [
            factory.histogram(
                "parm_rebuild_phase_seconds",
                "Where each rebuilt answer's time went: wait (arrival until its group's parity was sent), parity "
                "(until the parity output that allowed the rebuild arrived), complete (until the rebuilt answer was "
                "sent: the other members' F answers and the decode)",
                {**labels, "phase": phase},
                REBUILD_BUCKETS,
            )
            for phase in REBUILD_PHASES
        ]

    def flush(self, stats: DispatcherStats, in_flight: int, in_flight_groups: int, open_groups: int) -> None:
        for index, (spec, counter) in enumerate(self._counters):
            value = float(spec.read(stats))
            if value > self._last[index]:
                counter.increment(value - self._last[index])
                self._last[index] = value
        for index, (gauge, value) in enumerate(
            ((self._in_flight, in_flight), (self._in_flight_groups, in_flight_groups), (self._open_groups, open_groups))
        ):
            if value != self._gauge_values[index]:
                gauge.set(value)
                self._gauge_values[index] = value
        encode, decode = stats.drain_timings()
        for seconds in encode:
            self._encode.observe(seconds)
        for seconds in decode:
            self._decode.observe(seconds)
        for phases in stats.drain_rebuild_phases():
            for histogram, seconds in zip(self._rebuild_phases, phases, strict=True):
                histogram.observe(max(0.0, seconds))

    def flush_workers(self, workers: Sequence[Worker]) -> None:
        """Per-worker metrics of a gateway: up, ejections, calls in flight and call latency, labelled by the worker's
        address and role. A worker's metrics appear on its first flush and stay (Prometheus series do not vanish
        when a worker leaves its DNS record; its ``up`` then stays at its last value)."""
        for worker in workers:
            metrics = self._workers.get((worker.name, worker.role.value))
            if metrics is None:
                metrics = _WorkerMetrics(
                    self._factory, {**self._labels, "worker": worker.name, "role": worker.role.value}
                )
                self._workers[(worker.name, worker.role.value)] = metrics
            metrics.flush(worker)


class _WorkerMetrics:
    """One worker's metrics, and the values last pushed (only changes cost a round trip)."""

    def __init__(self, factory: MetricFactory, labels: Mapping[str, str]) -> None:
        self._up = factory.gauge("parm_worker_up", "1 while the worker takes new work, 0 while it is ejected", labels)
        self._in_flight = factory.gauge("parm_worker_in_flight", "Calls to the worker not yet answered", labels)
        self._ejections = factory.counter("parm_worker_ejections_total", "Times the worker was ejected", labels)
        self._latency = factory.histogram(
            "parm_worker_latency_seconds", "Duration of the worker's answered calls", labels, DURATION_BUCKETS
        )
        self._answers = {
            source: factory.counter(
                "parm_worker_answers_total",
                "Requests whose F call went to the worker, by how they were answered: its own answer (original), "
                "rebuilt around it, or an error",
                {**labels, "source": source.value},
            )
            for source in AnswerSource
        }
        self._last: dict[str, float] = {}

    def flush(self, worker: Worker) -> None:
        up = 0.0 if worker.health.ejected or worker.retired else 1.0
        for key, gauge, value in (("up", self._up, up), ("in_flight", self._in_flight, float(worker.outstanding))):
            if self._last.get(key) != value:
                gauge.set(value)
                self._last[key] = value
        ejections = float(worker.health.ejections)
        if ejections > self._last.get("ejections", 0.0):
            self._ejections.increment(ejections - self._last.get("ejections", 0.0))
            self._last["ejections"] = ejections
        for source, counter in self._answers.items():
            value = float(worker.answers[source])
            if value > self._last.get(source.value, 0.0):
                counter.increment(value - self._last.get(source.value, 0.0))
                self._last[source.value] = value
        if worker.latencies:
            latencies, worker.latencies = worker.latencies, []
            for seconds in latencies:
                self._latency.observe(seconds)

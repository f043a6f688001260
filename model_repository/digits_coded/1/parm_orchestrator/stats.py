"""Counters of what the orchestrator did, read by the adapter (metrics) and by tests."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from .groups import AnswerSource, ParityReason, Tensors

REBUILD_PHASES = ("wait", "parity", "complete")
"""Where a rebuilt answer's time went, in order: ``wait``, from the request's arrival until its group's parity was
sent (``decode_after``, the budget, the straggler rule); ``parity``, until the parity output that allowed the
rebuild arrived (encoding and the parity model's call, queueing included); ``complete``, until the rebuilt answer
was sent (the other members' F answers it needed, and the decode)."""


@dataclass
class DispatcherStats:
    """Plain counters, written on the orchestrator's event-loop thread, except ``answers``: each answer is counted
    where it is sent (F's on a worker thread), under a lock, so an answer a client holds is always counted."""

    requests: int = 0
    shed_requests: int = 0
    answers: dict[AnswerSource, int] = field(default_factory=lambda: dict.fromkeys(AnswerSource, 0))
    deadline_misses: int = 0
    uncoded_requests: int = 0
    groups_full: int = 0
    groups_filled: int = 0
    groups_spread: int = 0
    """Closed groups whose members' F calls all went to distinct workers (failure domains)."""
    groups_shared: int = 0
    """Closed groups with two members on one worker: fewer workers were up than members."""
    groups_unprotected: int = 0
    groups_unneeded: int = 0
    parities: dict[ParityReason, int] = field(default_factory=lambda: dict.fromkeys(ParityReason, 0))
    """Groups whose parity was computed, by why."""
    parities_withheld: int = 0
    """Groups with a late member that got no parity when it turned late: no straggler, and the budget was empty."""
    hedges: int = 0
    """Late members whose query also went to a second F worker (``hedge_below_load``)."""
    hedges_won: int = 0
    """Of those, requests answered by the hedge (F's own answer, before the rebuild and the first call)."""
    group_members_real: int = 0
    group_members_filler: int = 0
    original_failures: int = 0
    parity_failures: int = 0
    decode_failures: int = 0
    fidelity_samples: int = 0
    fidelity_argmax_agree: int = 0
    fidelity_relative_error_sum: float = 0.0
    encode_seconds: list[float] = field(default_factory=list)
    decode_seconds: list[float] = field(default_factory=list)
    rebuild_phases: list[tuple[float, ...]] = field(default_factory=list)
    """Seconds per ``REBUILD_PHASES`` phase of each rebuilt answer since the exporter last drained them."""
    _answers_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_answer(self, source: AnswerSource) -> None:
        with self._answers_lock:
            self.answers[source] += 1

    def drain_timings(self) -> tuple[list[float], list[float]]:
        """Encode and decode durations recorded since the last call (the metrics exporter observes them)."""
        encode, decode = self.encode_seconds, self.decode_seconds
        self.encode_seconds, self.decode_seconds = [], []
        return encode, decode

    def record_rebuild(self, arrival: float, parity_sent: float, parity_arrived: float, answered: float) -> None:
        """One rebuilt answer's ``REBUILD_PHASES``, from loop times."""
        self.rebuild_phases.append((parity_sent - arrival, parity_arrived - parity_sent, answered - parity_arrived))

    def drain_rebuild_phases(self) -> list[tuple[float, ...]]:
        """The rebuild phases recorded since the last call (the metrics exporter observes them)."""
        phases, self.rebuild_phases = self.rebuild_phases, []
        return phases

    def record_fidelity(self, rebuilt: Tensors, original: Tensors) -> None:
        """Compares a rebuilt answer with F's own, which arrived late: the live accuracy of the code."""
        for name, truth in original.items():
            estimate = rebuilt[name]
            rows = truth.reshape(truth.shape[0], -1).astype(np.float64)
            guess = estimate.reshape(estimate.shape[0], -1).astype(np.float64)
            self.fidelity_samples += rows.shape[0]
            self.fidelity_argmax_agree += int((rows.argmax(axis=1) == guess.argmax(axis=1)).sum())
            norms = np.maximum(np.linalg.norm(rows, axis=1), 1e-12)
            self.fidelity_relative_error_sum += float((np.linalg.norm(rows - guess, axis=1) / norms).sum())

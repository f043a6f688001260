"""Requests sent while instance processes are paused: the pattern every served-code test checks rebuilds with."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence

import numpy as np

from parm.backend.orchestrator.contract import RECONSTRUCTED_OUTPUT
from parm.loadtest import faults


def answers_while_paused(
    pids: Sequence[int], ask: Callable[[np.ndarray], object], queries: Sequence[np.ndarray], max_seconds: float = 0.8
) -> tuple[list, list[bool]]:
    """Sends every query through ``ask`` (4 at a time) while the processes ``pids`` are paused (at most
    ``max_seconds``), checks that every answer came while they still were, and returns the results and whether each
    was flagged as rebuilt."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pauses = [faults.pause(pid, max_seconds=max_seconds) for pid in pids]
        try:
            futures = [pool.submit(ask, x) for x in queries]
            results = [future.result(timeout=30) for future in futures]
            answered_while_paused = all(pause.active for pause in pauses)
        finally:
            for pause in pauses:
                pause.undo()
    assert answered_while_paused, "a request waited for a paused instance to resume"
    time.sleep(0.2)
    return results, [bool(r.as_numpy(RECONSTRUCTED_OUTPUT).all()) for r in results]

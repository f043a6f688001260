"""The two checks every served-code test makes: answers are F's own when nothing is slow, and requests sent while
instance processes are paused are answered, some of them rebuilt."""

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


def check_f_answers_when_nothing_is_slow(
    ask_coded: Callable[[np.ndarray], object], ask_f: Callable[[np.ndarray], np.ndarray], queries, atol: float
) -> None:
    """The coded endpoint answers F's own logits; a rare answer rebuilt because F was slower than its p90 (at most
    one of the queries) must match F's within ``atol`` (the codes served in these tests are exact)."""
    flagged = 0
    for x in queries:
        coded, direct = ask_coded(x), ask_f(x)
        if coded.as_numpy(RECONSTRUCTED_OUTPUT).any():
            flagged += 1
            np.testing.assert_allclose(coded.as_numpy("logits"), direct, rtol=atol, atol=atol)
        else:
            np.testing.assert_array_equal(coded.as_numpy("logits"), direct)
    assert flagged <= 1

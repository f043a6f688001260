"""The load generator's own garbage collections: recorded, and kept short by freezing what existed before a run."""

from __future__ import annotations

import gc
import time

from parm.loadtest.openloop import generator_gc


def test_collections_during_a_run_skip_what_existed_before_it_and_are_recorded() -> None:
    before_run = [[i] for i in range(300_000)]  # what the benchmark process holds: models, earlier cells' records
    t0 = time.monotonic()
    with generator_gc(freeze=True) as watch:
        assert gc.get_freeze_count() >= len(before_run)
        started = time.perf_counter()
        gc.collect()
        frozen_full = time.perf_counter() - started
    assert gc.get_freeze_count() == 0, "objects are unfrozen after the run"
    started = time.perf_counter()
    gc.collect()
    unfrozen_full = time.perf_counter() - started
    assert frozen_full < unfrozen_full
    pauses = watch.since(t0)
    assert pauses and pauses[-1].generation == 2 and pauses[-1].at_s >= 0 and pauses[-1].duration_s > 0
    del before_run


def test_without_freezing_collections_are_still_recorded() -> None:
    with generator_gc(freeze=False) as watch:
        assert gc.get_freeze_count() == 0
        gc.collect(0)
    assert [p.generation for p in watch.since(0.0)] == [0]

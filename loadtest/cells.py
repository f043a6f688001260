"""Planning a benchmark run: its cells (rate x scenario x scheme), their fault scenarios, and the interleaved time
slices they run in; merging a cell's slices back into one run."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import faults
from .configs import BenchConfig
from .openloop import RunResult
from .report import CellStats
from .scenarios import (
    SCENARIO_NAMES,
    FaultKind,
    Scenario,
    kill_scenario,
    no_fault,
    pause_scenario,
    starve_scenario,
)
from .schemes import Scheme, SchemeKind

logger = logging.getLogger(__name__)


@dataclass
class Cell:
    """One (rate, scenario, scheme): run as one or several time slices (rounds), then merged."""

    rate: float
    scenario: Scenario
    scheme: Scheme
    duration_s: float
    calibration: bool = False
    parts: list[tuple[float, RunResult]] = field(default_factory=list)
    """(slice start in the cell's timeline, the slice's result)."""
    fault_log: list[Any] = field(default_factory=list)
    fault_offsets: list[float] = field(default_factory=list)
    server_requests: list[int | None] = field(default_factory=list)
    undone: list[bool] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds per component (``cpu_snapshot``) used during the cell's slices, over ``cpu_wall_s`` seconds."""
    cpu_wall_s: float = 0.0
    coded_counters: dict[str, float] = field(default_factory=dict)
    """A coded scheme's own counters during the cell (``accounting.coded_counters``)."""
    result: RunResult | None = None
    stats: CellStats | None = None


@dataclass(frozen=True)
class Slice:
    """A time window [start_s, end_s) of a cell's arrival and fault schedules, run in round ``round``."""

    cell: Cell
    start_s: float
    end_s: float
    round: int


def _starve_kind(config: BenchConfig) -> FaultKind:
    if config.starve == "hog":
        return FaultKind.CPU_HOG
    if config.starve == "quota" or faults.cgroup_quota_available():
        return FaultKind.CPU_QUOTA
    logger.info("no writable CPU cgroup here: the starve scenario uses a co-located CPU hog")
    return FaultKind.CPU_HOG


def build_scenario(name: str, config: BenchConfig, rate: float, duration_s: float) -> Scenario:
    seed = config.seed + int(rate * 1000)
    if name == "no-fault":
        return no_fault()
    if name == "pause":
        return pause_scenario(
            duration_s,
            rate,
            hit_fraction=config.hit_fraction,
            min_s=config.pause_min_s,
            max_s=config.pause_max_s,
            seed=seed,
        )
    if name == "starve":
        kind = _starve_kind(config)
        amount = config.starve_cpus if kind is FaultKind.CPU_QUOTA else float(config.starve_hogs)
        return starve_scenario(
            duration_s,
            kind=kind,
            amount=amount,
            window_s=min(config.starve_window_s, duration_s / 3),
            every_s=min(config.starve_every_s, duration_s / 1.5),
            seed=seed,
            start_s=min(1.0, duration_s / 10),
        )
    return kill_scenario(duration_s, at_fraction=config.kill_at_fraction)


def plan_cells(config: BenchConfig, schemes: Sequence[Scheme], sweep_schemes: Sequence[Scheme]) -> list[Cell]:
    """Cells in run order: per rate, fault-free first (``equal`` first: hedging's delay is its p95), kill last."""
    cells: list[Cell] = []
    plans = [(config.rate, schemes, config.scenarios, config.duration_s)]
    sweep_duration = config.sweep_duration_s or config.duration_s
    plans += [(rate, sweep_schemes, config.sweep_scenarios, sweep_duration) for rate in config.sweep_rates]
    for rate, chosen, scenario_names, duration in plans:
        names = sorted(set(scenario_names), key=SCENARIO_NAMES.index)
        needs_calibration = config.hedge_delay_ms is None and any(s.kind is SchemeKind.HEDGED for s in chosen)
        has_equal_free = "no-fault" in names and any(s.kind is SchemeKind.EQUAL for s in chosen)
        if needs_calibration and not has_equal_free:
            equal = next(s for s in chosen if s.kind is SchemeKind.HEDGED)
            equal = dataclasses.replace(equal, name="equal", kind=SchemeKind.EQUAL)
            cells.append(Cell(rate, no_fault(), equal, duration, calibration=True))
        for name in names:
            scenario = build_scenario(name, config, rate, duration)
            cells += [Cell(rate, scenario, scheme, duration) for scheme in chosen]
    return cells


def plan_slices(cells: Sequence[Cell], rounds: int) -> list[Slice]:
    """The run order. Cells of one (rate, scenario) are interleaved in ``rounds`` time slices (scheme A's first
    third, B's first third, ..., A's second third, ...), so a slow drift of the machine (other work on a shared box)
    falls on every scheme alike. A destructive scenario (kill) and a calibration run are one slice each."""
    groups: dict[tuple[float, str, bool], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.rate, cell.scenario.name, cell.calibration), []).append(cell)
    order: list[Slice] = []
    for group in groups.values():
        first = group[0]
        parts = 1 if first.calibration or first.scenario.destructive else max(1, rounds)
        bounds = np.linspace(0.0, first.duration_s, parts + 1)
        for r in range(parts):
            order += [Slice(cell, float(bounds[r]), float(bounds[r + 1]), r) for cell in group]
    return order


def scenario_window(scenario: Scenario, start_s: float, end_s: float) -> Scenario:
    events = tuple(
        dataclasses.replace(e, at_s=round(e.at_s - start_s, 4)) for e in scenario.events if start_s <= e.at_s < end_s
    )
    return Scenario(scenario.name, events, scenario.description)


def merge_parts(parts: Sequence[tuple[float, RunResult]]) -> RunResult:
    """One cell's slices as one run: records renumbered, scheduled/sent times on the cell's own timeline."""
    records = []
    pauses = []
    for start, part in parts:
        pauses += [dataclasses.replace(p, at_s=p.at_s + start) for p in part.gc_pauses]
        for record in part.records:
            records.append(
                dataclasses.replace(
                    record, index=len(records), scheduled=record.scheduled + start, sent=record.sent + start
                )
            )
    first = parts[0][1]
    return RunResult(
        model=first.model,
        rate=first.rate,
        duration_s=sum(p.duration_s for _, p in parts),
        started_wall=first.started_wall,
        records=records,
        hedge_delay_s=first.hedge_delay_s,
        max_send_lag_s=max(p.max_send_lag_s for _, p in parts),
        wall_s=sum(p.wall_s for _, p in parts),
        unfinished=sum(p.unfinished for _, p in parts),
        gc_pauses=pauses,
        notes=sorted({note for _, part in parts for note in part.notes}),
    )

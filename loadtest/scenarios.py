"""Fault scenarios for a benchmark run: a seeded schedule of real faults, applied on a thread while load runs.

A ``Scenario`` is data (which fault, when, for how long, on which instance), drawn from a seed, so every scheme of a
benchmark meets the same faults at the same moments of its run. ``FaultRunner`` applies it to one model's instance
processes (``parm.loadtest.faults``), logs every apply and undo with wall-clock timestamps, and undoes whatever is
still applied when it stops, whatever happened meanwhile.

Pauses stay under ``faults.PAUSE_HEALTH_LIMIT_S`` (a Python-backend stub paused longer is declared unhealthy); a long
straggler is several pauses in a row. A paused instance holds the one request it took, so a pause hits about one
request: ``pause_scenario`` spaces pauses so that about ``hit_fraction`` of the requests meet one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from parm.errors import FaultError

from . import faults

logger = logging.getLogger(__name__)


SCENARIO_NAMES = ("no-fault", "pause", "starve", "kill")
"""The benchmark's scenarios, in the order a rate's cells run (a destructive one last)."""


class FaultKind(str, Enum):
    PAUSE = "pause"
    KILL = "kill"
    CPU_QUOTA = "cpu-quota"
    CPU_HOG = "cpu-hog"
    RESTART = "restart"
    """Not a fault but its repair, as an operator would do it: every instance of the model restarted."""


@dataclass(frozen=True)
class FaultEvent:
    """One fault: ``at_s`` seconds into the run, on instance ``instance`` of ``model`` (None: the runner's model).

    ``duration_s`` (pause, CPU faults) is how long it lasts; ``amount`` is the CPU quota (CPUs) or the hog count.
    """

    at_s: float
    kind: FaultKind
    duration_s: float | None = None
    instance: int = 0
    amount: float | None = None
    model: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    events: tuple[FaultEvent, ...] = ()
    description: str = "no fault"

    @property
    def destructive(self) -> bool:
        """True when the scenario leaves a model broken: a kill with no restart of that model after it (Triton does
        not restart a dead instance by itself)."""
        return any(
            event.kind is FaultKind.KILL
            and not any(
                later.kind is FaultKind.RESTART and later.model == event.model and later.at_s >= event.at_s
                for later in self.events
            )
            for event in self.events
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "events": [{**asdict(e), "kind": e.kind.value} for e in self.events],
        }


def no_fault() -> Scenario:
    return Scenario("no-fault")


def pause_scenario(
    duration_s: float,
    rate: float,
    *,
    hit_fraction: float = 0.02,
    min_s: float = 0.2,
    max_s: float = 0.8,
    seed: int = 0,
    start_s: float = 0.5,
) -> Scenario:
    """SIGSTOP/SIGCONT of instance 0 at Poisson times, each lasting uniform [min_s, max_s] seconds.

    Each pause catches about one request (the paused instance holds the one it took), so pauses come at
    ``hit_fraction * rate`` per second on average, with at least 0.1 s of running between two pauses.
    """
    if not 0 < min_s <= max_s < faults.PAUSE_HEALTH_LIMIT_S:
        raise FaultError(
            f"pause durations must satisfy 0 < min ({min_s}) <= max ({max_s}) < {faults.PAUSE_HEALTH_LIMIT_S} s "
            "(a Python-backend stub paused longer is declared unhealthy)"
        )
    if not 0 < hit_fraction < 1:
        raise FaultError(f"hit_fraction must be in (0, 1), got {hit_fraction}")
    rng = np.random.default_rng(seed)
    mean_gap = 1.0 / (hit_fraction * rate)
    events, t = [], start_s
    while True:
        t += rng.exponential(mean_gap)
        length = float(rng.uniform(min_s, max_s))
        if t + length > duration_s - 0.2:
            break
        events.append(FaultEvent(round(t, 4), FaultKind.PAUSE, round(length, 4)))
        t += length + 0.1
    return Scenario(
        "pause",
        tuple(events),
        f"instance 0 paused (SIGSTOP) {len(events)} times, {min_s:g}-{max_s:g} s each "
        f"(one pause per {mean_gap:.1f} s on average: about {100 * hit_fraction:g}% of requests hit)",
    )


def starve_scenario(
    duration_s: float,
    *,
    kind: FaultKind = FaultKind.CPU_QUOTA,
    amount: float = 0.1,
    window_s: float = 3.0,
    every_s: float = 8.0,
    seed: int = 0,
    start_s: float = 1.0,
) -> Scenario:
    """CPU starvation of instance 0 in windows of ``window_s`` seconds, one starting every ``every_s`` (jittered).

    ``kind`` CPU_QUOTA throttles it to ``amount`` CPUs in a cgroup; CPU_HOG runs ``amount`` busy processes pinned
    beside it on its CPU.
    """
    if kind not in (FaultKind.CPU_QUOTA, FaultKind.CPU_HOG):
        raise FaultError(f"starvation is a CPU quota or a CPU hog, not {kind.value}")
    if window_s >= every_s:
        raise FaultError(f"window_s ({window_s}) must be shorter than every_s ({every_s})")
    rng = np.random.default_rng(seed)
    events, t = [], start_s + float(rng.uniform(0, every_s - window_s))
    while t + window_s <= duration_s - 0.2:
        events.append(FaultEvent(round(t, 4), kind, window_s, amount=amount))
        t += every_s + float(rng.uniform(-0.25, 0.25) * (every_s - window_s))
    what = (
        f"throttled to {amount:g} CPU (cgroup CFS quota)"
        if kind is FaultKind.CPU_QUOTA
        else (f"pinned to one CPU beside {amount:g} busy process(es)")
    )
    return Scenario(
        "starve", tuple(events), f"instance 0 {what} {len(events)} times for {window_s:g} s, every ~{every_s:g} s"
    )


def kill_scenario(duration_s: float, *, at_fraction: float = 0.3) -> Scenario:
    """SIGKILL of instance 0 ``at_fraction`` into the run; Triton does not restart it (the model must be reloaded)."""
    at = round(at_fraction * duration_s, 4)
    return Scenario("kill", (FaultEvent(at, FaultKind.KILL),), f"instance 0 killed (SIGKILL) at {at:g} s")


def soak_scenario(
    duration_s: float,
    rate: float,
    targets: Mapping[str, int],
    *,
    hit_fraction: float = 0.02,
    pause_min_s: float = 0.2,
    pause_max_s: float = 0.8,
    kill_every_s: float = 60.0,
    restart_after_s: float = 5.0,
    quiet_tail_s: float = 1.0,
    seed: int = 0,
    start_s: float = 1.0,
) -> Scenario:
    """Random faults for a long run on several models (``targets``: model -> instance count): pauses at Poisson
    times on a random instance (about ``hit_fraction`` of the requests hit, as in ``pause_scenario``), and every
    ``kill_every_s`` (jittered) a SIGKILL of a random instance, whose model is restarted ``restart_after_s`` later.

    A model is never paused between its kill and its restart (the pause would find no process), and faults never
    overlap in time, so at most one instance is down at any moment: what a code with one parity must survive. The
    last restart comes at least ``quiet_tail_s`` before the end (time for its aftermath to settle).
    """
    if not targets or any(n < 1 for n in targets.values()):
        raise FaultError(f"soak targets need at least one model with at least one instance, got {dict(targets)}")
    if kill_every_s <= restart_after_s:
        raise FaultError(f"kill_every_s ({kill_every_s}) must be longer than restart_after_s ({restart_after_s})")
    instances = [(model, index) for model, count in sorted(targets.items()) for index in range(count)]
    rng = np.random.default_rng(seed)
    busy: list[tuple[float, float]] = []
    events: list[FaultEvent] = []
    t = start_s + float(rng.uniform(0.5, 1.0)) * kill_every_s
    while t + restart_after_s < duration_s - quiet_tail_s:
        model, index = instances[int(rng.integers(len(instances)))]
        events.append(FaultEvent(round(t, 4), FaultKind.KILL, instance=index, model=model))
        events.append(FaultEvent(round(t + restart_after_s, 4), FaultKind.RESTART, model=model))
        busy.append((t - 0.1, t + restart_after_s + 2.0))  # restarting takes a moment after the request
        t += kill_every_s * float(rng.uniform(0.75, 1.25))
    pauses = pause_scenario(
        duration_s, rate, hit_fraction=hit_fraction, min_s=pause_min_s, max_s=pause_max_s, seed=seed + 1,
        start_s=start_s,
    )  # fmt: skip
    for pause in pauses.events:
        end = pause.at_s + (pause.duration_s or 0.0)
        if any(start < end and pause.at_s < stop for start, stop in busy):
            continue
        model, index = instances[int(rng.integers(len(instances)))]
        events.append(replace(pause, instance=index, model=model))
    events.sort(key=lambda e: e.at_s)
    kills = sum(e.kind is FaultKind.KILL for e in events)
    return Scenario(
        "soak",
        tuple(events),
        f"{len(events) - 2 * kills} pauses ({pause_min_s:g}-{pause_max_s:g} s) and {kills} kills (each model "
        f"restarted {restart_after_s:g} s after its kill) on random instances of {', '.join(sorted(targets))}",
    )


@dataclass
class FaultLogEntry:
    """What happened to one planned fault. Times: wall clock (``time.time()``); None if it did not happen."""

    kind: str
    instance: str
    pid: int | None
    planned_at_s: float
    duration_s: float | None
    applied_at: float | None = None
    undone_at: float | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    model: str | None = None


class FaultRunner:
    """Applies a scenario to instances under the tritonserver ``server_pid`` on a background thread; an event's
    model defaults to ``model``.

    ``start()`` right before the load starts; ``stop()`` after it ends: it stops the schedule, undoes every fault
    this runner applied (paused, throttled, pinned: all put back), and returns the log. ``restart`` (model name ->
    None) carries out RESTART events, e.g. ``TritonServer.reload_model``.
    """

    def __init__(
        self,
        scenario: Scenario,
        server_pid: int,
        model: str,
        restart: Callable[[str], object] | None = None,
    ) -> None:
        self.scenario = scenario
        self.server_pid = server_pid
        self.model = model
        self.restart = restart
        self.log: list[FaultLogEntry] = []
        self._applied: list[faults.Fault] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._models = sorted({event.model or model for event in scenario.events})
        self._pids = {name: faults.find_instance_pids(server_pid, name) for name in self._models}

    @staticmethod
    def instance_name(model: str, index: int) -> str:
        return f"{model}_0_{index}"

    def start(self) -> FaultRunner:
        self._t0 = time.monotonic()
        if self.scenario.events:
            self._thread = threading.Thread(target=self._run, name=f"faults-{self.scenario.name}", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        for event in self.scenario.events:
            if self._stop.wait(max(0.0, self._t0 + event.at_s - time.monotonic())):
                return
            self._apply(event)

    def _apply(self, event: FaultEvent) -> None:
        model = event.model or self.model
        if event.kind is FaultKind.RESTART:
            self._restart(model, event)
            return
        name = self.instance_name(model, event.instance)
        pid = self._pids[model].get(name)
        entry = FaultLogEntry(event.kind.value, name, pid, event.at_s, event.duration_s, model=model)
        self.log.append(entry)
        if pid is None:
            entry.error = f"no instance {name} (found {sorted(self._pids[model])})"
            logger.error("fault %s: %s", event.kind.value, entry.error)
            return
        try:
            fault: faults.Fault
            if event.kind is FaultKind.PAUSE:
                fault = faults.Pause(pid, max_seconds=event.duration_s)
            elif event.kind is FaultKind.KILL:
                fault = faults.Kill(pid)
            elif event.kind is FaultKind.CPU_QUOTA:
                fault = faults.CpuQuota(pid, event.amount or 0.1, max_seconds=event.duration_s)
            else:
                fault = faults.CpuHog(pid, int(event.amount or 1), max_seconds=event.duration_s)
            fault.apply()
        except (FaultError, psutil.Error, OSError) as exc:
            entry.error = str(exc)
            logger.error("fault %s on %s (pid %s) failed: %s", event.kind.value, name, pid, exc)
            return
        self._applied.append(fault)
        entry.applied_at = fault.applied_at
        if isinstance(fault, faults.CpuHog):
            entry.detail = {"cpu": fault.cpu, "hogs": fault.hogs}
        elif isinstance(fault, faults.CpuQuota):
            entry.detail = {"cpus": fault.cpus, "period_us": fault.period_us}

    def _restart(self, model: str, event: FaultEvent) -> None:
        entry = FaultLogEntry(event.kind.value, model, None, event.at_s, None, model=model)
        self.log.append(entry)
        if self.restart is None:
            entry.error = "no restart function given to the fault runner"
            logger.error("restart of %s: %s", model, entry.error)
            return
        entry.applied_at = time.time()
        try:
            self.restart(model)
        except Exception as exc:  # the run goes on: a failed restart is logged and shows up in the report
            entry.error = f"{type(exc).__name__}: {exc}"
            logger.error("restart of %s failed: %s", model, exc)
        entry.undone_at = time.time()
        entry.detail = {"seconds": round(entry.undone_at - entry.applied_at, 3)}
        self._pids[model] = faults.find_instance_pids(self.server_pid, model)

    def stop(self) -> list[FaultLogEntry]:
        """Stops the schedule and undoes every fault it applied; returns the log (with undo times)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for fault in self._applied:
            fault.undo()
        applied = [e for e in self.log if e.applied_at is not None and e.kind != FaultKind.RESTART.value]
        for fault, entry in zip(self._applied, applied, strict=True):
            entry.undone_at = fault.undone_at if fault.reversible else None
        return self.log

    def all_undone(self) -> bool:
        """No fault of this runner is active, and no instance of the model is stopped or in a fault cgroup."""
        if any(f.active and f.reversible for f in self._applied):
            return False
        pids = [
            pid
            for model in self._models or [self.model]
            for pid in faults.find_instance_pids(self.server_pid, model).values()
        ]
        for pid in pids:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_STOPPED:
                    return False
                if faults.CGROUP_PREFIX in Path(f"/proc/{pid}/cgroup").read_text():
                    return False
            except (psutil.Error, OSError):
                continue
        return True

    def __enter__(self) -> FaultRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

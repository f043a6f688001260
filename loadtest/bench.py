"""``parm bench``: tail latency of ParM against its baselines, under real faults, side by side in one run.

One embedded Triton server serves the benchmark repository (``benchrepo``): the coded endpoint(s) and the baselines'
models. For each offered rate and each fault scenario, every scheme runs in turn for the same duration, with the
same Poisson arrival times (same seed), the same queries and the same fault schedule on instance 0 of the model it
uses. Schemes:

- ``none``: F alone with ``f_instances`` instances (the coded setup's F, called directly; no redundancy);
- ``equal``: F alone with ``f_instances + parity_instances`` instances, as many as the coded setup uses in total;
- ``hedged``: ``equal``'s model, with a backup copy after ``hedge_delay_ms`` (default: ``equal``'s fault-free p95
  at that rate, measured in the same run);
- ``parm-k2`` (and ``parm-k3``, ... when the repository has them): the coded endpoint (default orchestrator
  settings: parity on demand);
- ``parm-eager``: the k = 2 endpoint with ParM's own policy, every closed group's parity computed at once.

Scenarios: ``no-fault``, ``pause`` (SIGSTOP/SIGCONT), ``starve`` (cgroup CPU quota, or a co-located CPU hog where
cgroups are not writable), ``kill`` (SIGKILL; the model is reloaded afterwards, since Triton does not restart a dead
stub). Every fault is undone after its cell, whatever happens, and checked.

Outputs in ``out_dir``: ``summary.json`` (config, F, every cell's statistics, the target checks), ``summary.md``
(the same as tables), ``requests.csv`` (every request), ``faults.jsonl`` (every fault, with timestamps), ``cdf.png``
(latency tails at the main rate; ``cdf_rate<r>.png`` for other rates), ``sweep.png`` (p50 and p99.9 against rate)
and the server log under ``logs/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tritonclient.grpc as grpcclient

from parm.backend.orchestrator.groups import ParityReason
from parm.backend.orchestrator.metrics import FLUSH_PERIOD_S
from parm.errors import ConfigError
from parm.export.data import load_digits_splits
from parm.server import TritonServer

from . import faults, prometheus
from .benchrepo import BenchModelSpec, BenchRepository, ensure_bench_repository
from .openloop import OpenLoopClient, RunResult, poisson_arrivals, run_open_loop
from .report import (
    CellStats,
    cell_stats,
    check_targets,
    markdown_report,
    plot_cdfs,
    plot_sweep,
    write_requests_csv,
    write_summary,
)
from .scenarios import FaultKind, FaultRunner, Scenario, kill_scenario, no_fault, pause_scenario, starve_scenario

logger = logging.getLogger(__name__)

SCHEME_NAMES = ("none", "equal", "hedged", "parm", "relay")
PROFILE_RATE = 250
"""py-spy samples per second."""
SCENARIO_NAMES = ("no-fault", "pause", "starve", "kill")


class SchemeKind(Enum):
    NONE = "none"
    EQUAL = "equal"
    HEDGED = "hedged"
    PARM = "parm"
    RELAY = "relay"


@dataclass(frozen=True)
class Scheme:
    """What a scheme calls, and whose instance the faults hit."""

    name: str
    kind: SchemeKind
    model: str
    fault_model: str
    instances: int
    flag_output: bool = False
    k: int | None = None


def resolve_schemes(repo: BenchRepository, names: Sequence[str]) -> list[Scheme]:
    """Scheme names ("none", "equal", "hedged", "parm" = every k built, or "parm-k3"; "relay", the Python-backend
    floor) -> schemes, equal first."""
    schemes: list[Scheme] = []
    for name in names:
        if name == "none":
            f2 = repo.f_models[min(repo.f_models)]
            schemes.append(Scheme("none", SchemeKind.NONE, f2, f2, repo.f_instances))
        elif name in ("equal", "hedged"):
            kind = SchemeKind(name)
            schemes.append(Scheme(name, kind, repo.equal_model, repo.equal_model, repo.total_instances))
        elif name == "relay":
            if repo.relay_model is None:
                raise ConfigError("scheme relay: the repository has no relay model (rebuild it)")
            f2 = repo.f_models[min(repo.f_models)]
            schemes.append(Scheme(name, SchemeKind.RELAY, repo.relay_model, f2, repo.f_instances))
        elif name == "parm-eager":
            if repo.coded_eager is None:
                raise ConfigError("scheme parm-eager: the repository has no eager coded model (rebuild it)")
            k = min(repo.coded)
            schemes.append(
                Scheme(name, SchemeKind.PARM, repo.coded_eager, repo.f_models[k], repo.total_instances, True, k)
            )
        elif name == "parm" or name.startswith("parm-k"):
            ks = sorted(repo.coded) if name == "parm" else [int(name.removeprefix("parm-k"))]
            for k in ks:
                if k not in repo.coded:
                    raise ConfigError(
                        f"scheme {name}: the repository has no coded model for k={k} (has {sorted(repo.coded)})"
                    )
                schemes.append(
                    Scheme(
                        f"parm-k{k}", SchemeKind.PARM, repo.coded[k], repo.f_models[k], repo.total_instances, True, k
                    )
                )
        else:
            raise ConfigError(f"unknown scheme {name!r}; known: {', '.join(SCHEME_NAMES)} (or parm-k<K>, parm-eager)")
    order = {SchemeKind.EQUAL: 0, SchemeKind.HEDGED: 1, SchemeKind.NONE: 2, SchemeKind.RELAY: 3, SchemeKind.PARM: 4}
    unique = {s.name: s for s in schemes}
    return sorted(unique.values(), key=lambda s: (order[s.kind], s.k or 0, s.name))


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. Rates in requests/s, times in seconds unless named ``_ms``."""

    out_dir: Path = Path("runs/bench/latest")
    models_dir: Path = Path("runs/bench/models")
    model_spec: BenchModelSpec = field(default_factory=BenchModelSpec)
    rebuild: bool = False
    rate: float = 40.0
    duration_s: float = 30.0
    warmup_s: float = 2.0
    schemes: tuple[str, ...] = SCHEME_NAMES
    scenarios: tuple[str, ...] = SCENARIO_NAMES
    sweep_rates: tuple[float, ...] = ()
    sweep_schemes: tuple[str, ...] = ("equal", "hedged", "parm")
    sweep_scenarios: tuple[str, ...] = ("no-fault", "pause")
    sweep_duration_s: float | None = None
    hit_fraction: float = 0.02
    pause_min_s: float = 0.2
    pause_max_s: float = 0.8
    starve: str = "auto"
    starve_cpus: float = 0.1
    starve_hogs: int = 2
    starve_window_s: float = 3.0
    starve_every_s: float = 8.0
    kill_at_fraction: float = 0.3
    hedge_delay_ms: float | None = None
    timeout_s: float = 10.0
    slow_ms: float = 50.0
    rounds: int = 3
    """Time slices each fault-free or pause/starve cell is cut into, interleaved across schemes (see plan_slices)."""
    seed: int = 0
    profile_s: float = 0.0
    """If > 0: py-spy samples the coded endpoint's process that long during the fault-free ParM cell (main rate)."""

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_s <= 0 or self.warmup_s < 0:
            raise ConfigError(f"rate and duration must be > 0, warmup >= 0; got {self.rate}, {self.duration_s}")
        for name in (*self.scenarios, *self.sweep_scenarios):
            if name not in SCENARIO_NAMES:
                raise ConfigError(f"unknown scenario {name!r}; known: {', '.join(SCENARIO_NAMES)}")
        if self.starve not in ("auto", "quota", "hog"):
            raise ConfigError(f"starve must be auto, quota or hog, got {self.starve!r}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if any(r <= 0 for r in self.sweep_rates):
            raise ConfigError(f"sweep rates must be > 0, got {self.sweep_rates}")

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model_spec"] = self.model_spec.as_json()
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


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
    parities: dict[str, float] = field(default_factory=dict)
    """A coded scheme's parities by reason (and ``withheld``) during the cell, from the endpoint's own metrics."""
    result: RunResult | None = None
    stats: CellStats | None = None


@dataclass(frozen=True)
class Slice:
    """A time window [start_s, end_s) of a cell's arrival and fault schedules, run in round ``round``."""

    cell: Cell
    start_s: float
    end_s: float
    round: int


@dataclass
class BenchOutcome:
    out_dir: Path
    cells: list[CellStats]
    checks: list[Any]
    markdown: str
    files: dict[str, Path]


# ---------------------------------------------------------------------------------------------------------------------


def f_predictions(repo: BenchRepository, queries: np.ndarray) -> np.ndarray:
    """F's own predicted class for each query (onnxruntime on F's ONNX file), to judge rebuilt answers."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(repo.f_onnx), providers=["CPUExecutionProvider"])
    out = np.concatenate(
        [session.run(None, {repo.input_name: queries[i : i + 64]})[0] for i in range(0, len(queries), 64)]
    )
    return out.argmax(axis=1)


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


def server_request_count(grpc_url: str, model: str) -> int | None:
    """Requests the server counted for ``model`` so far (success + fail), or None if it cannot say.

    Triton updates the count when it releases a request, a moment after the client has its answer: read until
    two reads agree, so that a request of the previous run is never counted in the next one.
    """
    try:
        with grpcclient.InferenceServerClient(grpc_url) as client:
            previous = None
            deadline = time.monotonic() + 2.0
            while True:
                stats = client.get_inference_statistics(model, as_json=True)
                inference = stats["model_stats"][0]["inference_stats"]
                count = int(inference.get("success", {}).get("count", 0))
                count += int(inference.get("fail", {}).get("count", 0))
                if count == previous or time.monotonic() > deadline:
                    return count
                previous = count
                time.sleep(0.05)
    except Exception as exc:  # statistics are a cross-check; a failure to read them must not stop the run
        logger.warning("cannot read the server's statistics of %s: %s", model, exc)
        return None


def parity_counts(metrics_url: str, model: str) -> dict[str, float]:
    """The coded endpoint's parities so far, by reason, and the groups whose parity was withheld, once its last
    counts were flushed (it flushes every ``FLUSH_PERIOD_S``; the wait is outside the measured load)."""
    time.sleep(FLUSH_PERIOD_S + 0.2)
    try:
        samples = prometheus.scrape(metrics_url)
    except OSError as exc:  # a cross-check: a failed scrape must not stop the run
        logger.warning("cannot read the coded endpoint's metrics: %s", exc)
        return {}
    counts = {
        reason.value: prometheus.metric_sum(samples, "parm_parities_total", model=model, reason=reason.value)
        for reason in ParityReason
    }
    counts["withheld"] = prometheus.metric_sum(samples, "parm_parities_withheld_total", model=model)
    return counts


def cpu_snapshot(server_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by tritonserver, by each model's instance (stub) processes, by this
    process (the load generator), and by the whole machine ("machine busy": every process, ours or not).
    Differences of two snapshots say where a run's CPU time went, and how much other work shared the CPUs."""
    out: dict[str, float] = {}

    def add(key: str, times: Any) -> None:
        out[key] = out.get(key, 0.0) + times.user + times.system

    system = psutil.cpu_times()
    # user already includes guest time; steal is the hypervisor's, idle and iowait are not work.
    out["machine busy"] = sum(getattr(system, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))
    try:
        server = psutil.Process(server_pid)
        add("tritonserver", server.cpu_times())
        children = server.children()
    except psutil.Error:
        return out
    with contextlib.suppress(psutil.Error):
        add("load generator", psutil.Process().cpu_times())
    for child in children:
        try:
            instance = next((a for a in child.cmdline()[1:] if re.fullmatch(r".+_\d+_\d+", a)), None)
            if instance is not None:
                add(f"model {instance.rsplit('_', 2)[0]}", child.cpu_times())
        except psutil.Error:
            continue
    return out


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


def _window(scenario: Scenario, start_s: float, end_s: float) -> Scenario:
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


class Bench:
    """Runs the cells on one server, restarting or reloading what a cell breaks."""

    def __init__(self, config: BenchConfig, repo: BenchRepository) -> None:
        self.config = config
        self.repo = repo
        self.out = Path(config.out_dir)
        self.server: TritonServer | None = None
        self.queries = load_digits_splits(config.seed).test.x
        self.predictions = f_predictions(repo, self.queries)
        self.hedge_delay_s: dict[float, float] = {}
        self.notes: list[str] = []
        self.profile: dict[str, Any] | None = None

    # -- server ------------------------------------------------------------------------------------------------------

    def start_server(self) -> TritonServer:
        server = TritonServer(
            self.repo.path,
            log_dir=self.out / "logs",
            startup_timeout=180.0,
            extra_args=("--model-control-mode=explicit", "--load-model=*"),
        )
        server.start()
        self.server = server
        return server

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def _ensure_server(self) -> TritonServer:
        if self.server is None or not self.server.is_alive():
            if self.server is not None:
                self.notes.append("the server died during the run and was restarted")
                logger.warning("the server died; restarting it")
                self.stop_server()
            return self.start_server()
        return self.server

    # -- cells -------------------------------------------------------------------------------------------------------

    async def _load(
        self,
        scheme: Scheme,
        rate: float,
        start_s: float,
        end_s: float,
        seed: int,
        hedge: float | None,
        round_: int = 0,
    ) -> RunResult:
        """Open-loop load for the window [start_s, end_s) of the arrival schedule drawn for (rate, seed); with
        start_s = 0 and end_s = d, simply d seconds of load (warm-up)."""
        assert self.server is not None
        arrivals = poisson_arrivals(rate, end_s, seed)
        window = arrivals[arrivals >= start_s] - start_s
        async with OpenLoopClient(
            self.server.grpc_url,
            scheme.model,
            self.repo.input_name,
            self.repo.output_name,
            flag_output=scheme.flag_output,
            timeout_s=self.config.timeout_s,
        ) as client:
            return await run_open_loop(
                client,
                self.queries,
                window,
                rate=rate,
                duration_s=end_s - start_s,
                seed=seed + round_,
                hedge_delay_s=hedge,
            )

    async def run_slice(self, piece: Slice) -> RunResult:
        config = self.config
        cell = piece.cell
        server = self._ensure_server()
        scheme = cell.scheme
        hedge = None
        if scheme.kind is SchemeKind.HEDGED:
            hedge = config.hedge_delay_ms / 1000 if config.hedge_delay_ms is not None else self.hedge_delay_s[cell.rate]
        seed = config.seed + int(cell.rate * 1000)
        warmup = config.warmup_s if piece.round == 0 else min(0.5, config.warmup_s)
        if warmup > 0:
            await self._load(scheme, cell.rate, 0.0, warmup, seed + 7919 + piece.round, hedge)
        parities_before = parity_counts(server.metrics_url, scheme.model) if scheme.kind is SchemeKind.PARM else {}
        before = server_request_count(server.grpc_url, scheme.model)
        cpu_before, cpu_started = cpu_snapshot(server.pid), time.monotonic()
        runner = FaultRunner(_window(cell.scenario, piece.start_s, piece.end_s), server.pid, scheme.fault_model)
        runner.start()
        try:
            result = await self._load(scheme, cell.rate, piece.start_s, piece.end_s, seed, hedge, piece.round)
        finally:
            log = runner.stop()
            cell.undone.append(runner.all_undone())
        cpu_after = cpu_snapshot(server.pid)
        cell.cpu_wall_s += time.monotonic() - cpu_started
        for key, value in cpu_after.items():
            cell.cpu_s[key] = cell.cpu_s.get(key, 0.0) + value - cpu_before.get(key, 0.0)
        after = server_request_count(server.grpc_url, scheme.model)
        if parities_before:
            for key, value in parity_counts(server.metrics_url, scheme.model).items():
                cell.parities[key] = cell.parities.get(key, 0.0) + value - parities_before.get(key, 0.0)
        cell.parts.append((piece.start_s, result))
        cell.fault_log += log
        cell.fault_offsets += [piece.start_s] * len(log)
        cell.server_requests.append(None if before is None or after is None else after - before)
        if cell.scenario.destructive:
            server.reload_model(scheme.fault_model)
        if scheme.kind is SchemeKind.EQUAL and cell.scenario.name == "no-fault" and len(result.latencies):
            self.hedge_delay_s.setdefault(cell.rate, float(np.percentile(result.latencies, 95)))
        return result

    def finish_cell(self, cell: Cell) -> CellStats:
        """Merges a cell's slices and computes its statistics."""
        cell.result = merge_parts(cell.parts)
        counts = cell.server_requests
        cell.stats = cell_stats(
            cell.result,
            scenario=cell.scenario.name,
            scheme=cell.scheme.name,
            instances=cell.scheme.instances,
            f_predictions=self.predictions,
            server_requests=None if any(c is None for c in counts) else sum(c for c in counts if c is not None),
            fault_log=cell.fault_log,
            faults_undone=all(cell.undone),
            slow_ms=self.config.slow_ms,
            cpu_s=cell.cpu_s,
            cpu_wall_s=cell.cpu_wall_s,
            cpus=os.cpu_count(),
            rounds=[part for _, part in cell.parts],
            parities=cell.parities,
        )
        return cell.stats

    # -- profiling ---------------------------------------------------------------------------------------------------

    async def profile_orchestrator(self, cells: Sequence[Cell]) -> None:
        """py-spy on the default coded endpoint (lowest k) during an extra, unmeasured run at the main rate with no
        fault (a profiler slows the process it samples, so no measured cell carries it). ``--gil`` keeps only the
        samples where a thread holds the GIL: the CPU time spent in Python, the part of the overhead this code can
        change."""
        candidates = [
            c
            for c in cells
            if c.scheme.kind is SchemeKind.PARM and c.scenario.name == "no-fault" and c.rate == self.config.rate
        ]
        cell = min(candidates, key=lambda c: (not c.scheme.name.startswith("parm-k"), c.scheme.k), default=None)
        if self.config.profile_s <= 0 or cell is None:
            return
        server = self._ensure_server()
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        pids = faults.find_instance_pids(server.pid, cell.scheme.model)
        if not pids or not os.path.exists(py_spy):
            self.notes.append("profiling skipped: py-spy or the coded endpoint's process not found")
            return
        target = next(iter(pids.values()))
        path = self.out / "profile" / "orchestrator.collapsed.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        duration = max(1, round(self.config.profile_s))
        command = [py_spy, "record", "--pid", str(target), "--duration", str(duration), "--rate", str(PROFILE_RATE),
                   "--format", "raw", "--threads", "--gil", "--nonblocking", "--output", str(path)]  # fmt: skip
        self.profile = {"pid": target, "command": command, "path": path, "seconds": duration, "rate": PROFILE_RATE}
        logger.info("profiling %s for %d s (py-spy, unmeasured run)", cell.scheme.model, duration)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            await self._load(cell.scheme, cell.rate, 0.0, duration + 1.0, self.config.seed + 104729, None)
        finally:
            self._finish_profiler(process)

    def _finish_profiler(self, process: subprocess.Popen[bytes]) -> None:
        assert self.profile is not None
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        self.profile["returncode"] = process.returncode
        if process.returncode != 0:
            self.profile["error"] = stderr.decode(errors="replace")[-500:]
            return
        self.profile["summary"] = summarise_profile(
            Path(self.profile["path"]), possible=self.profile["seconds"] * self.profile["rate"]
        )

    # -- the run -----------------------------------------------------------------------------------------------------

    async def run(self, cells: list[Cell]) -> None:
        slices = plan_slices(cells, self.config.rounds)
        remaining = Counter(id(piece.cell) for piece in slices)
        for i, piece in enumerate(slices, 1):
            cell = piece.cell
            logger.info(
                "[%d/%d] rate %g/s, %s, %s (%s), %.1f-%.1f s%s",
                i, len(slices), cell.rate, cell.scenario.name, cell.scheme.name, cell.scheme.model,
                piece.start_s, piece.end_s, f" ({cell.scenario.description})" if cell.scenario.events else "",
            )  # fmt: skip
            await self.run_slice(piece)
            remaining[id(cell)] -= 1
            if remaining[id(cell)] == 0:
                stats = self.finish_cell(cell)
                logger.info(
                    "    %s/%s: p50 %.2f  p99 %.2f  p99.9 %.2f  max %.1f ms; %d requests, %.1f%% rebuilt, "
                    "%d errors, %d faults%s",
                    cell.scenario.name, cell.scheme.name, stats.p50, stats.p99, stats.p999, stats.max, stats.count,
                    100 * stats.rebuilt_fraction, stats.errors, stats.faults,
                    "" if stats.faults_undone else " NOT ALL UNDONE",
                )  # fmt: skip
            await asyncio.sleep(0.2)
        await self.profile_orchestrator(cells)


def summarise_profile(path: Path, top: int = 25, possible: int | None = None) -> dict[str, Any]:
    """py-spy's collapsed stacks -> where the samples go: by thread, and the functions with the most samples
    (inclusive: on the stack; self: at its top). ``possible``: the samples one always-busy thread would give
    (seconds x rate), so that ``busy`` says which share of the wall time the samples cover."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        names = [f.split(" (")[0] + (" " + f.split(" (")[1].rstrip(")").rsplit("/", 1)[-1] if " (" in f else "")
                 for f in frames[1:]]  # fmt: skip
        for name in set(names):
            inclusive[name] += count
        if names:
            own[names[-1]] += count
    share = {name: round(n / max(1, total), 4) for name, n in inclusive.most_common(top)}
    return {
        "samples": total,
        "busy": None if not possible else round(total / possible, 4),
        "threads": {name: round(n / max(1, total), 4) for name, n in threads.most_common(8)},
        "inclusive": share,
        "self": {name: round(n / max(1, total), 4) for name, n in own.most_common(top)},
    }


def run_bench(config: BenchConfig, *, build_only: bool = False) -> BenchOutcome | BenchRepository:
    """Builds (or reuses) the benchmark repository, runs every cell, writes the reports; see the module docstring."""
    started = time.time()
    repo = ensure_bench_repository(config.models_dir, config.model_spec, rebuild=config.rebuild)
    if build_only:
        return repo
    schemes = resolve_schemes(repo, config.schemes)
    sweep_schemes = resolve_schemes(repo, config.sweep_schemes) if config.sweep_rates else []
    cells = plan_cells(config, schemes, sweep_schemes)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    faults.remove_stale_cgroups()
    bench = Bench(config, repo)
    logger.info(
        "benchmark: F %s, %.2f ms per query; %d cells; starting the server on %s",
        repo.manifest.get("f_architecture"), repo.f_inference_ms, len(cells), repo.path,
    )  # fmt: skip
    try:
        bench.start_server()
        asyncio.run(bench.run(cells))
    finally:
        bench.stop_server()
        faults.undo_all()
    return write_outputs(config, repo, bench, cells, time.time() - started)


def write_outputs(
    config: BenchConfig, repo: BenchRepository, bench: Bench, cells: list[Cell], wall_s: float
) -> BenchOutcome:
    out = Path(config.out_dir)
    measured = [c for c in cells if c.stats is not None and not c.calibration]
    stats = [c.stats for c in measured if c.stats is not None]
    checks = check_targets(stats)
    errors: Counter[str] = Counter()
    for s in stats:
        for message, n in s.error_kinds.items():
            errors[f"{s.rate:g}/{s.scenario}/{s.scheme}: {message}"] += n
    files: dict[str, Path] = {}
    files["requests"] = out / "requests.csv"
    write_requests_csv(
        files["requests"],
        ((c.rate, c.scenario.name, c.scheme.name, c.result) for c in measured if c.result is not None),
    )
    files["faults"] = out / "faults.jsonl"
    with open(files["faults"], "w") as f:
        for c in measured:
            for entry, offset in zip(c.fault_log, c.fault_offsets, strict=True):
                record = dataclasses.asdict(entry)
                record.update(rate=c.rate, scenario=c.scenario.name, scheme=c.scheme.name)
                record["planned_at_s"] = round(entry.planned_at_s + offset, 4)
                record["duration_s"] = entry.duration_s
                f.write(json.dumps(record) + "\n")
    files["generator_gc"] = out / "generator_gc.csv"
    with open(files["generator_gc"], "w") as f:
        f.write("rate,scenario,scheme,at_s,duration_ms,generation\n")
        for c in measured:
            for pause in c.result.gc_pauses if c.result is not None else ():
                f.write(
                    f"{c.rate:g},{c.scenario.name},{c.scheme.name},{pause.at_s:.4f},"
                    f"{1000 * pause.duration_s:.3f},{pause.generation}\n"
                )
    for rate in sorted({c.rate for c in measured}):
        name = "cdf.png" if rate == config.rate else f"cdf_rate{rate:g}.png"
        chosen = [(c.scenario.name, c.scheme.name, c.result) for c in measured if c.rate == rate and c.result]
        title = (
            f"{repo.manifest.get('f_architecture')} ({repo.f_inference_ms:.1f} ms/query), {rate:g} requests/s "
            f"(Poisson, open loop), {measured[0].duration_s:g} s per cell"
        )
        files[name] = plot_cdfs(out / name, chosen, title)
    sweep = plot_sweep(out / "sweep.png", stats)
    if sweep is not None:
        files["sweep.png"] = sweep
    rate0 = config.rate
    header = [
        f"F: {repo.manifest.get('f_architecture')}, {repo.f_inference_ms:.2f} ms per query (onnxruntime, 1 thread); "
        f"ParM parity models: same architecture; instances: F {repo.f_instances}, parity {repo.parity_instances}, "
        f"equal resources {repo.total_instances}.",
        f"Machine: {os.cpu_count()} CPUs shared by the server, every instance and the load generator. "
        f"Open-loop Poisson load, {config.duration_s:g} s per cell after {config.warmup_s:g} s of warm-up; "
        f"hedging delay (ms) per rate: "
        + (", ".join(f"{r:g}/s: {1000 * d:.1f}" for r, d in sorted(bench.hedge_delay_s.items())) or "-")
        + (f" (fixed {config.hedge_delay_ms:g})" if config.hedge_delay_ms is not None else " (equal's fault-free p95)"),
        "Scenarios at the main rate: "
        + "; ".join(sorted({f"{c.scenario.name}: {c.scenario.description}" for c in measured if c.rate == rate0})),
        f"Wall time {wall_s / 60:.1f} min.",
    ]  # fmt: skip
    markdown = markdown_report(stats, checks, header, dict(errors.most_common(30)))
    if bench.profile and "summary" in bench.profile:
        summary = bench.profile["summary"]
        markdown += (
            "\n## Where the coded endpoint's Python time goes (py-spy --gil, unmeasured run at the main rate)\n\n"
            f"Some thread of the orchestrator held the GIL {100 * (summary.get('busy') or 0):.1f}% of the wall time "
            f"({summary['samples']} samples); shares below are of those samples.\n\n"
        )
        markdown += "| share | function (inclusive) |\n|---:|---|\n"
        markdown += "\n".join(
            f"| {100 * v:.1f}% | `{k}` |" for k, v in list(bench.profile["summary"]["inclusive"].items())[:15]
        )
        markdown += "\n"
    files["summary.md"] = out / "summary.md"
    files["summary.md"].write_text(markdown)
    files["summary.json"] = out / "summary.json"
    write_summary(
        files["summary.json"],
        {
            "config": config.as_json(),
            "f": {
                "architecture": repo.manifest.get("f_architecture"),
                "inference_ms": repo.f_inference_ms,
                "parameters": repo.manifest.get("f_parameters"),
                "accuracy": repo.manifest.get("accuracy"),
                "instances": {"f": repo.f_instances, "parity": repo.parity_instances},
            },
            "machine": {"cpus": os.cpu_count(), "loadavg_at_end": list(os.getloadavg())},
            "hedge_delay_ms": {f"{r:g}": round(1000 * d, 3) for r, d in bench.hedge_delay_s.items()},
            "scenarios": {f"{c.rate:g}/{c.scenario.name}": c.scenario.as_json() for c in measured},
            "cells": [s.as_json() for s in stats],
            "targets": [c.as_json() for c in checks],
            "notes": bench.notes,
            "profile": None
            if bench.profile is None
            else {k: (str(v) if isinstance(v, Path) else v) for k, v in bench.profile.items()},
            "wall_s": round(wall_s, 1),
        },
    )
    logger.info("benchmark written to %s", out)
    return BenchOutcome(out, stats, checks, markdown, files)

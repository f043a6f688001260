"""``parm bench``: tail latency of ParM against its baselines, under real faults, side by side in one run.

One embedded Triton server serves the benchmark repository (``benchrepo``): the coded endpoint(s) and the baselines'
models. For each offered rate and each fault scenario, every scheme runs in turn for the same duration, with the
same Poisson arrival times (same seed), the same queries and the same fault schedule on instance 0 of the model it
uses. Schemes (``schemes``): none, equal, hedged (a backup copy after ``hedge_delay_ms``, by default ``equal``'s
fault-free p95 at that rate, measured in the same run), parm-k<K>, parm-eager, parm-hedged and relay.

Scenarios: ``no-fault``, ``pause`` (SIGSTOP/SIGCONT), ``starve`` (cgroup CPU quota, or a co-located CPU hog where
cgroups are not writable), ``kill`` (SIGKILL; the model is reloaded afterwards, since Triton does not restart a dead
stub). Every fault is undone after its cell, whatever happens, and checked.

The run is planned in ``cells`` (cells and their interleaved slices), measured with ``accounting`` (server counts,
parity counters, CPU per process) and ``profiling`` (py-spy), and written by ``benchoutputs``. Outputs in
``out_dir``: ``summary.json`` (config, F, every cell's statistics, the target checks), ``summary.md``
(the same as tables), ``requests.csv`` (every request), ``faults.jsonl`` (every fault, with timestamps), ``cdf.png``
(latency tails at the main rate; ``cdf_rate<r>.png`` for other rates), ``sweep.png`` (p50 and p99.9 against rate)
and the server log under ``logs/``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parm.export.data import load_digits_splits
from parm.progress import Progress
from parm.server import TritonServer

from . import faults
from .accounting import coded_counters, cpu_snapshot, server_request_count
from .benchoutputs import BenchOutcome, write_outputs
from .benchrepo import BenchRepository, ensure_bench_repository, f_predictions
from .cells import Cell, Slice, merge_parts, plan_cells, plan_slices, scenario_window
from .configs import BenchConfig
from .openloop import OpenLoopClient, RunResult, poisson_arrivals, run_open_loop
from .profiling import finish_profiler, py_spy_binary, start_profiler
from .report import CellStats, cell_stats
from .scenarios import FaultRunner
from .schemes import Scheme, SchemeKind, resolve_schemes

__all__ = ["BenchConfig", "BenchOutcome", "run_bench"]

logger = logging.getLogger(__name__)


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
        counters_before = coded_counters(server.metrics_url, scheme.model) if scheme.kind is SchemeKind.PARM else {}
        before = server_request_count(server.grpc_url, scheme.model)
        cpu_before, cpu_started = cpu_snapshot(server.pid), time.monotonic()
        runner = FaultRunner(scenario_window(cell.scenario, piece.start_s, piece.end_s), server.pid, scheme.fault_model)
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
        if counters_before:
            for key, value in coded_counters(server.metrics_url, scheme.model).items():
                cell.coded_counters[key] = cell.coded_counters.get(key, 0.0) + value - counters_before.get(key, 0.0)
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
            coded_counters=cell.coded_counters,
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
        py_spy = py_spy_binary()
        pids = faults.find_instance_pids(server.pid, cell.scheme.model)
        if not pids or py_spy is None:
            self.notes.append("profiling skipped: py-spy or the coded endpoint's process not found")
            return
        duration = max(1, round(self.config.profile_s))
        path = self.out / "profile" / "orchestrator.collapsed.txt"
        process, self.profile = start_profiler(py_spy, next(iter(pids.values())), path, duration)
        logger.info("profiling %s for %d s (py-spy, unmeasured run)", cell.scheme.model, duration)
        try:
            await self._load(cell.scheme, cell.rate, 0.0, duration + 1.0, self.config.seed + 104729, None)
        finally:
            finish_profiler(process, self.profile)

    # -- the run -----------------------------------------------------------------------------------------------------

    async def run(self, cells: list[Cell]) -> None:
        slices = plan_slices(cells, self.config.rounds)
        remaining = Counter(id(piece.cell) for piece in slices)
        with Progress("parm bench", len(slices), logger, unit="slice") as progress:
            for piece in slices:
                cell = piece.cell
                what = f"rate {cell.rate:g}/s, {cell.scenario.name}, {cell.scheme.name}"
                logger.debug(
                    "%s (%s), %.1f-%.1f s%s", what, cell.scheme.model, piece.start_s, piece.end_s,
                    f" ({cell.scenario.description})" if cell.scenario.events else "",
                )  # fmt: skip
                await self.run_slice(piece)
                remaining[id(cell)] -= 1
                progress.step(f"{what}, {piece.start_s:.1f}-{piece.end_s:.1f} s")
                if remaining[id(cell)] == 0:
                    stats = self.finish_cell(cell)
                    progress.write(
                        f"  {cell.rate:g}/s {cell.scenario.name}/{cell.scheme.name}: p50 {stats.p50:.2f}  "
                        f"p99 {stats.p99:.2f}  p99.9 {stats.p999:.2f}  max {stats.max:.1f} ms; {stats.count} "
                        f"requests, {100 * stats.rebuilt_fraction:.1f}% rebuilt, {stats.errors} errors, "
                        f"{stats.faults} faults" + ("" if stats.faults_undone else " NOT ALL UNDONE")
                    )
                await asyncio.sleep(0.2)
        await self.profile_orchestrator(cells)


def run_bench(config: BenchConfig) -> BenchOutcome:
    """Builds (or reuses) the benchmark repository, runs every cell, writes the reports; see the module docstring."""
    started = time.time()
    repo = ensure_bench_repository(config.models_dir, config.model_spec, rebuild=config.rebuild)
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
    return write_outputs(config, repo, cells, time.time() - started, bench.hedge_delay_s, bench.notes, bench.profile)

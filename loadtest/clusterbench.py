"""The tail benchmark on a local cluster (``parm cluster bench``): the same open-loop arrivals and the same
whole-server faults for every scheme, and the single-server benchmark's report and targets.

Schemes, all on the same servers (N F workers and R parity workers, which here serve F too):

- ``equal``: equal resources, every one of the N + R servers serving F, balanced by the client (the fewest calls
  outstanding first, as a least-request load balancer does);
- ``hedged``: ``equal`` with a backup copy after equal's fault-free p95, to whichever server has the fewest calls
  outstanding (so, another one);
- ``relay``: through the gateway, a model that only relays each request to an F worker over gRPC
  (``grpc_relay_model.py``): the fair baseline for the gateway's hop;
- ``parm-k2``: the coded endpoint on the gateway, F on the N F workers, parities on the R parity workers, a
  late member also hedged on another F worker while they have spare capacity (the gateway's default);
- ``parm-k2-nohedge``: the same endpoint without hedging (``hedge_below_load`` 0): rebuilds only.

Faults (scenario ``faults``): whole F-worker servers stopped (``ServerPause``) for ``pause_s`` seconds or throttled
(``ServerCpuQuota``, ``throttle_cpus`` of a CPU) for ``throttle_s``, one fault at a time on a random F worker,
spaced so that a worker is faulty ``faulty_share`` of the time; every scheme sees the same schedule. On 2 cores
the failure domains are processes, not machines: every server shares the same CPUs, so the numbers are relative to
each other, not to a real cluster.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from parm.cluster import LocalCluster, with_parameters
from parm.loadtest.accounting import cpu_snapshot
from parm.loadtest.configs import ClusterBenchConfig
from parm.loadtest.faults import Fault, cgroup_quota_available
from parm.loadtest.openloop import OpenLoopClient, RunResult, poisson_arrivals, run_open_loop
from parm.loadtest.report import (
    CellStats,
    cell_stats,
    check_targets,
    markdown_report,
    write_summary,
)
from parm.loadtest.server_faults import ServerCpuQuota, ServerPause

logger = logging.getLogger(__name__)

SCHEMES = ("equal", "hedged", "relay", "parm-k2", "parm-k2-nohedge")
SCENARIOS = ("no-fault", "faults")
RELAY_SOURCE = Path(__file__).with_name("grpc_relay_model.py")
RELAY_SUFFIX = "_relay"
NOHEDGE_SUFFIX = "_nohedge"


@dataclass
class BenchCell:
    """One (scheme, scenario) at one offered rate and share of faulty time, run in one or more rounds."""

    scheme: str
    scenario: str
    rate: float
    faulty_share: float
    parts: list[RunResult] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    fault_log: list[Fault] = field(default_factory=list)


class BalancedClient:
    """``OpenLoopClient``'s interface over several servers: each call goes to the server with the fewest calls
    outstanding (ties in turn)."""

    def __init__(self, urls: Sequence[str], model: str, input_name: str, output_name: str, timeout_s: float) -> None:
        self.model = model
        self._clients = [OpenLoopClient(u, model, input_name, output_name, flag_output=False, timeout_s=timeout_s)
                         for u in urls]  # fmt: skip
        self._outstanding = [0] * len(urls)
        self._turn = 0

    async def __aenter__(self) -> BalancedClient:
        for client in self._clients:
            await client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self._clients:
            await client.__aexit__(*exc)

    async def infer(self, x: np.ndarray) -> tuple[bool, int]:
        self._turn += 1
        n = len(self._clients)
        index = min(range(n), key=lambda i: (self._outstanding[i], (i - self._turn) % n))
        self._outstanding[index] += 1
        try:
            return await self._clients[index].infer(x)
        finally:
            self._outstanding[index] -= 1


def fault_schedule(
    config: ClusterBenchConfig, workers: Sequence[str], seed: int, faulty_share: float
) -> list[tuple[float, str, str, float]]:
    """(start, kind, worker, seconds) of whole-server faults over a run, one at a time, about ``faulty_share`` of
    the time; kind is ``pause`` or ``throttle``."""
    rng = np.random.default_rng(seed)
    throttle = cgroup_quota_available()
    events = []
    at = float(rng.uniform(0.5, 2.0))
    while True:
        kind = "throttle" if throttle and rng.random() < config.throttle_share else "pause"
        seconds = float(rng.uniform(*(config.throttle_s if kind == "throttle" else config.pause_s)))
        if at + seconds > config.duration_s - 0.5:
            return events
        events.append((at, kind, str(rng.choice(list(workers))), seconds))
        at += seconds / faulty_share * float(rng.uniform(0.5, 1.5))


def _cluster_cpu_s(cluster: LocalCluster) -> float:
    """CPU seconds used so far by every server of the cluster and its model instances (``cpu_snapshot`` each)."""
    return sum(
        seconds
        for member in cluster.servers
        for key, seconds in cpu_snapshot(member.server.pid).items()
        if key == "tritonserver" or key.startswith("model ")
    )


class ClusterBench:
    """One local cluster and the cells run on it; ``run`` is the benchmark's own grid, ``run_cells`` any other."""

    def __init__(self, config: ClusterBenchConfig) -> None:
        self.config = config
        self.queries = np.random.default_rng(config.seed).random((256, 1, 8, 8), dtype=np.float32)
        self.hedge_delays_s: dict[float, float] = {}
        """Per offered rate: ``equal``'s fault-free p95 there, the delay of ``hedged``'s backup copies."""
        self.cluster = LocalCluster(
            config.out / "cluster",
            workers=config.workers,
            parity_workers=config.parity_workers,
            repository=config.repository,
            parity_serves_f=True,
            add_gateway_models=self._add_gateway_models,
        )

    def _add_gateway_models(self, repository: Path, f_addresses: Sequence[str]) -> None:
        """The relay model and the coded endpoint without hedging, beside the coded endpoint on the gateway."""
        self._add_relay(repository, f_addresses)
        coded = repository / self.cluster.coded
        variant = repository / f"{self.cluster.coded}{NOHEDGE_SUFFIX}"
        variant.mkdir()
        for version in (p for p in coded.iterdir() if p.is_dir()):
            (variant / version.name).symlink_to(version.resolve(), target_is_directory=True)
        config = with_parameters((coded / "config.pbtxt").read_text(), {"hedge_below_load": "0"})
        (variant / "config.pbtxt").write_text(config.replace(f'name: "{coded.name}"', f'name: "{variant.name}"', 1))

    def _add_relay(self, repository: Path, f_addresses: Sequence[str]) -> None:
        """The relay model on the gateway, with F's own signature (from F's config)."""
        f_model = self.cluster.f_model
        signature = "\n".join(_signature_lines((self.config.repository / f_model / "config.pbtxt").read_text()))
        relay = repository / f"{f_model}{RELAY_SUFFIX}"
        (relay / "1").mkdir(parents=True)
        (relay / "1" / "model.py").write_text(RELAY_SOURCE.read_text())
        (relay / "config.pbtxt").write_text(
            f'name: "{relay.name}"\nbackend: "python"\n{signature}\n'
            "instance_group { count: 1 kind: KIND_CPU }\n"
            f'parameters {{ key: "f_model" value {{ string_value: "{f_model}" }} }}\n'
            f'parameters {{ key: "f_workers" value {{ string_value: "{",".join(f_addresses)}" }} }}\n'
        )

    def _client(self, scheme: str) -> Any:
        cluster, config = self.cluster, self.config
        if scheme in ("equal", "hedged"):
            urls = [cluster[name].grpc_url for name in cluster.names("f") + cluster.names("parity")]
            return BalancedClient(urls, cluster.f_model, "input", "logits", config.timeout_s)
        models = {
            "parm-k2": cluster.coded,
            "parm-k2-nohedge": f"{cluster.coded}{NOHEDGE_SUFFIX}",
            "relay": f"{cluster.f_model}{RELAY_SUFFIX}",
        }
        model = models[scheme]
        return OpenLoopClient(
            cluster.gateway.grpc_url, model, "input", "logits", flag_output=scheme.startswith("parm"),
            timeout_s=config.timeout_s,
        )  # fmt: skip

    async def _load(self, scheme: str, rate: float, duration_s: float, seed: int) -> RunResult:
        arrivals = poisson_arrivals(rate, duration_s, seed)
        hedge = self.hedge_delays_s[rate] if scheme == "hedged" else None
        async with self._client(scheme) as client:
            return await run_open_loop(
                client, self.queries, arrivals, rate=rate, duration_s=duration_s, seed=seed, hedge_delay_s=hedge
            )

    def _faults(self, cell: BenchCell, seed: int) -> list[tuple[float, str, str, float]]:
        if cell.scenario == "no-fault":
            return []
        return fault_schedule(self.config, self.cluster.names("f"), seed, cell.faulty_share)

    async def run_cell(self, cell: BenchCell, round_: int) -> None:
        """One round of ``cell``: the same arrivals and faults as every other cell of its rate, faulty share and
        round get (the seed is the round's)."""
        config = self.config
        seed = config.seed + 1000 * round_
        await self._load(cell.scheme, cell.rate, config.warmup_s, seed + 7919)
        schedule = self._faults(cell, seed)
        timers, faults = [], []

        def inject(kind: str, worker: str, seconds: float) -> None:
            pid = self.cluster[worker].pid
            fault: Fault = (
                ServerPause(pid, max_seconds=seconds)
                if kind == "pause"
                else ServerCpuQuota(pid, config.throttle_cpus, max_seconds=seconds)
            )
            faults.append(fault)
            fault.apply()

        for at, kind, worker, seconds in schedule:
            timer = threading.Timer(at, inject, args=(kind, worker, seconds))
            timer.daemon = True
            timers.append(timer)
        cpu_before, started = _cluster_cpu_s(self.cluster), time.monotonic()
        for timer in timers:
            timer.start()
        try:
            result = await self._load(cell.scheme, cell.rate, config.duration_s, seed)
        finally:
            for timer in timers:
                timer.cancel()
            for fault in faults:
                fault.undo()
        cell.cpu_s += _cluster_cpu_s(self.cluster) - cpu_before
        cell.wall_s += time.monotonic() - started
        cell.fault_log += faults
        cell.parts.append(result)
        if cell.scheme == "equal" and cell.scenario == "no-fault" and cell.rate not in self.hedge_delays_s:
            self.hedge_delays_s[cell.rate] = float(np.percentile(result.latencies, 95))

    def run(self) -> list[CellStats]:
        """The benchmark's cells at its one rate: every scheme without and with faults, ``equal`` fault-free first
        (hedging's delay is its p95), in the same order every round."""
        config = self.config
        cells = [
            BenchCell(scheme, scenario, config.rate, config.faulty_share)
            for scenario in SCENARIOS
            for scheme in SCHEMES
        ]
        self.run_cells([(round_, cell) for round_ in range(config.rounds) for cell in cells])
        return [self.stats(cell) for cell in cells]

    def run_cells(self, order: Sequence[tuple[int, BenchCell]]) -> None:
        """Starts the cluster once and runs each (round, cell) of ``order`` in turn; a ``hedged`` cell needs a
        fault-free ``equal`` cell of its rate before it."""
        with self.cluster:
            for round_, cell in order:
                logger.info("round %d: %s / %s at %g requests/s", round_ + 1, cell.scenario, cell.scheme, cell.rate)
                asyncio.run(self.run_cell(cell, round_))

    def stats(self, cell: BenchCell) -> CellStats:
        merged = _merge(cell.parts)
        instances = self.config.workers + self.config.parity_workers
        return cell_stats(
            merged,
            scenario=cell.scenario,
            scheme=cell.scheme,
            instances=instances,
            cpu_s={"servers": cell.cpu_s},
            cpu_wall_s=cell.wall_s,
            cpus=psutil.cpu_count(),
            rounds=cell.parts,
            fault_log=cell.fault_log,
            faults_undone=not any(fault.active for fault in cell.fault_log),
        )


def _signature_lines(config_text: str) -> list[str]:
    """The ``max_batch_size``, ``input`` and ``output`` blocks of a config.pbtxt, as lines."""
    lines, depth, keep = [], 0, False
    for line in config_text.splitlines():
        stripped = line.strip()
        if depth == 0:
            keep = stripped.startswith(("input", "output", "max_batch_size"))
        if keep:
            lines.append(line)
        depth += line.count("{") + line.count("[") - line.count("}") - line.count("]")
    return lines


def _merge(parts: Sequence[RunResult]) -> RunResult:
    """The rounds of one cell as one run (records renumbered, durations added)."""
    first = parts[0]
    records = [record for part in parts for record in part.records]
    return RunResult(
        model=first.model,
        rate=first.rate,
        duration_s=sum(part.duration_s for part in parts),
        started_wall=first.started_wall,
        records=records,
        hedge_delay_s=first.hedge_delay_s,
        max_send_lag_s=max(part.max_send_lag_s for part in parts),
        wall_s=sum(part.wall_s for part in parts),
        unfinished=sum(part.unfinished for part in parts),
        gc_pauses=[pause for part in parts for pause in part.gc_pauses],
    )


def run_cluster_bench(config: ClusterBenchConfig) -> Path:
    """Runs the benchmark, writes ``report.md`` and ``summary.json`` under ``config.out``; returns the report."""
    config.out.mkdir(parents=True, exist_ok=True)
    bench = ClusterBench(config)
    cells = bench.run()
    hedge_delay_s = bench.hedge_delays_s.get(config.rate)
    checks = check_targets(cells, faulty="faults")
    header = [
        f"Cluster: {config.workers} F workers, {config.parity_workers} parity workers (serving F too, for the "
        f"equal-resources baseline) and a gateway. {config.rate:g} requests/s, {config.duration_s:g} s x "
        f"{config.rounds} rounds per cell; faults: whole F-worker pauses of {config.pause_s[0]:g}-"
        f"{config.pause_s[1]:g} s and throttling to {config.throttle_cpus:g} CPU for {config.throttle_s[0]:g}-"
        f"{config.throttle_s[1]:g} s ({config.throttle_share:.0%} of the faults), one worker faulty "
        f"{config.faulty_share:.0%} of the time; hedge delay "
        f"{1000 * (hedge_delay_s or 0):.1f} ms (equal's fault-free p95). The servers share this machine's "
        "CPUs: the failure domains are processes, not machines, so the numbers are relative.",
    ]
    errors: dict[str, int] = {}
    for cell in cells:
        for kind, count in cell.error_kinds.items():
            errors[f"{cell.scenario}/{cell.scheme}: {kind}"] = count
    report = config.out / "report.md"
    report.write_text(markdown_report(cells, checks, header, errors))
    write_summary(
        config.out / "summary.json",
        {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
            "hedge_delay_ms": None if hedge_delay_s is None else 1000 * hedge_delay_s,
            "cells": [cell.as_json() for cell in cells],
            "targets": [check.as_json() for check in checks],
        },
    )
    return report

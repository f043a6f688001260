"""``parm cluster soak``: a long steady load on a local cluster's gateway under random whole-server faults, with the
single-server soak's checks.

Faults, one at a time, on random workers (``ClusterSoakConfig``): stalls of a whole server (SIGSTOP of its process
group, up to ``pause_max_s``), kills of an F worker followed by a restart on its ports ``restart_after_s`` later, as
an orchestrator of pods would, and CPU throttling of a whole server. Checks: every request answered exactly once
(client side, and the gateway's own counters), no answer computed by F differs from F's own class for that query,
every error overlaps a fault window (its span plus a request deadline), every fault undone, no orchestrator crash in
the gateway's log, and the gateway's memory flat over the second half of the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from parm.cluster import LocalCluster
from parm.loadtest import prometheus
from parm.loadtest.configs import ClusterSoakConfig
from parm.loadtest.faults import Fault, cgroup_quota_available
from parm.loadtest.openloop import OpenLoopClient, RunResult, poisson_arrivals, run_open_loop
from parm.loadtest.report import cell_stats, write_summary
from parm.loadtest.server_faults import ServerCpuQuota, ServerKill, ServerPause
from parm.loadtest.soak import (
    MemorySampler,
    memory_trends,
    orchestrator_crashes,
    unexplained_errors,
    wrong_originals,
)

logger = logging.getLogger(__name__)


@dataclass
class FaultRecord:
    kind: str
    server: str
    applied_at: float
    undone_at: float | None = None
    error: str | None = None


class ClusterFaults:
    """Applies random whole-server faults on a thread until stopped; every fault is undone and logged."""

    def __init__(self, cluster: LocalCluster, config: ClusterSoakConfig) -> None:
        self.cluster = cluster
        self.config = config
        self.log: list[FaultRecord] = []
        self._rng = np.random.default_rng(config.seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-faults", daemon=True)
        self._throttle = cgroup_quota_available()

    def __enter__(self) -> ClusterFaults:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        config = self.config
        while not self._stop.wait(float(self._rng.uniform(*config.gap_s))):
            draw = self._rng.random()
            f_workers = self.cluster.names("f")
            if draw < config.kill_share:
                self._kill(str(self._rng.choice(f_workers)))
            elif draw < config.kill_share + config.throttle_share and self._throttle:
                server = str(self._rng.choice(f_workers + self.cluster.names("parity")))
                seconds = float(self._rng.uniform(2.0, 8.0))
                self._hold("throttle", server, lambda pid: ServerCpuQuota(pid, config.throttle_cpus), seconds)
            else:
                server = str(self._rng.choice(f_workers + self.cluster.names("parity")))
                seconds = float(self._rng.uniform(0.5, config.pause_max_s))
                self._hold("pause", server, lambda pid, s=seconds: ServerPause(pid, max_seconds=s + 5), seconds)

    def _hold(self, kind: str, server: str, make: Any, seconds: float) -> None:
        record = FaultRecord(kind, server, time.time())
        self.log.append(record)
        fault: Fault | None = None
        try:
            fault = make(self.cluster[server].pid)
            fault.apply()
            self._stop.wait(seconds)
        except Exception as error:  # a failed injection is recorded, and the soak goes on
            record.error = str(error)
        finally:
            if fault is not None:
                fault.undo()
            record.undone_at = time.time()

    def _kill(self, server: str) -> None:
        record = FaultRecord("kill", server, time.time())
        self.log.append(record)
        try:
            ServerKill(self.cluster[server].pid).apply()
            time.sleep(self.config.restart_after_s)
            self.cluster.restart(server)
        except Exception as error:
            record.error = str(error)
        finally:
            record.undone_at = time.time()


def f_classes(cluster: LocalCluster, queries: np.ndarray) -> np.ndarray:
    """F's own class for each query, from a worker directly."""
    client = grpcclient.InferenceServerClient(cluster[cluster.names("f")[0]].grpc_url)
    try:
        classes = []
        for start in range(0, len(queries), 16):  # within any F's max_batch_size
            chunk = queries[start : start + 16]
            tensor = grpcclient.InferInput("input", list(chunk.shape), "FP32")
            tensor.set_data_from_numpy(chunk)
            classes.append(client.infer(cluster.f_model, [tensor]).as_numpy("logits").argmax(axis=1))
        return np.concatenate(classes)
    finally:
        client.close()


def _counters(cluster: LocalCluster) -> dict[str, float]:
    samples = prometheus.scrape(cluster.gateway.metrics_url)
    return {
        "requests": prometheus.metric_sum(samples, "parm_requests_total", model=cluster.coded),
        "answers": prometheus.metric_sum(samples, "parm_answers_total", model=cluster.coded),
    }


def run_cluster_soak(config: ClusterSoakConfig) -> dict[str, Any]:
    """Runs the soak; writes ``soak.json`` and ``soak.md`` under ``config.out``; returns the summary."""
    config.out.mkdir(parents=True, exist_ok=True)
    queries = np.random.default_rng(config.seed).random((256, 1, 8, 8), dtype=np.float32)
    with LocalCluster(
        config.out / "cluster", workers=config.workers, parity_workers=config.parity_workers,
        repository=config.repository,
    ) as cluster:  # fmt: skip
        classes = f_classes(cluster, queries)

        async def load(duration_s: float, seed: int) -> RunResult:
            arrivals = poisson_arrivals(config.rate, duration_s, seed)
            async with OpenLoopClient(
                cluster.gateway.grpc_url, cluster.coded, "input", "logits", flag_output=True,
                timeout_s=config.timeout_s,
            ) as client:  # fmt: skip
                return await run_open_loop(
                    client, queries, arrivals, rate=config.rate, duration_s=duration_s, seed=seed
                )  # fmt: skip

        asyncio.run(load(3.0, config.seed + 7919))
        time.sleep(2.5)
        before = _counters(cluster)
        gateway_pid = cluster.gateway.pid
        with MemorySampler(gateway_pid, [cluster.coded], 2.0) as sampler, ClusterFaults(cluster, config) as faults:
            result = asyncio.run(load(config.duration_s, config.seed))
        time.sleep(5.0)  # two metrics flushes
        after = _counters(cluster)
        crashes = orchestrator_crashes(cluster.gateway.log_path)
    log = faults.log
    windows = [(f.applied_at, (f.undone_at or f.applied_at) + config.deadline_s, f"{f.kind} {f.server}") for f in log]
    unexplained = unexplained_errors(result, windows)
    stats = cell_stats(
        result, scenario="cluster-soak", scheme="parm-k2", instances=config.workers, f_predictions=classes
    )
    wrong = wrong_originals(result, classes)
    memory = [m for m in memory_trends(sampler.samples, result.started_wall, result.started_wall + result.wall_s)
              if m.process.startswith(f"{cluster.coded}_")]  # fmt: skip
    growth = max((m.second_half_growth_mb for m in memory), default=float("nan"))
    sent = stats.count
    counted = {key: after[key] - before[key] for key in before}
    checks = {
        "every request answered once": stats.answers == stats.copies == sent and stats.lost == 0,
        "gateway counters agree": counted["requests"] == counted["answers"] == sent,
        "no wrong answers": wrong == 0,
        "every error overlaps a fault": not unexplained,
        "every fault undone": all(f.undone_at is not None for f in log),
        "no orchestrator crash logged": not crashes,
        "gateway memory bounded": bool(memory) and growth <= config.memory_growth_limit_mb,
    }
    kinds: dict[str, int] = {}
    for record in log:
        kinds[record.kind] = kinds.get(record.kind, 0) + 1
    summary = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "sent": sent,
        "ok": stats.ok,
        "errors": stats.errors,
        "rebuilt": stats.rebuilt,
        "p50_ms": stats.p50,
        "p99_ms": stats.p99,
        "p999_ms": stats.p999,
        "max_ms": stats.max,
        "gateway_counted": counted,
        "wrong_answers": wrong,
        "unexplained_errors": unexplained[:20],
        "faults": kinds,
        "fault_errors": [asdict(f) for f in log if f.error],
        "gateway_memory_growth_mb": growth,
        "crashes": crashes[:5],
        "checks": checks,
        "passed": all(checks.values()),
    }
    write_summary(config.out / "soak.json", summary)
    lines = [
        f"# Cluster soak: {config.rate:g} requests/s for {config.duration_s:g} s, "
        f"{config.workers} F workers, {config.parity_workers} parity workers, a gateway",
        "",
        f"{sent} requests: {stats.ok} answered ({stats.rebuilt} rebuilt), {stats.errors} errors; p50 {stats.p50:.1f} "
        f"ms, p99 {stats.p99:.1f} ms, p99.9 {stats.p999:.1f} ms, max {stats.max:.1f} ms. Faults: "
        + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())),
        "",
        "| check | passed |",
        "|---|---|",
        *[f"| {name} | {'yes' if ok else '**no**'} |" for name, ok in checks.items()],
        "",
        f"Gateway memory growth over the second half: {growth:.1f} MB. Errors by kind: "
        + (json.dumps(stats.error_kinds) if stats.error_kinds else "none"),
    ]
    (config.out / "soak.md").write_text("\n".join(lines) + "\n")
    return summary

"""``parm soak``: minutes of steady load on the coded endpoint under random pauses and kills, checking that nothing
is lost, nothing is answered twice, every error has a fault to blame, and the orchestrator's memory stays bounded.

One embedded server serves the benchmark repository (``benchrepo``). An open-loop Poisson load at a steady rate runs
for the whole duration against the coded endpoint while ``scenarios.soak_scenario`` pauses random F and parity
instances and kills one now and then; a killed model is restarted without downtime (``TritonServer.reload_model``),
as an operator would. A sampler records the resident memory of the server and of every instance process.

Checks (``soak.json`` / ``soak.md``, and the exit status of ``parm soak``):

- answered: every request sent got exactly one answer (a result or an error), none left unanswered;
- no duplicates: the server counted as many requests as were sent, and the endpoint's own counters
  (``parm_requests_total``, ``parm_answers_total``) moved by exactly that many;
- no wrong answers: every answer that F computed is F's own class for that query;
- errors explained: every failed request overlapped a fault (its window extended by the request deadline);
- memory bounded: the orchestrator's RSS grew by at most ``memory_growth_limit_mb`` over the second half of the run
  (allocations settle in the first half; a leak keeps growing);
- every fault undone.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from parm.backend.orchestrator import CRASH_LOG_MARKERS
from parm.backend.orchestrator.metrics import FLUSH_PERIOD_S
from parm.errors import ConfigError
from parm.export.data import load_digits_splits
from parm.export.repository import parse_orchestrator_config, read_config
from parm.server import TritonServer

from . import prometheus
from .accounting import server_request_count
from .benchrepo import BenchRepository, ensure_bench_repository, f_predictions
from .configs import SoakConfig
from .faults import find_instance_pids
from .openloop import OpenLoopClient, RunResult, poisson_arrivals, run_open_loop
from .report import CellStats, cell_stats, percentile, write_requests_csv, write_summary
from .scenarios import FaultKind, FaultLogEntry, FaultRunner, Scenario, soak_scenario

logger = logging.getLogger(__name__)

SERVER = "tritonserver"
TOTAL = "server and all its processes"
"""The sampler's sum over tritonserver and every child process (retired instances included); pid 0 in the samples."""


@dataclass(frozen=True)
class MemorySample:
    wall: float
    process: str
    """``tritonserver`` or an instance name (``deep_coded_0_0``)."""
    pid: int
    rss_mb: float


class MemorySampler:
    """Samples the RSS of the server and of every instance process of ``models`` every ``every_s`` seconds on a
    thread, plus the total over the server and all its children and how many children are alive. Instances are
    looked up at each sample, so a restarted instance (new pid) is followed."""

    def __init__(self, server_pid: int, models: Sequence[str], every_s: float) -> None:
        self.server_pid = server_pid
        self.models = tuple(models)
        self.every_s = every_s
        self.samples: list[MemorySample] = []
        self.child_counts: list[tuple[float, int]] = []
        """(wall time, live child processes of the server): instances, and retired ones not yet gone."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        now = time.time()
        processes = {SERVER: self.server_pid}
        for model in self.models:
            processes.update(find_instance_pids(self.server_pid, model))
        for name, pid in processes.items():
            try:
                rss = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue  # killed by the soak a moment ago
            self.samples.append(MemorySample(now, name, pid, rss / 2**20))
        total, children = 0, 0
        server = psutil.Process(self.server_pid)
        for process in [server, *server.children()]:
            try:
                total += process.memory_info().rss
                children += process.status() != psutil.STATUS_ZOMBIE and process is not server
            except psutil.Error:
                continue
        self.samples.append(MemorySample(now, TOTAL, 0, total / 2**20))
        self.child_counts.append((now, children))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # a failed sample must not end the run; the gap shows in the series
                logger.warning("memory sample failed: %s", exc)
            self._stop.wait(self.every_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()


@dataclass(frozen=True)
class MemoryTrend:
    process: str
    pid: int
    first_mb: float
    """Median RSS over the first tenth of the run."""
    middle_mb: float
    """Median RSS around the middle of the run."""
    last_mb: float
    """Median RSS over the last tenth of the run."""
    max_mb: float
    second_half_growth_mb: float
    """last - middle: how much it still grew once allocations had settled."""
    slope_mb_per_min: float
    """Least-squares slope over the second half."""


def memory_trends(samples: Sequence[MemorySample], start_wall: float, end_wall: float) -> list[MemoryTrend]:
    """One trend per process (a restarted instance keeps its name under a new pid: its own trend, NaN where it did
    not live)."""
    length = max(end_wall - start_wall, 1e-9)
    trends = []
    for name, pid in sorted({(s.process, s.pid) for s in samples}):
        series = sorted((s.wall, s.rss_mb) for s in samples if s.pid == pid)
        t = (np.array([w for w, _ in series]) - start_wall) / length
        rss = np.array([r for _, r in series])

        def median(lo: float, hi: float, t: np.ndarray = t, rss: np.ndarray = rss) -> float:
            chosen = rss[(t >= lo) & (t <= hi)]
            return float(np.median(chosen)) if len(chosen) else float("nan")

        half = t >= 0.5
        slope = float("nan")
        if half.sum() >= 2 and np.ptp(t[half]) > 0:
            slope = float(np.polyfit(t[half] * length / 60.0, rss[half], 1)[0])
        middle, last = median(0.45, 0.55), median(0.9, 1.0)
        first = median(0.0, 0.1)
        trends.append(MemoryTrend(name, pid, first, middle, last, float(rss.max()), last - middle, slope))
    return trends


@dataclass(frozen=True)
class WindowStats:
    start_s: float
    count: int
    ok: int
    errors: int
    rebuilt: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def window_stats(result: RunResult, window_s: float) -> list[WindowStats]:
    """The run cut into windows of ``window_s`` by scheduled send time."""
    out = []
    for start in np.arange(0.0, result.duration_s, window_s):
        records = [r for r in result.records if start <= r.scheduled < start + window_s]
        latencies = 1000 * np.array([r.latency for r in records if r.ok])
        out.append(
            WindowStats(
                float(start),
                len(records),
                len(latencies),
                sum(not r.ok for r in records),
                sum(r.ok and r.rebuilt for r in records),
                percentile(latencies, 50),
                percentile(latencies, 99),
                float(latencies.max()) if len(latencies) else float("nan"),
            )
        )
    return out


def fault_windows(log: Sequence[FaultLogEntry], slack_s: float) -> list[tuple[float, float, str]]:
    """(from, to, what) in wall-clock time during which a fault can explain a failed request: from the fault's start
    to its end (a kill: to the end of its model's restart) plus ``slack_s`` (a request's deadline)."""
    windows = []
    restarts = [e for e in log if e.kind == FaultKind.RESTART.value and e.undone_at is not None]
    for entry in log:
        if entry.applied_at is None or entry.kind == FaultKind.RESTART.value:
            continue
        end = entry.undone_at
        if entry.kind == FaultKind.KILL.value:
            later = [r.undone_at for r in restarts if r.model == entry.model and r.applied_at >= entry.applied_at]
            end = min(later) if later else float("inf")
        windows.append((entry.applied_at, (end or entry.applied_at) + slack_s, f"{entry.kind} {entry.instance}"))
    return windows


def unexplained_errors(result: RunResult, windows: Sequence[tuple[float, float, str]]) -> list[dict[str, Any]]:
    """Failed requests whose time in flight overlaps no fault window."""
    out = []
    for record in result.records:
        if record.ok:
            continue
        sent = result.started_wall + (record.sent if np.isfinite(record.sent) else record.scheduled)
        answered = result.started_wall + record.scheduled + (record.latency if np.isfinite(record.latency) else 0.0)
        if not any(lo <= answered and sent <= hi for lo, hi, _ in windows):
            out.append({"index": record.index, "sent_wall": round(sent, 3), "error": record.error})
    return out


@dataclass(frozen=True)
class SoakCheck:
    name: str
    passed: bool
    detail: str


@dataclass
class SoakOutcome:
    config: SoakConfig
    stats: CellStats
    windows: list[WindowStats]
    memory: list[MemoryTrend]
    checks: list[SoakCheck]
    scenario: Scenario
    counters: dict[str, float]
    unexplained: list[dict[str, Any]]
    child_processes: dict[str, int] = field(default_factory=dict)
    """Live child processes of the server (first, last, max sample): a restart that cannot retire a version
    leaves processes behind."""
    files: dict[str, Path] = field(default_factory=dict)
    markdown: str = ""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def orchestrator_crashes(log_path: Path | None) -> list[str]:
    """Lines of the server's log saying something on an orchestrator's loop raised (``CRASH_LOG_MARKERS``)."""
    if log_path is None or not log_path.is_file():
        return []
    lines = log_path.read_text(errors="replace").splitlines()
    return [line.strip() for line in lines if any(marker in line for marker in CRASH_LOG_MARKERS)]


def wrong_originals(result: RunResult, predictions: np.ndarray) -> int:
    """Answers computed by F (not rebuilt) whose class is not F's own for that query: a mixed-up answer."""
    return sum(1 for r in result.records if r.ok and not r.rebuilt and r.prediction != predictions[r.query])


def soak_checks(
    config: SoakConfig,
    stats: CellStats,
    counters: dict[str, float],
    wrong: int,
    unexplained: Sequence[dict[str, Any]],
    memory: Sequence[MemoryTrend],
    orchestrator: str,
    children: dict[str, int],
    crashes: Sequence[str] = (),
) -> list[SoakCheck]:
    sent = stats.count
    checks = [
        SoakCheck(
            "every request answered once",
            stats.answers == stats.copies == sent and stats.lost == 0 and stats.duplicated == 0,
            f"{sent} sent, {stats.answers} answers ({stats.ok} results, {stats.errors} errors), {stats.lost} lost",
        ),
        SoakCheck(
            "server counted each request once",
            stats.server_requests == sent,
            f"tritonserver counted {stats.server_requests} requests for the coded model; {sent} were sent",
        ),
        SoakCheck(
            "endpoint counters agree",
            counters.get("requests") == counters.get("answers") == sent,
            f"parm_requests_total +{counters.get('requests', float('nan')):g}, "
            f"parm_answers_total +{counters.get('answers', float('nan')):g}, {sent} sent",
        ),
        SoakCheck("no wrong answers", wrong == 0, f"{wrong} answers computed by F differ from F's own class"),
        SoakCheck(
            "every error overlaps a fault",
            not unexplained,
            f"{stats.errors} errors, {len(unexplained)} with no fault in flight",
        ),
        SoakCheck("every fault undone", stats.faults_undone, f"{stats.faults} faults applied"),
        SoakCheck(
            "no orchestrator crash logged",
            not crashes,
            f"{len(crashes)} lines in the server log" + "".join(f"; {line[:160]}" for line in crashes[:3]),
        ),
    ]
    checks.append(
        SoakCheck(
            "restarts leave no process behind",
            bool(children) and children.get("last") == children.get("first"),
            f"server child processes: {children.get('first')} at the start, {children.get('last')} at the end "
            f"(at most {children.get('max')}); retired instances are reaped {config.reap_after_s:g} s after a "
            "restart",
        )
    )
    mine = [m for m in memory if m.process.startswith(f"{orchestrator}_")]
    growth = max((m.second_half_growth_mb for m in mine if np.isfinite(m.second_half_growth_mb)), default=float("nan"))
    checks.append(
        SoakCheck(
            "orchestrator memory bounded",
            bool(mine) and growth <= config.memory_growth_limit_mb,
            f"{orchestrator} RSS grew {growth:.1f} MB over the second half (limit {config.memory_growth_limit_mb:g} MB)"
            + "".join(f"; {m.process}: {m.first_mb:.0f} -> {m.last_mb:.0f} MB, max {m.max_mb:.0f}" for m in mine),
        )
    )
    return checks


class Soak:
    def __init__(self, config: SoakConfig, repo: BenchRepository) -> None:
        self.config = config
        self.repo = repo
        self.out = Path(config.out_dir)
        self.coded = repo.coded[config.k]
        orchestrator = parse_orchestrator_config(read_config(repo.path / self.coded / "config.pbtxt"))
        self.targets = {
            **{model: repo.f_instances for model in orchestrator.f_models},
            **{model: repo.parity_instances for model in orchestrator.parity_models},
        }
        self.queries = load_digits_splits(config.seed).test.x
        self.predictions = f_predictions(repo, self.queries)

    def _client(self, server: TritonServer) -> OpenLoopClient:
        return OpenLoopClient(
            server.grpc_url,
            self.coded,
            self.repo.input_name,
            self.repo.output_name,
            flag_output=True,
            timeout_s=self.config.timeout_s,
        )

    async def _load(self, server: TritonServer, duration_s: float, seed: int) -> RunResult:
        arrivals = poisson_arrivals(self.config.rate, duration_s, seed)
        async with self._client(server) as client:
            return await run_open_loop(
                client, self.queries, arrivals, rate=self.config.rate, duration_s=duration_s, seed=seed
            )

    def _counters(self, server: TritonServer) -> dict[str, float]:
        samples = prometheus.scrape(server.metrics_url)
        return {
            "requests": prometheus.metric_sum(samples, "parm_requests_total", model=self.coded),
            "answers": prometheus.metric_sum(samples, "parm_answers_total", model=self.coded),
            "in_flight": prometheus.metric_sum(samples, "parm_in_flight_requests", model=self.coded),
        }

    def _settled_counters(self, server: TritonServer, timeout_s: float = 6 * FLUSH_PERIOD_S) -> dict[str, float]:
        """The endpoint's counters once it has nothing in flight and two scrapes a flush period apart agree."""
        deadline = time.monotonic() + timeout_s
        previous = None
        while True:
            counters = self._counters(server)
            if (counters == previous and counters["in_flight"] == 0) or time.monotonic() > deadline:
                return counters
            previous = counters
            time.sleep(FLUSH_PERIOD_S + 0.1)

    def run(self) -> SoakOutcome:
        config = self.config
        scenario = soak_scenario(
            config.duration_s,
            config.rate,
            self.targets,
            hit_fraction=config.hit_fraction,
            pause_min_s=config.pause_min_s,
            pause_max_s=config.pause_max_s,
            kill_every_s=config.kill_every_s,
            restart_after_s=config.restart_after_s,
            quiet_tail_s=config.reap_after_s + 2 * config.sample_every_s + 1.0,
            seed=config.seed,
        )
        logger.info("soak: %g requests/s for %g s on %s; %s", config.rate, config.duration_s, self.coded,
                    scenario.description)  # fmt: skip
        server = TritonServer(
            self.repo.path,
            log_dir=self.out / "logs",
            startup_timeout=180.0,
            extra_args=("--model-control-mode=explicit", "--load-model=*"),
        )
        with server:
            if config.warmup_s > 0:
                asyncio.run(self._load(server, config.warmup_s, config.seed + 7919))
            time.sleep(1.0)
            before = self._settled_counters(server)
            requests_before = server_request_count(server.grpc_url, self.coded)
            models = [self.coded, *self.targets]
            runner = FaultRunner(
                scenario, server.pid, self.coded, restart=partial(server.reload_model, reap_after_s=config.reap_after_s)
            )
            with MemorySampler(server.pid, models, config.sample_every_s) as sampler:
                runner.start()
                try:
                    result = asyncio.run(self._load(server, config.duration_s, config.seed))
                finally:
                    log = runner.stop()
                    undone = runner.all_undone()
            after = self._settled_counters(server)
            requests_after = server_request_count(server.grpc_url, self.coded)
            crashes = orchestrator_crashes(server.log_path)
        server_requests = None
        if requests_before is not None and requests_after is not None:
            server_requests = requests_after - requests_before
        counters = {key: after[key] - before[key] for key in ("requests", "answers")}
        stats = cell_stats(
            result,
            scenario=scenario.name,
            scheme=f"parm-k{config.k}",
            instances=sum(self.targets.values()),
            f_predictions=self.predictions,
            server_requests=server_requests,
            fault_log=[e for e in log if e.kind != FaultKind.RESTART.value],
            faults_undone=undone,
        )
        unexplained = unexplained_errors(result, fault_windows(log, config.timeout_s))
        memory = memory_trends(sampler.samples, result.started_wall, result.started_wall + result.wall_s)
        counts = [count for _, count in sampler.child_counts] or [0]
        children = {"first": counts[0], "last": counts[-1], "max": max(counts)}
        checks = soak_checks(
            config,
            stats,
            counters,
            wrong_originals(result, self.predictions),
            unexplained,
            memory,
            self.coded,
            children,
            crashes,
        )
        outcome = SoakOutcome(
            config,
            stats,
            window_stats(result, config.window_s),
            memory,
            checks,
            scenario,
            counters,
            unexplained,
            children,
        )
        outcome.files = write_soak_outputs(self.out, outcome, result, log, sampler.samples)
        return outcome


def soak_markdown(outcome: SoakOutcome) -> str:
    config, stats = outcome.config, outcome.stats
    lines = [
        f"# Soak: {config.rate:g} requests/s for {config.duration_s:g} s on ParM k = {config.k}",
        "",
        f"Faults: {outcome.scenario.description}.",
        "",
        "| check | result | detail |",
        "|---|---|---|",
        *(f"| {c.name} | {'pass' if c.passed else 'FAIL'} | {c.detail} |" for c in outcome.checks),
        "",
        f"Whole run: {stats.count} requests, p50 {stats.p50:.2f} ms, p99 {stats.p99:.2f} ms, "
        f"p99.9 {stats.p999:.2f} ms, max {stats.max:.1f} ms; {stats.rebuilt} rebuilt "
        f"({100 * stats.rebuilt_fraction:.2f}%), {stats.errors} errors.",
        "",
    ]
    if stats.error_kinds:
        lines += ["Errors by cause:", "", *(f"- {n} x {kind}" for kind, n in stats.error_kinds.items()), ""]
    lines += [
        "| window start (s) | requests | errors | rebuilt | p50 (ms) | p99 (ms) | max (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {w.start_s:g} | {w.count} | {w.errors} | {w.rebuilt} | {w.p50_ms:.2f} | {w.p99_ms:.2f} | "
            f"{w.max_ms:.1f} |"
            for w in outcome.windows
        ),
        "",
        f"Child processes of the server (instances, and retired instances not yet gone): "
        f"{outcome.child_processes.get('first')} at the start, {outcome.child_processes.get('last')} at the end, "
        f"{outcome.child_processes.get('max')} at most.",
        "",
        "| process | RSS first (MB) | middle | last | max | growth, 2nd half | slope, 2nd half (MB/min) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {m.process} ({m.pid}) | {m.first_mb:.1f} | {m.middle_mb:.1f} | {m.last_mb:.1f} | {m.max_mb:.1f} | "
            f"{m.second_half_growth_mb:+.1f} | {m.slope_mb_per_min:+.2f} |"
            for m in outcome.memory
        ),
        "",
    ]
    return "\n".join(lines)


def write_soak_outputs(
    out: Path,
    outcome: SoakOutcome,
    result: RunResult,
    log: Sequence[FaultLogEntry],
    samples: Sequence[MemorySample],
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in ("soak.json", "soak.md", "requests.csv", "faults.jsonl", "memory.csv")}
    outcome.markdown = soak_markdown(outcome)
    write_summary(
        files["soak.json"],
        {
            "config": outcome.config.as_json(),
            "passed": outcome.passed,
            "checks": [asdict(c) for c in outcome.checks],
            "stats": outcome.stats.as_json(),
            "counters": outcome.counters,
            "windows": [asdict(w) for w in outcome.windows],
            "memory": [asdict(m) for m in outcome.memory],
            "unexplained_errors": outcome.unexplained,
            "child_processes": outcome.child_processes,
            "scenario": outcome.scenario.as_json(),
            "started_wall": result.started_wall,
        },
    )
    files["soak.md"].write_text(outcome.markdown)
    write_requests_csv(files["requests.csv"], [(outcome.config.rate, "soak", outcome.stats.scheme, result)])
    with open(files["faults.jsonl"], "w") as f:
        for entry in log:
            f.write(json.dumps(asdict(entry)) + "\n")
    with open(files["memory.csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seconds", "process", "pid", "rss_mb"])
        for s in samples:
            writer.writerow([f"{s.wall - result.started_wall:.3f}", s.process, s.pid, f"{s.rss_mb:.2f}"])
    files["soak.png"] = plot_soak(out / "soak.png", outcome, result, log, samples)
    return files


def plot_soak(
    path: Path,
    outcome: SoakOutcome,
    result: RunResult,
    log: Sequence[FaultLogEntry],
    samples: Sequence[MemorySample],
    bin_s: float = 5.0,
) -> Path:
    """Latency per 5 s bin (p50, p99, max) above RSS per process, with the faults marked, on one time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    edges = np.arange(0.0, result.duration_s + bin_s, bin_s)
    for label, q in (("p50", 50), ("p99", 99), ("max", 100)):
        values = []
        for lo in edges[:-1]:
            latencies = [1000 * r.latency for r in result.records if r.ok and lo <= r.scheduled < lo + bin_s]
            values.append(percentile(np.array(latencies), q))
        top.plot(edges[:-1] + bin_s / 2, values, label=label)
    errors = [r.scheduled for r in result.records if not r.ok]
    if errors:
        top.plot(errors, [1.0] * len(errors), "rx", label="error")
    top.set_yscale("log")
    top.set_ylabel(f"latency per {bin_s:g} s (ms)")
    top.legend(loc="upper right", fontsize=8)
    for name, pid in sorted({(s.process, s.pid) for s in samples}):
        series = sorted((s.wall - result.started_wall, s.rss_mb) for s in samples if s.pid == pid)
        bottom.plot([t for t, _ in series], [m for _, m in series], label=f"{name} ({pid})")
    bottom.set_ylabel("RSS (MB)")
    bottom.set_xlabel("seconds into the run")
    bottom.legend(loc="upper left", fontsize=7, ncol=3)
    colours = {FaultKind.KILL.value: "red", FaultKind.RESTART.value: "green", FaultKind.PAUSE.value: "grey"}
    for entry in log:
        if entry.applied_at is not None:
            for axis in (top, bottom):
                axis.axvline(
                    entry.applied_at - result.started_wall,
                    color=colours.get(entry.kind, "orange"),
                    alpha=0.6 if entry.kind != FaultKind.PAUSE.value else 0.15,
                    linewidth=1,
                )
    top.set_title(f"Soak: {outcome.config.rate:g}/s; red: kill, green: restart, grey: pause")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_soak(config: SoakConfig) -> SoakOutcome:
    repo = ensure_bench_repository(Path(config.models_dir), config.model_spec)
    if config.k not in repo.coded:
        raise ConfigError(f"the benchmark repository has no ParM k = {config.k} (it has {sorted(repo.coded)})")
    return Soak(config, repo).run()

"""``parm loadtest``: the Locust users of ``locustfile.py``, headless, with a summary.

Locust runs in a child process (its gevent monkey-patching must not reach the caller) with ``--run-time`` and
Locust's CSV output; it ends on its own (see the locustfile on gRPC and gevent), and a hard stop (SIGTERM, then
SIGKILL, by pid) remains only as a safety net, reported if it was ever needed. Optionally the embedded Triton server
is started for the run (``serve``), and one model's instance 0 is paused now and then (``pause_model``) so that
rebuilt answers show up in Locust's table under ``<model> [rebuilt]``.
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from parm.errors import ConfigError

from . import faults
from .configs import LoadtestConfig

logger = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
REBUILT_SUFFIX = " [rebuilt]"
"""Suffix of the request name under which the locustfile reports rebuilt answers (the locustfile spells it too: it
runs under Locust alone, and importing it here would monkey-patch this process with gevent)."""
GRACE_S = 30.0
"""How long after its run time Locust may take to stop before the hard stop."""


@dataclass(frozen=True)
class LocustRow:
    """One line of Locust's stats CSV (times in ms)."""

    type: str
    name: str
    requests: int
    failures: int
    median: float
    average: float
    p99: float
    p999: float
    max: float
    rps: float


@dataclass
class LoadtestResult:
    returncode: int
    wall_s: float
    hard_stopped: bool
    rows: list[LocustRow]
    stats_csv: Path
    output_tail: str
    pauses: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> LocustRow | None:
        return next((r for r in self.rows if r.name == "Aggregated"), None)


def locust_command(config: LoadtestConfig) -> list[str]:
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(config.users), "-r", f"{config.spawn_rate:g}", "--run-time", f"{config.duration_s:g}s",
        "--host", config.host, "--stop-timeout", "5", "--csv", str(config.csv_prefix), "--only-summary",
        "--triton-model", config.model, "--triton-protocol", config.protocol,
        "--triton-batch", str(config.batch), "--triton-timeout", f"{config.timeout_s:g}",
        "--triton-wait", f"{config.wait_s:g}",
    ]  # fmt: skip
    if config.grpc_url:
        command += ["--triton-grpc-url", config.grpc_url]
    if config.data:
        command += ["--triton-data", config.data]
    return command + list(config.extra_args)


def _number(row: dict[str, str], key: str) -> float:
    value = row.get(key) or ""
    try:
        return float(value)
    except ValueError:  # "N/A" when Locust has no sample for that column
        return float("nan")


def read_stats(path: Path) -> list[LocustRow]:
    """Locust's ``<prefix>_stats.csv``: one row per request name, and the "Aggregated" row."""
    with open(path, newline="") as f:
        return [
            LocustRow(
                type=row.get("Type", ""),
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                median=_number(row, "Median Response Time"),
                average=_number(row, "Average Response Time"),
                p99=_number(row, "99%"),
                p999=_number(row, "99.9%"),
                max=_number(row, "Max Response Time"),
                rps=_number(row, "Requests/s"),
            )
            for row in csv.DictReader(f)
        ]


def _pause_loop(server_pid: int, model: str, stop: threading.Event, every_s: float, pause_s: float) -> int:
    pid = faults.find_instance_pid(server_pid, model, 0)
    count = 0
    while not stop.wait(every_s):
        with faults.paused(pid, max_seconds=pause_s):
            count += 1
            stop.wait(pause_s)
    return count


def run_locust(
    config: LoadtestConfig,
    *,
    server_pid: int | None = None,
    pause_model: str | None = None,
    pause_every_s: float = 2.0,
    pause_s: float = 0.5,
) -> LoadtestResult:
    """Runs Locust headless in a child process and reads its stats; see the module docstring."""
    if pause_model and server_pid is None:
        raise ConfigError("pausing an instance needs the server's pid (start the server with the load test)")
    Path(config.csv_prefix).parent.mkdir(parents=True, exist_ok=True)
    command = locust_command(config)
    logger.info("running: %s", " ".join(command))
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    pauses: list[int] = []
    stop = threading.Event()
    pauser = None
    if pause_model and server_pid is not None:
        pauser = threading.Thread(
            target=lambda: pauses.append(_pause_loop(server_pid, pause_model, stop, pause_every_s, pause_s)),
            name="loadtest-pauses",
            daemon=True,
        )
        pauser.start()
    hard_stopped = False
    try:
        output, _ = process.communicate(timeout=config.duration_s + GRACE_S)
    except subprocess.TimeoutExpired:
        hard_stopped = True
        logger.error("Locust did not stop %g s after its run time: stopping it (pid %d)", GRACE_S, process.pid)
        _stop_group(process)
        output, _ = process.communicate()
    finally:
        stop.set()
        if pauser is not None:
            pauser.join(timeout=5)
        faults.undo_all()
    stats_csv = Path(f"{config.csv_prefix}_stats.csv")
    text = output.decode(errors="replace")
    rows = read_stats(stats_csv) if stats_csv.exists() else []
    return LoadtestResult(
        returncode=process.returncode,
        wall_s=time.monotonic() - started,
        hard_stopped=hard_stopped,
        rows=rows,
        stats_csv=stats_csv,
        output_tail=text[-4000:],
        pauses=sum(pauses),
    )


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to Locust's own process group (it was started in a new session), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def format_summary(result: LoadtestResult) -> str:
    lines = [
        f"{'type':5} {'name':32} {'requests':>8} {'fails':>6} {'median':>7} {'avg':>7} {'p99':>7} {'p99.9':>7} "
        f"{'max':>7} {'req/s':>7}"
    ]
    for r in result.rows:
        lines.append(
            f"{r.type:5} {r.name:32} {r.requests:8d} {r.failures:6d} {r.median:7.1f} {r.average:7.1f} "
            f"{r.p99:7.1f} {r.p999:7.1f} {r.max:7.1f} {r.rps:7.1f}"
        )
    status = "stopped on its own" if not result.hard_stopped else "HARD-STOPPED (did not exit on its own)"
    lines.append(
        f"Locust exit code {result.returncode}, {status}, {result.wall_s:.1f} s"
        + (f"; {result.pauses} pauses injected" if result.pauses else "")
        + f"; stats in {result.stats_csv}"
    )
    return "\n".join(lines)


def locust_args(values: Sequence[str]) -> tuple[str, ...]:
    """Extra Locust arguments given after ``--`` on the ``parm loadtest`` command line."""
    return tuple(v for v in values if v != "--")

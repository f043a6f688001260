"""What the server and the machine say about a run, read around it: the server's request counts, the coded
endpoint's own counters (parities, rebuild phases), and CPU seconds per process."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from typing import Any

import psutil
import tritonclient.grpc as grpcclient

from parm.backend.orchestrator.groups import ParityReason
from parm.backend.orchestrator.metrics import FLUSH_PERIOD_S
from parm.backend.orchestrator.stats import REBUILD_PHASES

from . import prometheus

logger = logging.getLogger(__name__)


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


WITHHELD = "withheld"
PARITY_COLUMNS = (*(reason.value for reason in ParityReason), WITHHELD)
"""``coded_counters`` keys of parities by reason, and of groups whose parity was withheld."""
REBUILDS = "rebuilds"
"""``coded_counters`` key: rebuilt answers whose phases were observed."""


def rebuild_key(phase: str) -> str:
    """``coded_counters`` key of a rebuild phase's seconds, summed over rebuilt answers."""
    return f"rebuild {phase} s"


def coded_counters(metrics_url: str, model: str) -> dict[str, float]:
    """The coded endpoint's own counters so far: parities by reason, groups whose parity was withheld
    (``WITHHELD``), rebuilt answers (``REBUILDS``) and the seconds of each rebuild phase (``rebuild_key``), once
    its last counts were flushed (it flushes every ``FLUSH_PERIOD_S``; the wait is outside the measured load)."""
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
    counts[WITHHELD] = prometheus.metric_sum(samples, "parm_parities_withheld_total", model=model)
    phase = REBUILD_PHASES[0]
    counts[REBUILDS] = prometheus.metric_sum(samples, "parm_rebuild_phase_seconds_count", model=model, phase=phase)
    for phase in REBUILD_PHASES:
        counts[rebuild_key(phase)] = prometheus.metric_sum(
            samples, "parm_rebuild_phase_seconds_sum", model=model, phase=phase
        )
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

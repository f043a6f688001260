"""``parm demo``: the whole product on this machine, end to end, with numbers a person can check.

Trains F and its parity model on scikit-learn digits, exports and verifies them, writes a model repository, serves
it on the embedded Triton server, then calls it as a client would (HTTP and gRPC), pauses one F instance for real
(SIGSTOP) and shows the rebuilt answers, their latency, and whether they agree with F's own predictions.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from parm.backend.orchestrator.contract import RECONSTRUCTED_OUTPUT
from parm.export.repository import ModelNames
from parm.loadtest import faults
from parm.server import TritonServer


@dataclass(frozen=True)
class LatencyComparison:
    """p50 of F called directly and of the coded endpoint, interleaved request by request in one run."""

    requests: int
    f_p50_ms: float
    coded_p50_ms: float
    rebuilt: int
    """Coded answers flagged ``parm_reconstructed``: F took longer than its usual latency and the rebuild won."""
    identical_answers: int
    """Of the answers F computed (not rebuilt), those identical to F called directly: all of them, or it is a bug."""


@dataclass(frozen=True)
class PauseReport:
    """What clients saw while one F instance was SIGSTOPped."""

    requests: int
    rebuilt: int
    rebuilt_agree_with_f: int
    rebuilt_agree_with_label: int
    max_latency_ms: float
    pause_s: float
    pauses: int


def _infer(client, module, model: str, x: np.ndarray, input_name: str, timeout_s: float | None = None):
    tensor = module.InferInput(input_name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    if module is grpcclient:
        return client.infer(model, [tensor], client_timeout=timeout_s)
    return client.infer(model, [tensor])


def compare_latency(
    server: TritonServer, names: ModelNames, x: np.ndarray, input_name: str, output_name: str
) -> LatencyComparison:
    """Sequential HTTP requests, F and coded alternating, so both see the same machine at the same time."""
    client = httpclient.InferenceServerClient(server.http_address)
    f_times, coded_times, identical, rebuilt = [], [], 0, 0
    for row in range(len(x)):
        query = x[row : row + 1]
        start = time.perf_counter()
        direct = _infer(client, httpclient, names.f, query, input_name)
        f_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        coded = _infer(client, httpclient, names.coded, query, input_name)
        coded_times.append(time.perf_counter() - start)
        if coded.as_numpy(RECONSTRUCTED_OUTPUT).any():
            rebuilt += 1
        else:
            identical += bool(np.array_equal(direct.as_numpy(output_name), coded.as_numpy(output_name)))
    return LatencyComparison(
        requests=len(x),
        f_p50_ms=1000 * float(np.median(f_times)),
        coded_p50_ms=1000 * float(np.median(coded_times)),
        rebuilt=rebuilt,
        identical_answers=identical,
    )


def pause_and_query(
    server: TritonServer,
    names: ModelNames,
    x: np.ndarray,
    y: np.ndarray,
    input_name: str,
    output_name: str,
    pauses: int = 4,
    pause_s: float = 0.5,
    clients: int = 4,
) -> tuple[PauseReport, list[str]]:
    """SIGSTOPs F's first instance ``pauses`` times while gRPC clients send ``x`` in bursts, and reports.

    Each pause stays under ``faults.PAUSE_HEALTH_LIMIT_S``: Triton 2.51's Python backend declares a stub that is
    silent for about a second unhealthy (see ``parm.loadtest.faults``). A paused instance holds the one request it
    took; the coded endpoint answers that request from its coding group instead of waiting for the instance.
    """
    client = grpcclient.InferenceServerClient(server.grpc_url)
    pid = faults.find_instance_pids(server.pid, names.f)[f"{names.f}_0_0"]
    latencies = np.zeros(len(x))

    def call(row: int):
        start = time.perf_counter()
        result = _infer(client, grpcclient, names.coded, x[row : row + 1], input_name, timeout_s=60)
        latencies[row] = time.perf_counter() - start
        return result

    bursts = np.array_split(np.arange(len(x)), pauses)
    futures = []
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for burst in bursts:
            with faults.paused(pid, max_seconds=pause_s):
                futures += [pool.submit(call, int(row)) for row in burst]
                time.sleep(pause_s)
            time.sleep(0.2)
        results = [future.result() for future in futures]
    lines, rebuilt, agree_f, agree_label = [], 0, 0, 0
    for row, result in enumerate(results):
        if not result.as_numpy(RECONSTRUCTED_OUTPUT).all():
            continue
        rebuilt += 1
        guess = int(result.as_numpy(output_name).argmax())
        own = int(_infer(client, grpcclient, names.f, x[row : row + 1], input_name).as_numpy(output_name).argmax())
        agree_f += guess == own
        agree_label += guess == int(y[row])
        lines.append(
            f"  query {row:3d}: rebuilt in {1000 * latencies[row]:6.1f} ms -> class {guess} "
            f"(F's own answer {own}, label {int(y[row])})"
        )
    report = PauseReport(
        requests=len(x),
        rebuilt=rebuilt,
        rebuilt_agree_with_f=agree_f,
        rebuilt_agree_with_label=agree_label,
        max_latency_ms=1000 * float(latencies.max()),
        pause_s=pause_s,
        pauses=pauses,
    )
    return report, lines


def grpc_and_http_agree(
    server: TritonServer, names: ModelNames, x: np.ndarray, input_name: str, output_name: str
) -> bool:
    """The same batch through both protocols gives the same coded answer."""
    http = _infer(httpclient.InferenceServerClient(server.http_address), httpclient, names.coded, x, input_name)
    grpc = _infer(grpcclient.InferenceServerClient(server.grpc_url), grpcclient, names.coded, x, input_name)
    return bool(np.array_equal(http.as_numpy(output_name), grpc.as_numpy(output_name)))


def describe_repository(repository: Path) -> str:
    return ", ".join(sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").exists()))

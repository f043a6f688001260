"""Real faults on real instance processes behind the coded endpoint: every request gets exactly one answer.

Pauses stay under a second (``faults.PAUSE_HEALTH_LIMIT_S``: Triton 2.51's Python backend declares a stub silent
for ~1 s unhealthy), so deadline paths run on repository variants with a short ``request_timeout_ms``.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.utils import InferenceServerException

from parm.export.data import load_digits_splits
from parm.export.repository import read_config
from parm.loadtest import faults

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
F, CODED, PARITY = "digits", "digits_coded", "digits_parity"


def variant(tmp_path: Path, coded_parameters: dict[str, str] | None = None, f_batching: bool = False) -> Path:
    """A copy of the committed repository with some settings changed."""
    repository = tmp_path / "repository"
    shutil.copytree(REPOSITORY, repository)
    if coded_parameters:
        path = repository / CODED / "config.pbtxt"
        config = read_config(path)
        for key, value in coded_parameters.items():
            config.parameters[key].string_value = value
        path.write_text(text_format.MessageToString(config))
    if f_batching:
        path = repository / F / "config.pbtxt"
        config = read_config(path)
        config.dynamic_batching.max_queue_delay_microseconds = 20_000
        path.write_text(text_format.MessageToString(config))
    return repository


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits_splits(seed=0).test.x


class Outcome:
    def __init__(self, latency: float, rebuilt: bool | None, logits: np.ndarray | None, error: str | None) -> None:
        self.latency, self.rebuilt, self.logits, self.error = latency, rebuilt, logits, error


def call(client, x: np.ndarray, model: str = CODED) -> Outcome:
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    start = time.perf_counter()
    try:
        result = client.infer(model, [tensor], client_timeout=30)
    except InferenceServerException as error:
        return Outcome(time.perf_counter() - start, None, None, str(error))
    flag = result.as_numpy("parm_reconstructed")
    return Outcome(
        time.perf_counter() - start, None if flag is None else bool(flag.any()), result.as_numpy("logits"), None
    )


def burst_during(fault_pids, server, digits, rows=range(24), pause_s=0.8, clients=4) -> list[Outcome]:
    """Pauses ``fault_pids`` for ``pause_s`` while ``clients`` threads send ``rows``; resumes whatever happens."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    pauses = [faults.pause(pid, max_seconds=pause_s) for pid in fault_pids]
    try:
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            return list(pool.map(lambda row: call(client, digits[row : row + 1]), rows))
    finally:
        for pause in pauses:
            pause.undo()


def assert_serves_normally_afterwards(server, digits):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    time.sleep(0.5)
    for row in range(200, 206):
        outcome = call(client, digits[row : row + 1])
        assert outcome.error is None and outcome.rebuilt is False
        direct = call(client, digits[row : row + 1], model=F)
        np.testing.assert_array_equal(outcome.logits, direct.logits)


def test_paused_parity_instance_costs_nothing(start_server, digits):
    server = start_server(REPOSITORY)
    parity = faults.find_instance_pids(server.pid, PARITY)
    outcomes = burst_during(parity.values(), server, digits)
    assert all(o.error is None and o.rebuilt is False for o in outcomes)
    assert_serves_normally_afterwards(server, digits)


def test_killed_f_instance_loses_no_request(start_server, digits):
    server = start_server(REPOSITORY)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    faults.kill(faults.find_instance_pids(server.pid, F)[f"{F}_0_0"])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda row: call(client, digits[row : row + 1]), range(40)))
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes if o.error]
    assert server.is_ready()


def test_killed_parity_instance_costs_at_most_one_deadline_then_nothing(start_server, digits):
    """A call to a dead instance takes Triton 2.51's Python backend about a second to fail and holds other calls
    meanwhile; the orchestrator then stops sending parities (with a doubling cooldown), so F answers alone."""
    server = start_server(REPOSITORY)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    faults.kill(next(iter(faults.find_instance_pids(server.pid, PARITY).values())))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = list(pool.map(lambda row: call(client, digits[row : row + 1]), range(40)))
        later = list(pool.map(lambda row: call(client, digits[row : row + 1]), range(40, 80)))
    for outcome in first:
        assert outcome.error is None or "request_timeout_ms=1000" in outcome.error, outcome.error
    assert all(o.error is None and o.rebuilt is False for o in later), [o.error for o in later if o.error]
    assert max(o.latency for o in later) < 0.5


def test_two_members_slow_at_once_get_a_clear_error_at_the_deadline_then_service_recovers(
    start_server, digits, tmp_path
):
    server = start_server(variant(tmp_path, {"request_timeout_ms": "300"}))
    both = faults.find_instance_pids(server.pid, F).values()
    outcomes = burst_during(both, server, digits, rows=range(8), clients=8)
    errors = [o for o in outcomes if o.error]
    assert errors, "with every F instance paused past the deadline, some request must time out"
    for outcome in errors:
        assert "request_timeout_ms=300" in outcome.error
        assert outcome.latency < 0.75, "the error comes at the deadline, not when the instances resume"
    assert all(o.error or o.logits is not None for o in outcomes)
    assert_serves_normally_afterwards(server, digits)


def test_members_in_flight_together_never_share_an_f_instance(start_server, digits, tmp_path):
    """The failure-domain property, measured: requests that waited for a paused instance to resume.

    Default config (no dynamic batcher on F): a paused instance holds one request, whose group partner runs on
    another instance, so the held request is rebuilt and nobody waits. With a dynamic batcher, one execution carries
    several requests (often both members of a group), and a pause then erases them together.
    """
    waited = {}
    for name, repository in (
        ("default", REPOSITORY),
        ("dynamic-batching", variant(tmp_path, f_batching=True)),
    ):
        server = start_server(repository)
        pid = faults.find_instance_pids(server.pid, F)[f"{F}_0_0"]
        outcomes = []
        for _ in range(3):
            outcomes += burst_during([pid], server, digits, rows=range(16), pause_s=0.6, clients=8)
            time.sleep(0.3)
        assert all(o.error is None for o in outcomes)
        waited[name] = sum(o.latency > 0.4 for o in outcomes)
        server.stop()
    assert waited["default"] == 0, waited
    assert waited["dynamic-batching"] > 0, waited


def test_past_capacity_requests_are_shed_with_a_clear_error_and_service_recovers(start_server, digits, tmp_path):
    """Driven past ``max_in_flight`` (every F instance paused, more clients than slots): the excess is refused at
    once with a clear error instead of queueing without bound, and the rest are answered once F resumes."""
    server = start_server(variant(tmp_path, {"max_in_flight": "3", "request_timeout_ms": "5000"}))
    both = faults.find_instance_pids(server.pid, F).values()
    outcomes = burst_during(both, server, digits, rows=range(12), pause_s=0.6, clients=12)
    shed = [o for o in outcomes if o.error and "overloaded" in o.error]
    assert shed, [o.error for o in outcomes]
    for outcome in shed:
        assert "max_in_flight=3" in outcome.error
        assert outcome.latency < 0.5, "shedding answers at once, not after the fault"
    assert all(o.error is None or "overloaded" in o.error for o in outcomes)
    assert any(o.error is None for o in outcomes)
    assert_serves_normally_afterwards(server, digits)

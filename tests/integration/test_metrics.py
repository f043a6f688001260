"""The coded endpoint's Prometheus metrics on Triton's metrics port move as traffic and faults say."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from parm.backend.orchestrator.metrics import FLUSH_PERIOD_S
from parm.export.data import load_digits_splits
from parm.loadtest import faults
from parm.loadtest.prometheus import Samples, metric_sum, scrape

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
CODED = "digits_coded"


def value(samples: Samples, name: str, **labels: str) -> float:
    return metric_sum(samples, name, model=CODED, **labels)


def _infer(client, x):
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(CODED, [tensor], client_timeout=30)


def wait_for(url: str, predicate, timeout: float = 5 * FLUSH_PERIOD_S):
    """Metrics are flushed every ``FLUSH_PERIOD_S``: poll until the expected numbers show up."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_metrics_count_requests_answers_groups_and_rebuilds(start_server):
    server = start_server(REPOSITORY)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    digits = load_digits_splits(seed=0).test.x
    before = scrape(server.metrics_url)
    assert value(before, "parm_in_flight_requests") == 0

    for row in range(10):
        _infer(client, digits[row : row + 1])
    after = wait_for(server.metrics_url, lambda s: value(s, "parm_requests_total") >= 10)
    assert value(after, "parm_requests_total") == 10
    assert value(after, "parm_answers_total", source="original") == 10
    assert value(after, "parm_answers_total", source="rebuilt") == 0

    pid = faults.find_instance_pids(server.pid, "digits")["digits_0_0"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pause = faults.pause(pid, max_seconds=0.8)
        try:
            results = list(pool.map(lambda row: _infer(client, digits[row : row + 1]), range(20, 40)))
        finally:
            pause.undo()
    rebuilt = sum(bool(r.as_numpy("parm_reconstructed").any()) for r in results)
    assert rebuilt >= 1
    final = wait_for(
        server.metrics_url,
        lambda s: value(s, "parm_requests_total") >= 30 and value(s, "parm_fidelity_comparisons_total") >= rebuilt,
    )
    assert value(final, "parm_requests_total") == 30
    assert value(final, "parm_answers_total", source="rebuilt") == rebuilt
    assert value(final, "parm_answers_total", source="original") == 30 - rebuilt
    assert value(final, "parm_fidelity_comparisons_total") == rebuilt, "late originals are compared with rebuilds"
    assert 0 <= value(final, "parm_fidelity_argmax_agreements_total") <= rebuilt
    groups_with_parity = value(final, "parm_groups_total", fill="full") + value(
        final, "parm_groups_total", fill="filled"
    )
    assert groups_with_parity >= rebuilt
    assert value(final, "parm_decode_seconds_count") >= rebuilt
    assert rebuilt <= value(final, "parm_encode_seconds_count") <= groups_with_parity
    for phase in ("wait", "parity", "complete"):  # each rebuilt answer's time, phase by phase
        assert value(final, "parm_rebuild_phase_seconds_count", phase=phase) == rebuilt, phase
        assert value(final, "parm_rebuild_phase_seconds_sum", phase=phase) >= 0, phase
    assert value(final, "parm_in_flight_requests") == 0
    assert np.isfinite(value(final, "parm_fidelity_relative_error_sum"))

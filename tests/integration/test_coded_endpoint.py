"""The committed model repository on the real embedded Triton server: the coded endpoint as clients see it."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from parm.backend.orchestrator.contract import RECONSTRUCTED_OUTPUT
from parm.export.data import load_digits_splits
from parm.loadtest import faults

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
F, CODED = "digits", "digits_coded"


@pytest.fixture(scope="module")
def server(start_session_server):
    return start_session_server(REPOSITORY)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits_splits(seed=0).test.x


def _http_infer(client, model: str, x: np.ndarray, outputs=None):
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    requested = [httpclient.InferRequestedOutput(name) for name in outputs] if outputs else None
    return client.infer(model, [tensor], outputs=requested)


def _grpc_infer(client, model: str, x: np.ndarray, timeout_s: float | None = None):
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor], client_timeout=timeout_s)


def test_coded_metadata_is_f_metadata_plus_the_flag(server):
    for client in (
        httpclient.InferenceServerClient(server.http_address),
        grpcclient.InferenceServerClient(server.grpc_url),
    ):
        as_json = isinstance(client, httpclient.InferenceServerClient)
        f_meta = client.get_model_metadata(F) if as_json else client.get_model_metadata(F, as_json=True)
        coded_meta = client.get_model_metadata(CODED) if as_json else client.get_model_metadata(CODED, as_json=True)
        assert coded_meta["inputs"] == f_meta["inputs"]
        assert coded_meta["outputs"][: len(f_meta["outputs"])] == f_meta["outputs"]
        extra = coded_meta["outputs"][len(f_meta["outputs"]) :]
        assert [(o["name"], o["datatype"], [int(d) for d in o["shape"]]) for o in extra] == [
            (RECONSTRUCTED_OUTPUT, "BOOL", [-1, 1])
        ]
    http = httpclient.InferenceServerClient(server.http_address)
    assert http.get_model_config(CODED)["max_batch_size"] == http.get_model_config(F)["max_batch_size"]


def _assert_f_answers_unless_flagged(pairs) -> None:
    """Nothing is slow: every answer is F's own, bit for bit. The one exception the policy allows is a request whose
    F happened to take longer than its usual 90th percentile while the rebuild won: such an answer is flagged, and
    on a quiet server it is rare."""
    flagged = 0
    for coded, direct in pairs:
        flags = coded.as_numpy(RECONSTRUCTED_OUTPUT)
        assert flags.shape == (direct.as_numpy("logits").shape[0], 1)
        if flags.any():
            flagged += 1
            continue
        np.testing.assert_array_equal(coded.as_numpy("logits"), direct.as_numpy("logits"))
    assert flagged <= max(1, len(pairs) // 10), f"{flagged} of {len(pairs)} answers rebuilt with nothing slow"


def test_answers_equal_f_when_nothing_is_slow_over_http(server, digits):
    client = httpclient.InferenceServerClient(server.http_address)
    pairs = []
    for batch in (1, 3, 8):
        for start in range(0, 24, batch):
            x = digits[start : start + batch]
            pairs.append((_http_infer(client, CODED, x), _http_infer(client, F, x)))
    _assert_f_answers_unless_flagged(pairs)


def test_answers_equal_f_when_nothing_is_slow_over_grpc(server, digits):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    pairs = []
    for start in range(0, 20, 2):
        x = digits[start : start + 2]
        pairs.append((_grpc_infer(client, CODED, x), _grpc_infer(client, F, x)))
    _assert_f_answers_unless_flagged(pairs)


def test_a_client_may_ask_for_f_outputs_only(server, digits):
    client = httpclient.InferenceServerClient(server.http_address)
    result = _http_infer(client, CODED, digits[:2], outputs=["logits"])
    assert result.as_numpy("logits").shape == (2, 10)
    assert result.as_numpy(RECONSTRUCTED_OUTPUT) is None


def test_concurrent_clients_are_each_answered_once_with_f_or_flagged_answers(server, digits):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    queries = [digits[i : i + 1] for i in range(60)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda x: _grpc_infer(client, CODED, x, timeout_s=10), queries))
    direct = [_grpc_infer(client, F, x).as_numpy("logits") for x in queries]
    for result, truth in zip(results, direct, strict=True):
        if not result.as_numpy(RECONSTRUCTED_OUTPUT).any():
            np.testing.assert_array_equal(result.as_numpy("logits"), truth)


def test_a_paused_f_instance_is_rebuilt_around_before_it_resumes(server, digits):
    """One F instance SIGSTOPped: every request is answered, and none waits for the instance to resume.

    Pauses stay under a second: Triton 2.51's Python backend declares a stub silent for ~1 s unhealthy
    (``faults.PAUSE_HEALTH_LIMIT_S``). The paused instance holds the one request it took; that request must come
    back rebuilt (flagged) while the instance is still stopped.
    """
    client = grpcclient.InferenceServerClient(server.grpc_url)
    pid = faults.find_instance_pids(server.pid, F)[f"{F}_0_0"]
    queries = [digits[i : i + 1] for i in range(100, 124)]
    answered_at: dict[int, float] = {}

    def call(row: int):
        result = _grpc_infer(client, CODED, queries[row], timeout_s=30)
        answered_at[row] = time.monotonic()
        return result

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pause = faults.pause(pid, max_seconds=0.8)
        try:
            futures = [pool.submit(call, row) for row in range(len(queries))]
            results = [future.result(timeout=30) for future in futures]
            answered_before_resume = pause.active
        finally:
            pause.undo()
    assert answered_before_resume, "every request was answered while the F instance was still paused"
    flags = [bool(r.as_numpy(RECONSTRUCTED_OUTPUT).all()) for r in results]
    assert any(flags), "the paused instance held a request: it must have been rebuilt and flagged"
    direct = np.concatenate([_grpc_infer(client, F, x).as_numpy("logits") for x in queries])
    coded = np.concatenate([r.as_numpy("logits") for r in results])
    for row, flag in enumerate(flags):
        if not flag:
            np.testing.assert_array_equal(coded[row], direct[row])
    assert np.isfinite(coded).all()
    time.sleep(0.3)
    after = _grpc_infer(client, CODED, digits[:1], timeout_s=10)
    assert not after.as_numpy(RECONSTRUCTED_OUTPUT).any()


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda: ("input", np.zeros((1, 1, 8, 7), np.float32), "FP32"), "shape"),
        (lambda: ("input", np.zeros((1, 1, 8, 8), np.float64), "FP64"), "FP64"),
        (lambda: ("input", np.zeros((33, 1, 8, 8), np.float32), "FP32"), "batch"),
        (lambda: ("wrong_name", np.zeros((1, 1, 8, 8), np.float32), "FP32"), "wrong_name"),
    ],
    ids=["shape", "datatype", "batch-over-max", "unknown-input"],
)
def test_bad_input_gets_a_clear_error_and_spares_its_neighbours(server, digits, make_input, message):
    http = httpclient.InferenceServerClient(server.http_address)
    name, array, datatype = make_input()
    bad = httpclient.InferInput(name, list(array.shape), datatype)
    bad.set_data_from_numpy(array)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        good = [pool.submit(_grpc_infer, grpc, CODED, digits[i : i + 1], 10) for i in range(6)]
        with pytest.raises(InferenceServerException) as error:
            http.infer(CODED, [bad])
        for future in good:
            assert future.result().as_numpy("logits").shape == (1, 10)
    assert message.lower() in str(error.value).lower()
    assert http.is_server_live() and http.is_model_ready(CODED)


def test_missing_input_gets_a_clear_error(server):
    http = httpclient.InferenceServerClient(server.http_address)
    with pytest.raises(InferenceServerException) as error:
        http.infer(CODED, [])
    assert "input" in str(error.value).lower()

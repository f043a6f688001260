"""Fuzzing the coded endpoint on the real server: any request gets a clear error or a correct answer, never a hang,
a crash, or a wrong answer for a well-behaved client sending at the same time."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from parm.export.data import load_digits_splits

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
F, CODED, MAX_BATCH = "digits", "digits_coded", 32
OUTPUTS = ("logits", "parm_reconstructed")

DTYPES = [np.float32, np.float64, np.float16, np.int32, np.uint8, np.bool_, np.object_]
SHAPES = [(1, 8, 8), (8, 8), (1, 8, 7), (1, 8, 8, 1), (64,), ()]
VALUES = ["digits", "zeros", "nan", "inf", "huge"]


VALID = {"name": "input", "dtype": np.float32, "batch": 1, "shape": (1, 8, 8), "outputs": None}
MUTATIONS = {
    "name": st.sampled_from(["x", None]),  # unknown input, missing input
    "dtype": st.sampled_from(DTYPES[1:]),
    "batch": st.sampled_from([0, MAX_BATCH + 1, 200]),
    "shape": st.sampled_from(SHAPES[1:]),
    "outputs": st.sampled_from([("logits", "nope"), ("nope",)]),
}


@st.composite
def requests(draw):
    """A valid request, then (more often than not) one or two of its parts broken."""
    spec = dict(VALID)
    spec["protocol"] = draw(st.sampled_from(["http", "grpc"]))
    spec["values"] = draw(st.sampled_from(VALUES))
    spec["batch"] = draw(st.sampled_from([1, 2, 5, MAX_BATCH]))
    spec["outputs"] = draw(st.sampled_from([None, ("logits",), ("parm_reconstructed",), OUTPUTS]))
    for key in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=2, unique=True)):
        spec[key] = draw(MUTATIONS[key])
    return spec


def _array(spec, digits: np.ndarray) -> np.ndarray:
    shape = (spec["batch"], *spec["shape"])
    size = int(np.prod(shape))
    if spec["values"] == "digits" and spec["shape"] == (1, 8, 8):
        base = np.resize(digits, shape)
    else:
        base = np.resize(digits.reshape(-1), size).reshape(shape) if size else np.zeros(shape)
    if spec["values"] == "zeros":
        base = np.zeros(shape)
    elif spec["values"] in ("nan", "inf", "huge") and size:
        base = base.copy()
        base.reshape(-1)[0] = {"nan": np.nan, "inf": np.inf, "huge": 1e30}[spec["values"]]
    if spec["dtype"] is np.object_:
        return np.array([str(v).encode() for v in base.reshape(-1)], dtype=np.object_).reshape(shape)
    with np.errstate(invalid="ignore", over="ignore"):
        return base.astype(spec["dtype"])


def _valid(spec) -> bool:
    return (
        spec["name"] == "input"
        and spec["dtype"] is np.float32
        and spec["shape"] == (1, 8, 8)
        and 1 <= spec["batch"] <= MAX_BATCH
        and (spec["outputs"] is None or set(spec["outputs"]) <= set(OUTPUTS))
    )


def _send(server, spec, array):
    module = httpclient if spec["protocol"] == "http" else grpcclient
    inputs = []
    if spec["name"] is not None:
        tensor = module.InferInput(spec["name"], list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [module.InferRequestedOutput(name) for name in spec["outputs"]] if spec["outputs"] else None
    if module is httpclient:
        client = httpclient.InferenceServerClient(server.http_address, network_timeout=20)
        try:
            return client.infer(CODED, inputs, outputs=outputs)
        finally:
            client.close()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    return client.infer(CODED, inputs, outputs=outputs, client_timeout=20)


class Neighbour(threading.Thread):
    """A well-behaved client sending valid queries all along; each answer must equal F's own."""

    def __init__(self, server, digits: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.digits = digits
        self.stop = threading.Event()
        self.answers = 0
        self.failures: list[str] = []

    def run(self) -> None:
        row = 0
        while not self.stop.is_set():
            x = self.digits[row % len(self.digits) : row % len(self.digits) + 1]
            row += 1
            tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            try:
                coded = self.client.infer(CODED, [tensor], client_timeout=20)
                direct = self.client.infer(F, [tensor], client_timeout=20)
            except InferenceServerException as error:
                self.failures.append(str(error))
                continue
            if not coded.as_numpy("parm_reconstructed").any() and not np.array_equal(
                coded.as_numpy("logits"), direct.as_numpy("logits")
            ):
                self.failures.append(f"row {row}: wrong answer")
            self.answers += 1


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits_splits(seed=0).test.x


@pytest.fixture(scope="module")
def server(start_session_server):
    return start_session_server(REPOSITORY)


def test_fuzzed_requests_get_a_clear_error_or_a_correct_answer(server, digits):
    neighbour = Neighbour(server, digits)
    neighbour.start()
    try:
        _fuzz(server, digits)
    finally:
        neighbour.stop.set()
        neighbour.join(timeout=30)
    assert neighbour.answers > 0
    assert not neighbour.failures, neighbour.failures[:5]
    assert httpclient.InferenceServerClient(server.http_address).is_model_ready(CODED)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(spec=requests())
def _fuzz(server, digits, spec):
    array = _array(spec, digits)
    try:
        result = _send(server, spec, array)
    except InferenceServerException as error:
        assert not _valid(spec), f"valid request refused: {spec} -> {error}"
        assert str(error).strip(), "an error must say what went wrong"
        return
    assert _valid(spec), f"invalid request answered: {spec}"
    wanted = spec["outputs"] or OUTPUTS
    if "logits" in wanted:
        logits = result.as_numpy("logits")
        assert logits.shape == (spec["batch"], 10)
        direct = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput("input", list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        expected = direct.infer(F, [tensor]).as_numpy("logits")
        flags = result.as_numpy("parm_reconstructed")
        if flags is None or not flags.any():
            np.testing.assert_array_equal(logits, expected)
    if "parm_reconstructed" in wanted:
        assert result.as_numpy("parm_reconstructed").shape == (spec["batch"], 1)

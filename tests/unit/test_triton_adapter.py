"""The Triton adapter (``python_backend/triton_model.py``) against a small fake of ``triton_python_backend_utils``:
requests in, one response per request out (through the response sender), bad requests refused alone, BLS errors
turned into rebuilds or clear errors, a failing metrics flush logged and survived, and finalize answering what is
still in flight. The real-server tests (tests/integration) cover the same adapter inside Triton."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

import parm.backend.orchestrator as core
from parm.backend.orchestrator.contract import RECONSTRUCTED_OUTPUT

ADAPTER = Path(core.__file__).resolve().parents[1] / "triton_model.py"
WEIGHTS = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class FakeError:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


class FakeResponse:
    def __init__(self, output_tensors=(), error=None, parameters=None) -> None:
        if parameters is not None:
            raise TypeError("Triton 2.51 refuses response parameters")
        self.output_tensors, self.error_ = list(output_tensors), error

    def has_error(self) -> bool:
        return self.error_ is not None

    def error(self) -> FakeError:
        return self.error_


class FakeServer:
    """The models a BLS call reaches: F (linear), its parity model (the same linear map: exact for the sum code)."""

    def __init__(self) -> None:
        self.fail_f: set[float] = set()
        self.hold_f: dict[float, threading.Event] = {}

    def exec(self, model: str, inputs: list[FakeTensor]) -> FakeResponse:
        x = inputs[0].as_numpy()
        marker = round(float(x.reshape(-1)[0]), 6)
        if model == "f":
            if marker in self.hold_f:
                self.hold_f[marker].wait(5)
            if marker in self.fail_f:
                return FakeResponse(error=FakeError("Stub process 'f_0_0' is not healthy"))
        return FakeResponse([FakeTensor("y", x.reshape(len(x), -1) @ WEIGHTS)])


class FakeSender:
    def __init__(self) -> None:
        self.responses: list[tuple[FakeResponse, int]] = []
        self.done = threading.Event()

    def send(self, response: FakeResponse, flags: int = 0) -> None:
        self.responses.append((response, flags))
        self.done.set()


class FakeRequest:
    def __init__(self, inputs: dict[str, np.ndarray]) -> None:
        self._inputs = [FakeTensor(n, a) for n, a in inputs.items()]
        self.sender = FakeSender()

    def inputs(self) -> list[FakeTensor]:
        return self._inputs

    def get_response_sender(self) -> FakeSender:
        return self.sender


class FakeMetric:
    def __init__(self, family: FakeFamily, labels: dict) -> None:
        self.family, self.labels = family, labels

    def increment(self, value: float) -> None:
        if self.family.module.metrics_fail:
            raise RuntimeError("metrics server gone")
        self.family.module.metric_calls.append(("increment", self.family.name, value))

    def set(self, value: float) -> None:
        if self.family.module.metrics_fail:
            raise RuntimeError("metrics server gone")
        self.family.module.metric_calls.append(("set", self.family.name, value))

    def observe(self, value: float) -> None:
        self.family.module.metric_calls.append(("observe", self.family.name, value))


class FakeFamily:
    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
    module: types.ModuleType

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name = name

    def Metric(self, labels: dict, buckets=None) -> FakeMetric:
        return FakeMetric(self, labels)


def fake_pb_utils(server: FakeServer) -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    module.logs = []
    module.metric_calls = []
    module.metrics_fail = False
    module.Tensor = FakeTensor
    module.TritonError = FakeError
    module.InferenceResponse = FakeResponse

    class InferenceRequest:
        def __init__(self, model_name, inputs, requested_output_names) -> None:
            self.model, self.inputs = model_name, inputs

        def exec(self) -> FakeResponse:
            return server.exec(self.model, self.inputs)

    module.InferenceRequest = InferenceRequest
    module.get_output_tensor_by_name = lambda response, name: next(
        (t for t in response.output_tensors if t.name() == name), None
    )
    module.Logger = types.SimpleNamespace(
        log_error=lambda m: module.logs.append(("error", m)),
        log_warn=lambda m: module.logs.append(("warn", m)),
        log_info=lambda m: module.logs.append(("info", m)),
    )
    family = type("MetricFamily", (FakeFamily,), {"module": module})
    module.MetricFamily = family
    return module


def _model_config() -> dict:
    def param(value: str) -> dict:
        return {"string_value": value}

    return {
        "max_batch_size": 4,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [
            {"name": "y", "data_type": "TYPE_FP32", "dims": [3]},
            {"name": RECONSTRUCTED_OUTPUT, "data_type": "TYPE_BOOL", "dims": [1]},
        ],
        "parameters": {
            "f_models": param("f"),
            "parity_models": param("f_parity"),
            "code_weights": param("1,1"),
            "request_timeout_ms": param("500"),
            "decode_after_quantile": param("0"),
            "fill_timeout_quantile": param("0"),
        },
    }


@pytest.fixture
def adapter(monkeypatch: pytest.MonkeyPatch):
    server = FakeServer()
    pb_utils = fake_pb_utils(server)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    monkeypatch.setitem(sys.modules, "parm_orchestrator", core)
    for name, module in list(sys.modules.items()):
        if name.startswith("parm.backend.orchestrator."):
            monkeypatch.setitem(sys.modules, "parm_orchestrator." + name.rsplit(".", 1)[1], module)
    spec = importlib.util.spec_from_file_location("parm_adapter_under_test", ADAPTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize(
        {"model_name": "f_coded", "model_version": "1", "model_instance_name": "f_coded_0_0",
         "model_config": json.dumps(_model_config())}
    )  # fmt: skip
    yield model, server, pb_utils
    model.finalize()


def _request(marker: float, batch: int = 1) -> FakeRequest:
    x = np.random.default_rng(int(marker * 1000)).normal(size=(batch, 4)).astype(np.float32)
    x[0, 0] = marker
    return FakeRequest({"x": x})


def _wait(requests: list[FakeRequest], timeout: float = 3.0) -> None:
    for request in requests:
        assert request.sender.done.wait(timeout), "no response"
    time.sleep(0.05)  # a second response would show up by now
    for request in requests:
        assert len(request.sender.responses) == 1, request.sender.responses
        assert request.sender.responses[0][1] == 1, "sent with the FINAL flag"


def _outputs(request: FakeRequest) -> tuple[np.ndarray, bool]:
    response = request.sender.responses[0][0]
    assert not response.has_error(), response.error().message()
    tensors = {t.name(): t.as_numpy() for t in response.output_tensors}
    return tensors["y"], bool(tensors[RECONSTRUCTED_OUTPUT].all())


def test_requests_get_f_answers_and_a_bad_request_is_refused_alone(adapter) -> None:
    model, _, _ = adapter
    good = [_request(0.1), _request(0.2, batch=2)]
    bad = FakeRequest({"x": np.zeros((1, 5), dtype=np.float32)})
    assert model.execute([good[0], bad, good[1]]) is None
    _wait([*good, bad])
    for request in good:
        y, rebuilt = _outputs(request)
        np.testing.assert_allclose(y, request.inputs()[0].as_numpy() @ WEIGHTS, rtol=1e-5)
        assert not rebuilt
    assert bad.sender.responses[0][0].has_error()
    assert "f_coded" in bad.sender.responses[0][0].error().message()


def test_a_failed_f_call_is_rebuilt_and_flagged(adapter) -> None:
    model, server, _ = adapter
    server.fail_f.add(0.3)
    requests = [_request(0.3), _request(0.4)]
    model.execute(requests)
    _wait(requests)
    y, rebuilt = _outputs(requests[0])
    assert rebuilt
    np.testing.assert_allclose(y, requests[0].inputs()[0].as_numpy() @ WEIGHTS, rtol=1e-4, atol=1e-5)


def test_a_failing_metrics_flush_is_logged_and_serving_goes_on(adapter) -> None:
    model, _, pb_utils = adapter
    pb_utils.metrics_fail = True
    requests = [_request(0.5), _request(0.6)]
    model.execute(requests)
    _wait(requests)
    model._flush_metrics()
    assert any("exporting metrics failed" in message for level, message in pb_utils.logs if level == "warn")
    later = [_request(0.7), _request(0.8)]
    model.execute(later)
    _wait(later)


def test_finalize_answers_what_is_still_in_flight(adapter) -> None:
    model, server, _ = adapter
    server.hold_f[0.9] = threading.Event()
    server.hold_f[0.95] = server.hold_f[0.9]
    requests = [_request(0.9), _request(0.95)]
    model.execute(requests)
    time.sleep(0.05)
    model.finalize()
    server.hold_f[0.9].set()
    _wait(requests)
    for request in requests:
        assert "shutting down" in request.sender.responses[0][0].error().message()

"""The embedded server and the Python-based onnxruntime backend, end to end on a tiny Linear model."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from parm.errors import ServerError
from parm.server import TritonServer, free_ports

from .conftest import LIN_CONFIG, LINEAR_IN, LINEAR_OUT, onnxruntime_reference, write_model

pytestmark = pytest.mark.integration

STUB = "triton_python_backend_stub"


def http_infer(server: TritonServer, model: str, x: np.ndarray, datatype: str = "FP32") -> np.ndarray:
    tensor = httpclient.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    with httpclient.InferenceServerClient(server.http_address) as client:  # closed: the server waits for open ones
        return client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput("y")]).as_numpy("y")


def grpc_infer(server: TritonServer, model: str, x: np.ndarray) -> np.ndarray:
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        return client.infer(model, [tensor], client_timeout=10.0).as_numpy("y")


def stub_processes(server_pid: int) -> list[psutil.Process]:
    """Processes that are children of ``server_pid`` or stubs started for it (the stub's command line carries it)."""
    found = []
    for process in psutil.process_iter(["ppid", "cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        is_stub = bool(cmdline) and os.path.basename(cmdline[0]) == STUB and str(server_pid) in cmdline
        if (process.info["ppid"] == server_pid or is_stub) and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_free_ports_are_distinct() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(1024 <= p < 65536 for p in ports)


def test_server_is_ready_and_reports_onnxruntime(linear_server: TritonServer) -> None:
    assert linear_server.is_ready()
    assert linear_server.ready_models() == ["lin", "lin_var"]
    assert len(stub_processes(linear_server.pid)) == 3  # lin: 2 instances, lin_var: 1
    with httpclient.InferenceServerClient(linear_server.http_address) as client:
        assert client.get_model_metadata("lin")["platform"] == "onnxruntime_onnx"
    with grpcclient.InferenceServerClient(linear_server.grpc_url) as client:
        assert client.get_model_metadata("lin").platform == "onnxruntime_onnx"


def test_metrics_endpoint_answers(linear_server: TritonServer) -> None:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(linear_server.metrics_url, timeout=5) as response:
        assert b"nv_inference_request_success" in response.read()


@pytest.mark.parametrize("infer", [http_infer, grpc_infer], ids=["http", "grpc"])
def test_inference_equals_onnxruntime(
    linear_server: TritonServer, linear_repository: Path, infer: Callable[..., np.ndarray]
) -> None:
    x = np.random.default_rng(1).standard_normal((3, LINEAR_IN)).astype(np.float32)
    expected = onnxruntime_reference(linear_repository / "lin" / "1" / "model.onnx", x)
    got = infer(linear_server, "lin", x)
    assert got.shape == (3, LINEAR_OUT)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("x", "datatype", "message"),
    [
        (np.zeros((1, LINEAR_IN + 1), np.float32), "FP32", "unexpected shape for input 'x' for model 'lin'"),
        (np.zeros((1, LINEAR_IN), np.float64), "FP64", "input 'x' data-type is 'FP64'"),
    ],
    ids=["shape", "dtype"],
)
def test_request_refused_by_triton_then_serving_goes_on(
    linear_server: TritonServer, x: np.ndarray, datatype: str, message: str
) -> None:
    with pytest.raises(InferenceServerException, match=message):
        http_infer(linear_server, "lin", x, datatype)
    ok = np.ones((1, LINEAR_IN), np.float32)
    assert http_infer(linear_server, "lin", ok).shape == (1, LINEAR_OUT)


def test_bad_request_fails_alone_in_the_backend(linear_server: TritonServer) -> None:
    """lin_var's config accepts any width; the ONNX graph wants 4: the backend answers that request with an error
    naming the model, while good requests sent at the same time (dynamic batching) are answered."""
    bad = np.ones((1, LINEAR_IN + 1), np.float32)
    good = np.ones((1, LINEAR_IN), np.float32)
    with pytest.raises(InferenceServerException, match=r"model 'lin_var'.*INVALID_ARGUMENT"):
        http_infer(linear_server, "lin_var", bad)
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(http_infer, linear_server, "lin_var", bad if i % 3 == 0 else good) for i in range(6)]
        for i, future in enumerate(futures):
            if i % 3 == 0:
                assert isinstance(future.exception(), InferenceServerException)
            else:
                assert future.result().shape == (1, LINEAR_OUT)
    np.testing.assert_allclose(http_infer(linear_server, "lin_var", good), http_infer(linear_server, "lin", good))


def test_stop_leaves_no_stub_even_when_one_is_paused(
    start_server: Callable[..., TritonServer], linear_repository: Path
) -> None:
    server = start_server(linear_repository)
    stubs = stub_processes(server.pid)
    assert len(stubs) == 3
    os.kill(stubs[0].pid, signal.SIGSTOP)
    deadline = time.monotonic() + 2
    while stubs[0].status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stubs[0].status() == psutil.STATUS_STOPPED
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < server.stop_timeout
    assert server.returncode == 0  # a clean shutdown: the paused stub was resumed and finalized, not killed
    assert not server.is_alive()
    assert not alive(psutil.Process(server.pid)) if psutil.pid_exists(server.pid) else True
    assert [p.pid for p in stubs if alive(p)] == []
    assert stub_processes(server.pid) == []
    server.stop()  # safe twice


def test_context_manager_stops(linear_repository: Path, tmp_path: Path) -> None:
    with TritonServer(linear_repository, log_dir=tmp_path) as server:
        pid = server.pid
        assert server.is_ready()
        assert (tmp_path / "tritonserver.log").is_file()
    assert not server.is_alive()
    assert server.returncode == 0
    assert stub_processes(pid) == []


def test_broken_config_raises_with_log_tail(start_server: Callable[..., TritonServer], tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "broken", "name: 'broken' this is not protobuf text {")
    with pytest.raises(ServerError, match=r"(?s)exited with code .*last lines of .*broken"):
        start_server(tmp_path / "repo")


def test_config_disagreeing_with_onnx_raises_naming_the_tensor(
    start_server: Callable[..., TritonServer], linear_repository: Path, tmp_path: Path
) -> None:
    onnx_file = linear_repository / "lin" / "1" / "model.onnx"
    wrong = LIN_CONFIG.replace('name: "lin"', 'name: "wrong"').replace(f"dims: [{LINEAR_OUT}]", "dims: [5]")
    write_model(tmp_path / "repo", "wrong", wrong, onnx_file=onnx_file)
    with pytest.raises(ServerError, match=r"model 'wrong', output 'y': dim 1 is 5 in the config and 3"):
        start_server(tmp_path / "repo")


def test_missing_repository_is_a_config_error(tmp_path: Path) -> None:
    from parm.errors import ConfigError

    with pytest.raises(ConfigError, match="not a directory"):
        TritonServer(tmp_path / "nowhere")


def test_serve_forever_until_sigint(linear_repository: Path, tmp_path: Path) -> None:
    http, grpc, metrics = free_ports(3)
    code = (
        "import sys; from parm.server import serve_forever; "
        f"sys.exit(serve_forever({str(linear_repository)!r}, {http}, {grpc}, {metrics}, host='127.0.0.1', "
        f"log_dir={str(tmp_path)!r}))"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{http}" in text and f"127.0.0.1:{grpc}" in text and f":{metrics}/metrics" in text
        assert "models   lin, lin_var" in text
        server_pid = int(re.search(r"\(pid (\d+)\)", text).group(1))  # type: ignore[union-attr]
        assert len(stub_processes(server_pid)) == 3
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert stub_processes(server_pid) == []

"""Integration fixtures: real Triton servers on free ports, stopped (with every stub process) by PID afterwards.

- ``start_server(repo, **kwargs)``: a server for one test; ``start_session_server``: one shared by the session
  (pass the same repository and get the same running server back).
- ``linear_repository``: a tiny self-contained repository built here (torch.nn.Linear exported to ONNX):
  ``lin`` (2 instances, max_batch_size 8) and ``lin_var`` (a config whose width is -1, so a wrong width reaches the
  backend and fails there, per request).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from parm.loadtest.benchrepo import BenchModelSpec, ensure_bench_repository
from parm.loadtest.soak import orchestrator_crashes
from parm.server import TritonServer

LINEAR_IN = 4
LINEAR_OUT = 3

LIN_CONFIG = f"""
name: "lin"
backend: "onnxruntime"
max_batch_size: 8
input [{{ name: "x", data_type: TYPE_FP32, dims: [{LINEAR_IN}] }}]
output [{{ name: "y", data_type: TYPE_FP32, dims: [{LINEAR_OUT}] }}]
instance_group [{{ kind: KIND_AUTO, count: 2 }}]
"""

LIN_VAR_CONFIG = f"""
name: "lin_var"
backend: "onnxruntime"
max_batch_size: 8
input [{{ name: "x", data_type: TYPE_FP32, dims: [-1] }}]
output [{{ name: "y", data_type: TYPE_FP32, dims: [{LINEAR_OUT}] }}]
instance_group [{{ kind: KIND_CPU, count: 1 }}]
dynamic_batching {{ max_queue_delay_microseconds: 20000 }}
"""


def export_linear(path: Path) -> Path:
    """Exports a seeded torch.nn.Linear(4, 3) to a self-contained ONNX file with a dynamic batch dim."""
    import torch

    torch.manual_seed(0)
    module = torch.nn.Linear(LINEAR_IN, LINEAR_OUT).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (torch.zeros(2, LINEAR_IN),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            dynamo=False,
        )
    return path


def write_model(repository: Path, name: str, config: str, onnx_file: Path | None = None) -> Path:
    """Writes ``<repository>/<name>/config.pbtxt`` and ``1/model.onnx`` (a copy of ``onnx_file``, or a fresh export)."""
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config)
    target = model_dir / "1" / "model.onnx"
    if onnx_file is None:
        export_linear(target)
    else:
        target.write_bytes(onnx_file.read_bytes())
    return model_dir


def onnxruntime_reference(onnx_file: Path, x: np.ndarray) -> np.ndarray:
    """The model's output computed by onnxruntime directly, without the server."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


class ServerPool:
    """Starts servers with logs under pytest's tmp dirs and stops them all (by PID, with their stubs) at teardown."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, reuse: bool) -> None:
        self._tmp = tmp_path_factory
        self._reuse = reuse
        self._servers: dict[Path, TritonServer] = {}
        self._all: list[TritonServer] = []

    def start(self, repository: str | Path, **kwargs: Any) -> TritonServer:
        repository = Path(repository).absolute()
        if self._reuse and repository in self._servers and self._servers[repository].is_alive():
            return self._servers[repository]
        kwargs.setdefault("log_dir", self._tmp.mktemp("triton-log"))
        server = TritonServer(repository, **kwargs)
        self._all.append(server)
        server.start()
        self._servers[repository] = server
        return server

    def stop_all(self) -> None:
        """Stops every server, then fails the test if an orchestrator logged a crash: a callback that raised on its
        event loop or a crashed task is only logged there, and the requests around it may still have been answered."""
        for server in reversed(self._all):
            server.stop()
        crashes = [f"{s.log_path}: {line}" for s in self._all for line in orchestrator_crashes(s.log_path)]
        assert not crashes, "orchestrator crashes in the server log:\n" + "\n".join(crashes)


@pytest.fixture
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., TritonServer]]:
    """``start_server(repo, **TritonServer kwargs)`` -> a ready server, stopped when the test ends."""
    pool = ServerPool(tmp_path_factory, reuse=False)
    yield pool.start
    pool.stop_all()


@pytest.fixture(scope="session")
def start_session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., TritonServer]]:
    """Like ``start_server``, but servers live for the whole session and one repository gets one server."""
    pool = ServerPool(tmp_path_factory, reuse=True)
    yield pool.start
    pool.stop_all()


@pytest.fixture(scope="session")
def linear_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("linear-repo")
    lin = write_model(repository, "lin", LIN_CONFIG)
    write_model(repository, "lin_var", LIN_VAR_CONFIG, onnx_file=lin / "1" / "model.onnx")
    return repository


@pytest.fixture(scope="session")
def linear_server(start_session_server: Callable[..., TritonServer], linear_repository: Path) -> TritonServer:
    return start_session_server(linear_repository)


BENCH_SPEC = BenchModelSpec(width=8, blocks=1, upsample=1, quick=True)
"""A tiny benchmark F (a few training steps): the smoke runs of ``parm bench`` and ``parm soak`` test machinery."""


@pytest.fixture(scope="session")
def bench_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The benchmark repository for ``BENCH_SPEC``, built once per session."""
    root = tmp_path_factory.mktemp("bench-models")
    ensure_bench_repository(root, BENCH_SPEC)
    return root

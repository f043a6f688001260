"""Fault injection on real instance processes of a running server (and on a throwaway process)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from parm.errors import FaultError, ServerError
from parm.loadtest import faults
from parm.server import TritonServer, instance_processes

from .conftest import LINEAR_IN, LINEAR_OUT

pytestmark = pytest.mark.integration


def try_infer(server: TritonServer, timeout_s: float) -> bool:
    """One gRPC request with a client deadline: True if answered in time."""
    tensor = grpcclient.InferInput("x", [1, LINEAR_IN], "FP32")
    tensor.set_data_from_numpy(np.ones((1, LINEAR_IN), np.float32))
    try:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            result = client.infer("lin", [tensor], client_timeout=timeout_s)
    except InferenceServerException:
        return False
    assert result.as_numpy("y").shape == (1, LINEAR_OUT)
    return True


@pytest.fixture
def sleeper() -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_find_instance_pids(linear_server: TritonServer) -> None:
    pids = faults.find_instance_pids(linear_server.pid, "lin")
    assert sorted(pids) == ["lin_0_0", "lin_0_1"]  # never lin_var's instance
    assert len(set(pids.values())) == 2
    assert all(psutil.Process(pid).ppid() == linear_server.pid for pid in pids.values())
    assert faults.find_instance_pids(linear_server.pid, "lin", 1) == {"lin_0_1": pids["lin_0_1"]}
    assert list(faults.find_instance_pids(linear_server.pid, "lin_var")) == ["lin_var_0_0"]
    assert faults.find_instance_pids(linear_server.pid, "li") == {}
    assert faults.find_instance_pid(linear_server.pid, "lin", 1) == pids["lin_0_1"]
    with pytest.raises(FaultError, match=r"no instance lin_0_7 .*lin_0_0"):
        faults.find_instance_pid(linear_server.pid, "lin", 7)


def test_paused_instance_leaves_the_other_serving(linear_server: TritonServer) -> None:
    pid = faults.find_instance_pids(linear_server.pid, "lin", 0)["lin_0_0"]
    # Under a second: a Python-backend stub paused longer is declared unhealthy (see loadtest/faults.py).
    with faults.paused(pid, max_seconds=faults.PAUSE_HEALTH_LIMIT_S) as fault:
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
        assert faults.active_faults() == [fault]
        # The paused instance takes (and holds) at most one request; the live instance answers every other one.
        answered = [try_infer(linear_server, timeout_s=0.25) for _ in range(5)]
    assert sum(answered) >= 4, answered
    assert psutil.Process(pid).status() != psutil.STATUS_STOPPED
    assert not fault.active and fault.applied_at is not None and fault.undone_at is not None
    assert fault.duration is not None and fault.duration < faults.PAUSE_HEALTH_LIMIT_S + 0.05
    assert faults.active_faults() == []
    assert all(try_infer(linear_server, timeout_s=5.0) for _ in range(4))


def test_paused_resumes_when_the_body_raises(linear_server: TritonServer) -> None:
    pid = faults.find_instance_pids(linear_server.pid, "lin", 1)["lin_0_1"]
    with pytest.raises(RuntimeError, match="boom"), faults.paused(pid):
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
        raise RuntimeError("boom")
    assert psutil.Process(pid).status() != psutil.STATUS_STOPPED
    assert faults.active_faults() == []


def test_pause_and_resume_functions(sleeper: subprocess.Popen[bytes]) -> None:
    fault = faults.pause(sleeper.pid)
    assert psutil.Process(sleeper.pid).status() == psutil.STATUS_STOPPED
    assert fault.active
    faults.resume(sleeper.pid)
    assert psutil.Process(sleeper.pid).status() != psutil.STATUS_STOPPED
    assert not fault.active
    fault.undo()  # idempotent
    faults.resume(sleeper.pid)  # resuming a running process is harmless


def test_max_seconds_resumes_on_its_own(sleeper: subprocess.Popen[bytes]) -> None:
    with faults.paused(sleeper.pid, max_seconds=0.1) as fault:
        assert psutil.Process(sleeper.pid).status() == psutil.STATUS_STOPPED
        time.sleep(0.4)
        assert psutil.Process(sleeper.pid).status() != psutil.STATUS_STOPPED
        assert not fault.active
    assert 0.1 <= (fault.duration or 0.0) < 0.35


def test_undo_all_resumes_everything(sleeper: subprocess.Popen[bytes]) -> None:
    faults.pause(sleeper.pid)
    faults.undo_all()
    assert psutil.Process(sleeper.pid).status() != psutil.STATUS_STOPPED
    assert faults.active_faults() == []


def test_kill_is_one_shot(sleeper: subprocess.Popen[bytes]) -> None:
    faults.pause(sleeper.pid)
    fault = faults.kill(sleeper.pid)
    assert sleeper.wait(timeout=5) == -9
    assert faults.active_faults() == []  # the pause was closed, and a kill has nothing to undo
    fault.undo()
    with pytest.raises(FaultError, match="no such process"):
        faults.pause(sleeper.pid)


def test_unknown_server_pid_is_a_fault_error(sleeper: subprocess.Popen[bytes]) -> None:
    sleeper.kill()
    sleeper.wait()
    with pytest.raises(FaultError, match=f"no tritonserver process with pid {sleeper.pid}"):
        faults.find_instance_pids(sleeper.pid, "lin")


def test_reload_model_brings_a_killed_instance_back_every_time(
    start_server: Callable[..., TritonServer], linear_repository: Path
) -> None:
    """Triton never restarts a dead stub and skips a load of an unchanged model: ``reload_model`` must give the model
    fresh instances on every call (the second reload was a silent no-op before the ``parm_reload`` marker)."""
    server = start_server(linear_repository, extra_args=("--model-control-mode=explicit", "--load-model=*"))
    for _ in range(2):
        before = faults.find_instance_pids(server.pid, "lin")
        faults.kill(before["lin_0_0"])
        server.reload_model("lin")
        after = faults.find_instance_pids(server.pid, "lin")
        assert sorted(after) == ["lin_0_0", "lin_0_1"]
        assert not set(after.values()) & set(before.values()), "every instance is a new process"
        assert all(try_infer(server, timeout_s=5.0) for _ in range(6))
    with pytest.raises(ServerError, match=r"HTTP 404.*no_such_model"):
        server.reload_model("no_such_model")


def test_reload_reaps_the_retired_instances_triton_cannot_retire(
    start_server: Callable[..., TritonServer], linear_repository: Path
) -> None:
    """An instance killed while it holds a request leaves its version unable to retire after a reload: the old
    version's surviving instance would stay alive, idle, forever. ``reload_model`` kills it after ``reap_after_s``."""
    server = start_server(linear_repository, extra_args=("--model-control-mode=explicit", "--load-model=*"))
    old = faults.find_instance_pids(server.pid, "lin")
    with faults.paused(old["lin_0_0"], max_seconds=0.8):
        held = [try_infer(server, timeout_s=0.3) for _ in range(4)]  # lin_0_0 takes one and holds it
        faults.kill(old["lin_0_0"])  # dies while holding it
    assert held.count(False) >= 1
    server.reload_model("lin", reap_after_s=1.0)
    deadline = time.monotonic() + 10
    while old["lin_0_1"] in [p.pid for p in instance_processes(server.pid, "lin")] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(p.name for p in instance_processes(server.pid, "lin")) == ["lin_0_0", "lin_0_1"]
    assert not set(faults.find_instance_pids(server.pid, "lin").values()) & set(old.values())
    assert all(try_infer(server, timeout_s=5.0) for _ in range(6))

"""Faults of whole Triton servers (a cluster's workers): every process of the server's group at once.

A worker is one failure domain: its tritonserver process and its model-instance stubs fail together, as a machine
or a pod would. A whole server stopped with SIGSTOP has no one-second limit (its health thread stops too: measured
in PLATFORM.md), so long stalls of a worker are real stalls, not a crash. The faults follow ``faults.Fault``:
undone on exit of their context and at interpreter exit, and logged with wall-clock stamps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence

import psutil

from parm.errors import FaultError
from parm.netns import Namespace

from .faults import CpuQuota, Fault


def server_processes(server_pid: int) -> list[psutil.Process]:
    """The server and every process it started (its stubs)."""
    server = psutil.Process(server_pid)
    return [server, *server.children(recursive=True)]


def _wait_all(processes: list[psutil.Process], stopped: bool, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        while True:
            try:
                status = process.status()
            except psutil.NoSuchProcess:
                break
            if (status == psutil.STATUS_STOPPED) == stopped or status == psutil.STATUS_ZOMBIE:
                break
            if time.monotonic() > deadline:
                raise FaultError(f"pid {process.pid} did not {'stop' if stopped else 'resume'} within {timeout} s")
            time.sleep(0.001)


STUB_HEARTBEAT_GRACE_S = 0.05
"""How long the stubs run on their own after a pause before the server resumes (see ``ServerPause``)."""


class ServerPause(Fault):
    """The whole server stopped (SIGSTOP to every process of it): it holds every call it took and answers nothing,
    while the kernel still completes TCP handshakes for it; undone with SIGCONT.

    Order matters. The server judges each Python-backend stub by a heartbeat the stub refreshes every 300 ms, and a
    stub whose heartbeat is older than about a second while the server waits on it is declared dead: the server
    fails that request and may crash on the next one (measured: a single ``killpg`` SIGSTOP/SIGCONT of 2 s under
    load crashed the server with SIGSEGV after the 4th pause). So the server stops first and resumes last, after its
    stubs have had ``STUB_HEARTBEAT_GRACE_S`` to refresh their heartbeats.
    """

    kind = "server-pause"

    def _apply(self) -> None:
        self.process.send_signal(signal.SIGSTOP)
        processes = server_processes(self.pid)
        os.killpg(self.pid, signal.SIGSTOP)
        _wait_all(processes, stopped=True)

    def _undo(self) -> None:
        try:
            stubs = server_processes(self.pid)[1:]
        except psutil.NoSuchProcess:
            return
        for stub in stubs:
            with contextlib.suppress(psutil.NoSuchProcess):
                stub.resume()
        _wait_all(stubs, stopped=False)
        time.sleep(STUB_HEARTBEAT_GRACE_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGCONT)
        with contextlib.suppress(psutil.NoSuchProcess):
            _wait_all(server_processes(self.pid), stopped=False)


class ServerKill(Fault):
    """SIGKILL to the server's whole process group: the server is gone (restart it on its ports to bring it back)."""

    kind = "server-kill"
    reversible = False

    def _apply(self) -> None:
        processes = server_processes(self.pid)
        os.killpg(self.pid, signal.SIGCONT)  # a stopped process dies only once continued
        os.killpg(self.pid, signal.SIGKILL)
        psutil.wait_procs(processes, timeout=5.0)

    def _undo(self) -> None:
        pass


class ServerCpuQuota(CpuQuota):
    """The whole server (tritonserver and its stubs) in one cgroup with ``cpus`` of one CPU: a slow server, not a
    dead one (a noisy neighbour, a container limit)."""

    kind = "server-cpu-quota"

    def _apply(self) -> None:
        super()._apply()  # the server itself
        assert self._cgroup is not None
        for child in server_processes(self.pid)[1:]:
            with contextlib.suppress(ProcessLookupError):
                (self._cgroup / "cgroup.procs").write_text(str(child.pid))

    def _undo(self) -> None:
        if self._origin is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in server_processes(self.pid)[1:]:
                    with contextlib.suppress(ProcessLookupError):
                        (self._origin / "cgroup.procs").write_text(str(child.pid))
        super()._undo()


def nftables_available() -> bool:
    """Whether ``PortCut`` can work here: the ``nft`` tool, run by root."""
    return shutil.which("nft") is not None and os.geteuid() == 0


class PortCut(Fault):
    """Cuts the server off the network: nftables silently drops every packet to its ports and every packet it sends
    from them, as a partitioned link would (no reset, no refusal: callers only see silence). Deleting the table
    undoes it; connections then resume."""

    kind = "port-cut"

    def __init__(self, pid: int, ports: Sequence[int], max_seconds: float | None = None) -> None:
        super().__init__(pid, max_seconds)
        self.ports = tuple(ports)
        self.table = f"parm_cut_{pid}_{time.monotonic_ns()}"

    def _apply(self) -> None:
        ports = ", ".join(str(port) for port in self.ports)
        rules = (
            f"table inet {self.table} {{\n"
            f"  chain input {{ type filter hook input priority -10; policy accept; tcp dport {{ {ports} }} drop; }}\n"
            f"  chain output {{ type filter hook output priority -10; policy accept; tcp sport {{ {ports} }} drop; }}\n"
            "}\n"
        )
        result = subprocess.run(["nft", "-f", "-"], input=rules, text=True, capture_output=True, check=False)
        if result.returncode != 0:
            raise FaultError(f"cannot cut ports {ports} of pid {self.pid}: {result.stderr.strip()}")

    def _undo(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True, check=False)


class LinkCut(Fault):
    """Takes a namespaced server's link down (``ip link set <veth> down`` on the bridge side, ``parm.netns``): every
    packet to and from it is lost, as when a cable or a node's network goes; bringing the link up undoes it."""

    kind = "link-cut"

    def __init__(self, pid: int, namespace: Namespace, max_seconds: float | None = None) -> None:
        super().__init__(pid, max_seconds)
        self.namespace = namespace

    def _apply(self) -> None:
        self.namespace.link(up=False)

    def _undo(self) -> None:
        self.namespace.link(up=True)

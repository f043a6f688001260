"""Real faults on real model-instance processes: pause (SIGSTOP/SIGCONT) and kill.

Each Triton model instance served by the (Python-based) backends is its own stub process, a child of tritonserver,
whose command line carries the instance name (``<model>_<group>_<index>``, e.g. ``lin_0_1``);
``find_instance_pids`` finds them there.

A fault is an object with ``apply()`` and ``undo()``; used as a context manager it is always undone on exit, and
every fault still applied when the interpreter exits is undone then (``undo_all``), so no instance is ever left
paused. Each apply and undo is logged with a wall-clock timestamp (also kept on the fault: ``applied_at``,
``undone_at``) so that latency traces can be lined up with faults. New kinds (CPU hog, cgroup quota) subclass ``Fault``
and implement ``_apply``/``_undo``.

CPU starvation comes in two kinds: ``CpuQuota`` moves the instance into a cgroup of its own with a CFS quota (the
kernel throttles it to a fraction of one CPU: the targeted fault, as a noisy container limit would), and ``CpuHog``
pins the instance to one CPU and runs busy processes beside it there (a noisy neighbour, which also slows whatever
else the kernel schedules on that CPU). Both are undone like every fault: the process goes back to its own cgroup or
CPU set, the cgroup is removed, the hogs are killed (and a hog whose parent dies exits on its own).

Measured limit of pauses (Triton 2.51, Python backend): while tritonserver waits on a stub, it expects the stub's
health flag (refreshed every 300 ms by a stub thread) within about 1 s. A stub paused longer with a request in flight
is declared unhealthy: that request fails ("Stub process '<instance>' is not healthy"), and the next request sent to
the instance after SIGCONT crashed tritonserver (boost::interprocess::lock_exception, SIGABRT). Pauses up to 0.95 s
were harmless: the paused instance holds the one request it took, the other instances serve the rest. So keep each
pause under ``PAUSE_HEALTH_LIMIT_S`` (``max_seconds`` resumes automatically); longer stragglers need another fault.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

import psutil

from parm.errors import FaultError
from parm.server import instance_processes

logger = logging.getLogger(__name__)

PAUSE_HEALTH_LIMIT_S = 0.9
"""Longest pause of a Python-backend stub that the server survives with margin (see the module docstring)."""

_active: set[Fault] = set()
_active_lock = threading.Lock()


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")


def find_instance_pids(
    server_pid: int, model: str, instance_index: int | None = None, *, group_index: int | None = None
) -> dict[str, int]:
    """Instance name -> pid of ``model``'s live stub processes under the tritonserver ``server_pid``, sorted by name.

    ``instance_index``/``group_index`` narrow it down (``lin_0_1`` is group 0, index 1). When two processes carry
    one name, the newest is the live one: after a reload (``TritonServer.reload_model``) the retired instances of
    the old version can linger beside the new ones (``parm.server.instance_processes``).
    """
    try:
        processes = instance_processes(server_pid, model)
    except psutil.NoSuchProcess as exc:
        raise FaultError(f"no tritonserver process with pid {server_pid}") from exc
    found = {  # oldest first, so a newer process of the same name overwrites an older one
        p.name: p.pid for p in processes if instance_index in (None, p.index) and group_index in (None, p.group)
    }
    return dict(sorted(found.items()))


def find_instance_pid(server_pid: int, model: str, instance_index: int = 0, *, group_index: int = 0) -> int:
    """The pid of one instance of ``model``; ``FaultError`` if there is no such instance."""
    pids = find_instance_pids(server_pid, model, instance_index, group_index=group_index)
    if not pids:
        available = find_instance_pids(server_pid, model)
        raise FaultError(
            f"model '{model}' has no instance {model}_{group_index}_{instance_index} under tritonserver pid "
            f"{server_pid} (instances found: {sorted(available) or 'none'})"
        )
    return next(iter(pids.values()))


class Fault(abc.ABC):
    """A fault on one process: ``apply()`` injects it, ``undo()`` removes it (idempotent, thread-safe, and a no-op
    once the process is gone). As a context manager it is applied on entry and always undone on exit.

    ``max_seconds`` undoes the fault automatically that long after ``apply()`` (from a timer thread), so a fault can
    outlive neither a hung caller nor its own safe limit.
    """

    kind = "fault"
    reversible = True  # False: nothing to undo (the fault is a one-shot event), so it is never kept as active

    def __init__(self, pid: int, max_seconds: float | None = None) -> None:
        try:
            # psutil.Process remembers the creation time: a signal never reaches a process that reused the pid.
            self.process = psutil.Process(pid)
        except psutil.NoSuchProcess as exc:
            raise FaultError(f"cannot {self.kind} pid {pid}: no such process") from exc
        self.pid = pid
        self.max_seconds = max_seconds
        self.applied_at: float | None = None
        self.undone_at: float | None = None
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None

    @property
    def active(self) -> bool:
        """Applied and not undone (a one-shot fault stays active until ``undo()``, which has nothing to do)."""
        return self.applied_at is not None and self.undone_at is None

    @property
    def duration(self) -> float | None:
        """Seconds from apply to undo (to now while active); None before apply."""
        if self.applied_at is None:
            return None
        return (self.undone_at or time.time()) - self.applied_at

    def apply(self) -> Fault:
        with self._lock:
            if self.active:
                return self
            try:
                self._apply()
            except psutil.NoSuchProcess as exc:
                raise FaultError(f"cannot {self.kind} pid {self.pid}: the process is gone") from exc
            self.applied_at, self.undone_at = time.time(), None
            if self.reversible:
                with _active_lock:
                    _active.add(self)
                if self.max_seconds is not None:
                    self._timer = threading.Timer(self.max_seconds, self.undo)
                    self._timer.daemon = True
                    self._timer.start()
            logger.info("%s fault %s applied to pid %d", _stamp(self.applied_at), self.kind, self.pid)
            return self

    def undo(self) -> None:
        with self._lock:
            if not self.active:
                return
            if self._timer is not None and self._timer is not threading.current_thread():
                self._timer.cancel()
            try:
                self._undo()
            except psutil.NoSuchProcess:
                logger.info("pid %d is gone; nothing to undo for %s", self.pid, self.kind)
            self.undone_at = time.time()
            with _active_lock:
                _active.discard(self)
            if self.reversible:  # a one-shot fault (a kill) has nothing to take back: no "undone" line for it
                logger.info(
                    "%s fault %s undone on pid %d after %.3f s",
                    _stamp(self.undone_at), self.kind, self.pid, self.undone_at - (self.applied_at or self.undone_at),
                )  # fmt: skip
            self._check_duration()

    @abc.abstractmethod
    def _apply(self) -> None:
        """Injects the fault into ``self.pid``."""

    @abc.abstractmethod
    def _undo(self) -> None:
        """Takes the fault back; called once, whatever happened."""

    def _check_duration(self) -> None:  # noqa: B027 (an optional hook: a no-op unless a fault overrides it)
        """Hook run after undo: subclasses warn when the fault lasted longer than the server tolerates."""

    def __enter__(self) -> Fault:
        return self.apply()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.undo()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pid={self.pid}, active={self.active})"


def _wait_status(process: psutil.Process, stopped: bool, timeout: float = 1.0) -> None:
    """Signals are delivered asynchronously: wait until the kernel reports the state, so callers can rely on it."""
    deadline = time.monotonic() + timeout
    while (process.status() == psutil.STATUS_STOPPED) != stopped and time.monotonic() < deadline:
        time.sleep(0.001)


class Pause(Fault):
    """SIGSTOP: the instance holds its request without answering (a straggler); SIGCONT undoes it.

    Keep it under ``PAUSE_HEALTH_LIMIT_S`` on a Python-backend stub (see the module docstring); a longer pause is
    logged as a warning when undone.
    """

    kind = "pause"

    def _apply(self) -> None:
        self.process.send_signal(signal.SIGSTOP)
        _wait_status(self.process, stopped=True)

    def _undo(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        _wait_status(self.process, stopped=False)

    def _check_duration(self) -> None:
        if (self.duration or 0.0) > PAUSE_HEALTH_LIMIT_S:
            logger.warning(
                "pid %d was paused %.2f s, longer than %.1f s: a Triton Python-backend stub paused that long is "
                "declared unhealthy and the server may crash on its next request",
                self.pid, self.duration, PAUSE_HEALTH_LIMIT_S,
            )  # fmt: skip


class Kill(Fault):
    """SIGKILL: the instance is lost for good. Nothing can bring a dead process back, so ``undo`` has nothing to do.
    Triton's Python backend does not restart a dead stub: requests routed to it fail ("Stub process ... is not
    healthy") until the model is reloaded, and the server may need ``stop()``'s SIGKILL to exit."""

    kind = "kill"
    reversible = False

    def _apply(self) -> None:
        resume(self.pid)  # closes any pause fault on it, so none is left active
        self.process.kill()
        deadline = time.monotonic() + 5.0
        # Dead once gone or a zombie (tritonserver reaps its children when it gets to it).
        while self.process.is_running() and self.process.status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() > deadline:
                raise FaultError(f"pid {self.pid} is still alive 5 s after SIGKILL")
            time.sleep(0.001)

    def _undo(self) -> None:
        pass


def pause(pid: int, max_seconds: float | None = None) -> Pause:
    """SIGSTOPs ``pid``; returns the fault, to ``undo()`` later (``resume(pid)`` does the same, and so does a timer
    after ``max_seconds`` if given)."""
    fault = Pause(pid, max_seconds)
    fault.apply()
    return fault


def resume(pid: int) -> None:
    """SIGCONTs ``pid``, and marks any pause fault on it as undone; a no-op if the process is gone."""
    with _active_lock:
        pauses = [f for f in _active if isinstance(f, Pause) and f.pid == pid]
    for fault in pauses:
        fault.undo()
    if not pauses:
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            was_stopped = process.status() == psutil.STATUS_STOPPED
            process.send_signal(signal.SIGCONT)
            _wait_status(process, stopped=False)
            if was_stopped:
                logger.info("%s resumed pid %d (paused outside this module)", _stamp(time.time()), pid)


@contextlib.contextmanager
def paused(pid: int, max_seconds: float | None = None) -> Iterator[Pause]:
    """Pauses ``pid`` for the body; resumes it on exit, even when the body raises (and after ``max_seconds``, if
    given, even while the body still runs)."""
    fault = Pause(pid, max_seconds)
    with fault:
        yield fault


def kill(pid: int) -> Kill:
    """SIGKILLs ``pid`` (after a SIGCONT) and waits for it to die."""
    fault = Kill(pid)
    fault.apply()
    return fault


def active_faults() -> list[Fault]:
    """Faults applied and not yet undone."""
    with _active_lock:
        return sorted(_active, key=lambda f: f.applied_at or 0.0)


def undo_all() -> None:
    """Undoes every active fault (newest first); runs at interpreter exit too."""
    for fault in reversed(active_faults()):
        fault.undo()


atexit.register(undo_all)


# --------------------------------------------------------------------------------------------------------------------
# CPU starvation
# --------------------------------------------------------------------------------------------------------------------

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "parm-fault-"
"""Name prefix of the cgroups ``CpuQuota`` creates (and ``remove_stale_cgroups`` removes)."""


def _cgroup_entries(pid: int) -> list[tuple[list[str], str]]:
    """``/proc/<pid>/cgroup`` as (controllers, path) pairs."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except FileNotFoundError as exc:
        raise psutil.NoSuchProcess(pid) from exc
    entries = []
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        entries.append((controllers.split(",") if controllers else [], path))
    return entries


def cpu_cgroup_of(pid: int) -> tuple[Path, str]:
    """The directory of ``pid``'s cgroup in a hierarchy with the CPU controller, and its version ("v1" or "v2").

    ``FaultError`` when neither hierarchy is mounted with the CPU controller (then ``CpuHog`` still works).
    """
    entries = _cgroup_entries(pid)
    for controllers, path in entries:
        if "cpu" in controllers:
            for mount in (CGROUP_ROOT / "cpu", CGROUP_ROOT / "cpu,cpuacct"):
                if (mount / "cpu.cfs_quota_us").exists():
                    return mount / path.lstrip("/"), "v1"
    controllers_file = CGROUP_ROOT / "cgroup.controllers"
    if controllers_file.exists() and "cpu" in controllers_file.read_text().split():
        for controllers, path in entries:
            if not controllers:
                return CGROUP_ROOT / path.lstrip("/"), "v2"
    raise FaultError(
        f"cannot limit the CPU of pid {pid}: no cgroup hierarchy with the cpu controller under {CGROUP_ROOT}"
    )


def cgroup_quota_available() -> bool:
    """Whether ``CpuQuota`` can work here: a CPU-controller cgroup this process may create children in."""
    try:
        directory, _ = cpu_cgroup_of(os.getpid())
    except (FaultError, OSError, psutil.Error):
        return False
    return os.access(directory, os.W_OK)


def remove_stale_cgroups() -> list[Path]:
    """Removes empty cgroups left by a ``CpuQuota`` whose process was killed before undoing it; returns them."""
    removed = []
    for mount in (CGROUP_ROOT / "cpu", CGROUP_ROOT / "cpu,cpuacct", CGROUP_ROOT):
        if not mount.is_dir():
            continue
        for directory in mount.rglob(f"{CGROUP_PREFIX}*"):
            with contextlib.suppress(OSError):
                if directory.is_dir() and not (directory / "cgroup.procs").read_text().strip():
                    directory.rmdir()
                    removed.append(directory)
    return removed


class CpuQuota(Fault):
    """Throttles the process to ``cpus`` of one CPU (CFS quota over ``period_us``) in a cgroup of its own.

    cgroup v1 (``cpu.cfs_quota_us``) or v2 (``cpu.max``); the process (all its threads) moves back to its own cgroup
    on undo, and the cgroup is removed. A throttled stub still refreshes its health flag (it runs a slice of every
    period), so unlike a long pause this fault may last as long as the run.
    """

    kind = "cpu-quota"

    def __init__(self, pid: int, cpus: float, max_seconds: float | None = None, period_us: int = 100_000) -> None:
        if not cpus > 0:
            raise FaultError(f"a CPU quota must be > 0 CPUs, got {cpus}")
        if period_us < 1000:
            raise FaultError(f"a CFS period must be >= 1000 us, got {period_us}")
        super().__init__(pid, max_seconds)
        self.cpus = cpus
        self.period_us = period_us
        self._origin: Path | None = None
        self._cgroup: Path | None = None

    def _apply(self) -> None:
        origin, version = cpu_cgroup_of(self.pid)
        quota = max(1000, int(self.cpus * self.period_us))
        parent = origin if version == "v1" else origin.parent
        cgroup = parent / f"{CGROUP_PREFIX}{self.pid}-{time.monotonic_ns()}"
        try:
            if version == "v2" and "cpu" not in (parent / "cgroup.subtree_control").read_text().split():
                (parent / "cgroup.subtree_control").write_text("+cpu")
            cgroup.mkdir()
            if version == "v1":
                (cgroup / "cpu.cfs_period_us").write_text(str(self.period_us))
                (cgroup / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (cgroup / "cpu.max").write_text(f"{quota} {self.period_us}")
            self._cgroup, self._origin = cgroup, origin
            (cgroup / "cgroup.procs").write_text(str(self.pid))
        except ProcessLookupError as exc:
            self._remove_cgroup()
            raise psutil.NoSuchProcess(self.pid) from exc
        except OSError as exc:
            self._remove_cgroup()
            raise FaultError(f"cannot put pid {self.pid} under a CPU quota in {cgroup}: {exc}") from exc

    def _undo(self) -> None:
        try:
            if self._origin is not None:
                with contextlib.suppress(ProcessLookupError):  # gone: nothing to move back
                    (self._origin / "cgroup.procs").write_text(str(self.pid))
        finally:
            self._remove_cgroup()

    def _remove_cgroup(self) -> None:
        if self._cgroup is None:
            return
        deadline = time.monotonic() + 2.0
        while True:
            try:
                self._cgroup.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:  # still busy for a moment after the move
                if time.monotonic() > deadline:
                    logger.warning("could not remove cgroup %s", self._cgroup)
                    break
                time.sleep(0.01)
        self._cgroup = None


_HOG_CODE = """
import os, sys, time
parent, deadline = os.getppid(), time.monotonic() + float(sys.argv[1])
n = 0
while True:
    n += 1
    if n % 100000 == 0 and (os.getppid() != parent or time.monotonic() > deadline):
        break
"""


class CpuHog(Fault):
    """A co-located CPU hog: pins the process (every thread) to one CPU and runs ``hogs`` busy processes there.

    The kernel then shares that CPU between the instance and the hogs (about 1/(hogs+1) each), and so the instance
    slows down; other processes scheduled on that CPU slow down too, as with a real noisy neighbour. Undo kills the
    hogs and restores each thread's CPU set. A hog exits on its own once its parent is gone or after
    ``max_lifetime_s``, so a killed harness leaves no busy process behind for long.
    """

    kind = "cpu-hog"

    def __init__(
        self,
        pid: int,
        hogs: int = 1,
        max_seconds: float | None = None,
        cpu: int | None = None,
        max_lifetime_s: float = 600.0,
    ) -> None:
        if hogs < 1:
            raise FaultError(f"a CPU hog needs at least one busy process, got {hogs}")
        super().__init__(pid, max_seconds)
        self.hogs = hogs
        self.cpu = cpu
        self.max_lifetime_s = max_seconds + 5.0 if max_seconds is not None else max_lifetime_s
        self._affinity: dict[int, set[int]] = {}
        self._processes: list[subprocess.Popen[bytes]] = []

    def _threads(self) -> list[int]:
        try:
            return [int(tid) for tid in os.listdir(f"/proc/{self.pid}/task")]
        except FileNotFoundError as exc:
            raise psutil.NoSuchProcess(self.pid) from exc

    def _apply(self) -> None:
        cpu = self.cpu if self.cpu is not None else max(os.sched_getaffinity(self.pid))
        for tid in self._threads():
            with contextlib.suppress(ProcessLookupError):
                self._affinity[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, {cpu})
        try:
            for _ in range(self.hogs):
                hog = subprocess.Popen(
                    [sys.executable, "-c", _HOG_CODE, str(self.max_lifetime_s)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                self._processes.append(hog)
                os.sched_setaffinity(hog.pid, {cpu})
        except OSError as exc:
            self._undo()
            raise FaultError(f"cannot start a CPU hog beside pid {self.pid}: {exc}") from exc
        self.cpu = cpu

    def _undo(self) -> None:
        for hog in self._processes:
            hog.kill()
            hog.wait()
        self._processes = []
        for tid, mask in self._affinity.items():
            with contextlib.suppress(ProcessLookupError, OSError):
                os.sched_setaffinity(tid, mask)
        self._affinity = {}

    @property
    def hog_pids(self) -> list[int]:
        return [hog.pid for hog in self._processes]

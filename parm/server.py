"""The embedded Triton server: the ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel, run as a child process.

That server has only the Python backend. ``build_backend_directory`` gives it a backend directory of our own:

- ``python`` -> a symlink to the wheel's Python backend (a symlink, not a copy: ``libtriton_python.so`` finds its
  libraries through ``$ORIGIN``), with the stub built for the running Python copied beside it;
- ``onnxruntime`` -> a symlink to ``python_backend/onnxruntime_backend``, a Python-based backend, so every model whose
  config says ``backend: "onnxruntime"`` is served on the CPU by onnxruntime, and the same repository still runs on a
  stock GPU Triton with its native onnxruntime backend.

``TritonServer`` starts the server in its own process group (each model instance is a stub process in that group),
waits until it is ready, and stops it so that no stub survives, even one that a fault injector has SIGSTOPped.
"""

from __future__ import annotations

import atexit
import contextlib
import filecmp
import glob
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TextIO

import psutil

from parm import security
from parm.backend.orchestrator import RELOAD_PARAMETER
from parm.errors import ConfigError, ServerError

logger = logging.getLogger(__name__)

STUB_NAME = "triton_python_backend_stub"
LOG_TAIL_LINES = 40

# Without a proxy: a proxy from the environment must never see requests to our own local server.
_URL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_SERVER_IDS = itertools.count()
SHM_DIR = Path("/dev/shm")


# --------------------------------------------------------------------------------------------------------------------
# Where things are
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TritonInstallation:
    """Paths inside the installed ``nvidia-pytriton`` wheel."""

    package_dir: Path

    @property
    def server_binary(self) -> Path:
        return self.package_dir / "tritonserver" / "bin" / "tritonserver"

    @property
    def python_backend_dir(self) -> Path:
        return self.package_dir / "tritonserver" / "backends" / "python"

    @property
    def stubs_dir(self) -> Path:
        return self.package_dir / "tritonserver" / "python_backend_stubs"

    @property
    def libs_dir(self) -> Path:
        """The wheel's bundled shared libraries (as ``pytriton.utils.distribution.get_libs_path`` finds them)."""
        wheel_libs = self.package_dir.parent / "nvidia_pytriton.libs"
        return wheel_libs if wheel_libs.is_dir() else self.package_dir / "tritonserver" / "external_libs"

    def stub_for(self, version: str | None = None) -> Path:
        """The Python backend stub built for ``version`` ("3.11"; default: the running interpreter)."""
        version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.stubs_dir / version / STUB_NAME
        if not stub.is_file():
            available = sorted(p.name for p in self.stubs_dir.iterdir()) if self.stubs_dir.is_dir() else []
            raise ServerError(
                f"the nvidia-pytriton wheel in {self.package_dir} has no Python backend stub for Python {version} "
                f"(expected {stub}; stubs exist for {available or 'no version'}); "
                "run the project with one of those Python versions"
            )
        return stub


def find_triton() -> TritonInstallation:
    """Locates the ``nvidia-pytriton`` wheel (never a hard-coded path) and checks that it holds a server."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("the nvidia-pytriton package is not installed: pip install nvidia-pytriton")
    install = TritonInstallation(Path(next(iter(spec.submodule_search_locations))).resolve())
    for path in (install.server_binary, install.python_backend_dir / "libtriton_python.so"):
        if not path.exists():
            raise ServerError(f"the nvidia-pytriton wheel in {install.package_dir} lacks {path}")
    return install


def onnxruntime_backend_source() -> Path:
    """The directory holding the Python-based ``onnxruntime`` backend's ``model.py``."""
    spec = importlib.util.find_spec("parm.backend")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("the parm.backend package (python_backend/) is not importable")
    source = Path(next(iter(spec.submodule_search_locations))).resolve() / "onnxruntime_backend"
    if not (source / "model.py").is_file():
        raise ServerError(f"the onnxruntime backend is missing: expected {source / 'model.py'}")
    return source


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "parm"


# --------------------------------------------------------------------------------------------------------------------
# Backend directory
# --------------------------------------------------------------------------------------------------------------------


def install_stub(install: TritonInstallation, version: str | None = None) -> Path:
    """Copies the stub for the running Python beside ``libtriton_python.so``, only if missing or different.

    The copy is atomic (a temporary file, then a rename), so concurrent servers never see half a stub.
    """
    source = install.stub_for(version)
    target = install.python_backend_dir / STUB_NAME
    if target.is_file() and filecmp.cmp(source, target, shallow=False):
        return target
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{STUB_NAME}.", dir=install.python_backend_dir)
        os.close(fd)
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(NameError, OSError):
            os.unlink(tmp)
        raise ServerError(f"cannot install the Python backend stub {source} as {target}: {exc}") from exc
    logger.info("installed Python backend stub %s -> %s", source, target)
    return target


def _ensure_symlink(link: Path, destination: Path) -> None:
    """Makes ``link`` point at ``destination``, atomically (safe when several servers start at once)."""
    if link.is_symlink() and os.readlink(link) == str(destination):
        return
    if link.exists() and not link.is_symlink():
        raise ServerError(f"cannot build the backend directory: {link} exists and is not a symlink")
    tmp = link.with_name(f".{link.name}.{os.getpid()}.{threading.get_ident()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(destination, tmp)
    os.replace(tmp, link)


def build_backend_directory(target: str | os.PathLike[str] | None = None) -> Path:
    """Builds (or reuses) the backend directory for ``--backend-directory`` and returns its absolute path.

    Default location: a per-user cache dir keyed by the wheel and the source paths, so that two checkouts or two
    virtual environments never share one.
    """
    install = find_triton()
    install_stub(install)
    source = onnxruntime_backend_source()
    if target is None:
        key = hashlib.sha256(f"{install.package_dir}\0{source}".encode()).hexdigest()[:12]
        target = _cache_root() / "triton-backends" / key
    directory = Path(target).absolute()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _ensure_symlink(directory / "python", install.python_backend_dir)
        _ensure_symlink(directory / "onnxruntime", source)
    except OSError as exc:
        raise ServerError(f"cannot build the backend directory {directory}: {exc}") from exc
    return directory


def server_environment(install: TritonInstallation, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: this interpreter's bin dir first in PATH (the stub finds its Python and
    site-packages that way; PYTHONPATH does not work), the wheel's libraries appended to LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    scripts = sysconfig.get_path("scripts")
    env["PATH"] = os.pathsep.join(p for p in (scripts, env.get("PATH", "")) if p)
    libs = str(install.libs_dir)
    env["LD_LIBRARY_PATH"] = f"{env['LD_LIBRARY_PATH']}:{libs}" if env.get("LD_LIBRARY_PATH") else libs
    return env


# --------------------------------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------------------------------


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago (all bound at once, so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One TCP port that was free a moment ago."""
    return free_ports(1, host)[0]


# --------------------------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------------------------


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log, without the status tables' rows (long, and seldom the point)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no server log)"
    kept = [line for line in text.splitlines() if line.strip() and not line.startswith(("|", "+"))]
    return "\n".join(kept[-lines:])


# Errors Triton logs on every start on a machine without a GPU: noise in a diagnosis.
_HARMLESS_ERRORS = ("CudaDriverHelper has not been initialized", "Failed to initialize NVML")


def _diagnosis(path: Path) -> str:
    """What went wrong, from the server log: its error lines first (they name the model and the cause, while the
    tail shows only the shutdown that followed), then its last lines."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    errors = [
        line
        for line in text.splitlines()
        if re.match(r"^(E\d{4} |error:)", line) and not any(noise in line for noise in _HARMLESS_ERRORS)
    ]
    # The same error comes once per instance: keep one of each, whatever its timestamp.
    errors = list({line.split("] ", 1)[-1]: line for line in errors}.values())[-10:]
    summary = "errors in the server log:\n" + "\n".join(errors) + "\n" if errors else ""
    return f"{summary}last lines of {path}:\n{_tail(path, 15)}"


@dataclass(frozen=True)
class InstanceProcess:
    """One Python-backend stub process under a tritonserver: which instance it runs, and since when."""

    name: str
    """The instance name, ``<model>_<group>_<index>``."""
    group: int
    index: int
    pid: int
    created: float


def instance_processes(server_pid: int, model: str) -> list[InstanceProcess]:
    """Every stub process of ``model`` among the direct children of the tritonserver ``server_pid``, oldest first.

    A command-line field must equal the instance name exactly, so ``lin`` never matches ``lin_coded``'s instances.
    Two processes may carry one name: after a reload the retired instances of the old version can linger beside
    the new ones (see ``TritonServer.reload_model``). Raises ``psutil.NoSuchProcess`` if the server is gone.
    """
    pattern = re.compile(rf"{re.escape(model)}_(\d+)_(\d+)")
    found = []
    for child in psutil.Process(server_pid).children():
        try:
            cmdline = child.cmdline()
            created = child.create_time()
        except psutil.Error:
            continue  # exited meanwhile (a zombie has no command line), or not ours to read
        if not cmdline or os.path.basename(cmdline[0]) != STUB_NAME:
            continue
        for field in cmdline[1:]:
            match = pattern.fullmatch(field)
            if match is not None:
                found.append(InstanceProcess(field, int(match[1]), int(match[2]), child.pid, created))
                break
    return sorted(found, key=lambda p: (p.created, p.pid))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class TritonServer:
    """The embedded Triton server as a context manager::

        with TritonServer("model_repository") as server:
            client = tritonclient.http.InferenceServerClient(server.http_address)

    ``stop()`` sends SIGTERM and grants ``stop_timeout`` seconds before SIGKILL; Triton itself waits up to
    ``exit_timeout`` of those for in-flight requests and open client connections (close your clients), then
    unloads the models (a few seconds: each stub runs its ``finalize``).

    Ports left as ``None`` are picked free (and picked again if the server loses the race for one). URLs:
    ``http_url`` ("http://host:port", for Locust and urllib), ``http_address`` and ``grpc_url`` ("host:port", as
    tritonclient wants them), ``metrics_url`` (the Prometheus endpoint).

    Every server refuses the model-repository, shared-memory, logging and trace APIs without ``admin_key``
    (``parm.security``; by default ``PARM_ADMIN_KEY``, or a random key shared by this process); this class's own
    calls carry it. Its gRPC port accepts the gateway's keepalive pings. Its stubs' shared-memory regions carry a
    prefix of their own (``shm_prefix``), and ``stop`` removes what a killed stub left behind in /dev/shm.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        host: str = "127.0.0.1",
        backend_directory: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        log_verbose: int = 0,
        startup_timeout: float = 60.0,
        exit_timeout: float = 5.0,
        stop_timeout: float = 15.0,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        admin_key: str | None = None,
        command_prefix: Sequence[str] = (),
    ) -> None:
        repository = Path(model_repository).absolute()
        if not repository.is_dir():
            raise ConfigError(f"model repository {repository} is not a directory")
        self.model_repository = repository
        self.host = host
        self._fixed_ports = (http_port, grpc_port, metrics_port)
        self.http_port, self.grpc_port, self.metrics_port = self._pick_ports()
        self._backend_directory = backend_directory
        self._log_dir = Path(log_dir).absolute() if log_dir is not None else None
        self.log_verbose = log_verbose
        self.startup_timeout = startup_timeout
        self.exit_timeout = exit_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = tuple(extra_args)
        self._env = env
        self.admin_key = admin_key if admin_key is not None else security.admin_key()
        self.command_prefix = tuple(command_prefix)
        """Runs the server through this (``ip netns exec NAME``: in a network namespace of its own)."""
        self.shm_prefix = f"parm{os.getpid()}s{next(_SERVER_IDS)}_"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._pid: int | None = None
        self.log_path: Path | None = None
        self.returncode: int | None = None
        """tritonserver's exit status once stopped: 0 after a clean shutdown, -9 if it had to be killed."""

    # -- addresses -----------------------------------------------------------------------------------------------

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_address(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int:
        """The tritonserver process id (also its process group id); kept after ``stop``."""
        if self._pid is None:
            raise ServerError("the server has not been started")
        return self._pid

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else "stopped"
        return f"TritonServer({str(self.model_repository)!r}, http={self.http_port}, pid={self._pid}, {state})"

    def start(self) -> TritonServer:
        """Starts the server and waits until it is ready; raises ``ServerError`` with the log's tail otherwise."""
        if self._process is not None:
            raise ServerError(f"{self!r} is already started")
        install = find_triton()
        backend_dir = build_backend_directory(self._backend_directory)
        env = server_environment(install, self._env)
        log_dir = self._log_dir or Path(tempfile.mkdtemp(prefix="parm-triton-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        retries = 0 if all(p is not None for p in self._fixed_ports) else 2
        for attempt in range(retries + 1):
            self.log_path = log_dir / "tritonserver.log"
            self._launch(install, backend_dir, env)
            try:
                self._wait_ready()
                return self
            except BaseException as exc:
                if not isinstance(exc, ServerError):  # e.g. KeyboardInterrupt: never leave a server behind
                    self.stop()
                    raise
                port_race = "address already in use" in _tail(self.log_path).lower()
                self.stop()
                if not port_race or attempt == retries:
                    raise exc from None
                logger.warning("a port was taken before the server bound it; retrying on new ports")
                self.http_port, self.grpc_port, self.metrics_port = self._pick_ports()
        raise AssertionError("unreachable")

    def _pick_ports(self) -> tuple[int, int, int]:
        fresh = iter(free_ports(3))
        http, grpc, metrics = (port if port is not None else next(fresh) for port in self._fixed_ports)
        return http, grpc, metrics

    def command(self, install: TritonInstallation, backend_dir: Path) -> list[str]:
        """The tritonserver command line."""
        return [
            str(install.server_binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            # How long Triton waits for in-flight requests and open client connections before it unloads the
            # models anyway; shorter than stop_timeout, so that the unloading (finalize) still fits in the grace.
            f"--exit-timeout-secs={max(1, round(self.exit_timeout))}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *security.restricted_api_args(self.admin_key),
            *security.grpc_keepalive_args(),
            *self.extra_args,
        ]

    def _launch(self, install: TritonInstallation, backend_dir: Path, env: dict[str, str]) -> None:
        assert self.log_path is not None
        command = [*self.command_prefix, *self.command(install, backend_dir)]
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stop() can signal every stub at once
        )
        self._pid = self._process.pid
        atexit.register(self.stop)
        logger.info("started tritonserver pid %d (http %d, grpc %d, metrics %d), log %s",
                    self._pid, self.http_port, self.grpc_port, self.metrics_port, self.log_path)  # fmt: skip

    def _wait_ready(self) -> None:
        assert self._process is not None and self.log_path is not None
        log_path = self.log_path
        deadline = time.monotonic() + self.startup_timeout
        while True:
            returncode = self._process.poll()
            if returncode is not None:
                raise ServerError(
                    f"tritonserver exited with code {returncode} before it was ready "
                    f"(model repository {self.model_repository}); {_diagnosis(log_path)}"
                )
            if self.is_ready() and self._metrics_listening():
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"tritonserver was not ready within {self.startup_timeout:.0f} s "
                    f"(model repository {self.model_repository}); {_diagnosis(log_path)}"
                )
            time.sleep(0.1)

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def is_ready(self) -> bool:
        """Whether GET /v2/health/ready answers 200 (with strict readiness: every model is loaded)."""
        try:
            with _URL_OPENER.open(f"{self.http_url}/v2/health/ready", timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _metrics_listening(self) -> bool:
        """Whether the metrics port accepts connections: Triton opens it tens of ms after it reports ready, and a
        scrape in between is refused."""
        try:
            with socket.create_connection((self._client_host, self.metrics_port), timeout=1.0):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stops the server and every stub process; safe to call twice.

        SIGCONT the whole group first (a SIGSTOPped stub would never handle SIGTERM, and the server would wait for
        it), then SIGTERM the server and wait ``stop_timeout``; then SIGKILL whatever is left in the group, and any
        descendant that left the group.
        """
        process, self._process = self._process, None
        if process is None:
            return
        self.returncode = None
        atexit.unregister(self.stop)
        pgid = process.pid
        try:
            descendants = psutil.Process(pgid).children(recursive=True)
        except psutil.Error:
            descendants = []
        _signal_group(pgid, signal.SIGCONT)
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.resume()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning("tritonserver pid %d did not stop within %.0f s; killing it", pgid, self.stop_timeout)
        _signal_group(pgid, signal.SIGKILL)
        self.returncode = process.wait()
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(descendants, timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        for region in glob.glob(str(SHM_DIR / f"{self.shm_prefix}*")):  # what killed stubs could not unlink
            with contextlib.suppress(OSError):
                os.unlink(region)
        logger.info("stopped tritonserver pid %d (exit code %s)", pgid, process.returncode)

    # -- queries -------------------------------------------------------------------------------------------------

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server log (stdout and stderr of the server and its stubs)."""
        return _tail(self.log_path, lines) if self.log_path is not None else "(not started)"

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """POST /v2/repository/index: one entry (name, version, state, reason) per model version."""
        return list(self._call("POST", "/v2/repository/index", {"ready": ready_only}, timeout=5.0) or [])

    def _call(self, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        request = urllib.request.Request(
            f"{self.http_url}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **security.admin_headers(self.admin_key)},
            method=method,
        )
        try:
            with _URL_OPENER.open(request, timeout=timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ServerError(f"{method} {path} on {self.http_url}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ServerError(f"{method} {path} on {self.http_url}: {exc}") from exc
        return json.loads(text) if text else None

    def reload_model(self, name: str, timeout: float = 120.0, reap_after_s: float | None = 10.0) -> float:
        """Restarts every instance of ``name`` without downtime (needs ``--model-control-mode=explicit``); returns
        the seconds it took.

        Triton never restarts a stub process that died, and it skips a load whose model and configuration did not
        change (an unchanged override included). So the load passes the model's own configuration as an override,
        with a fresh ``parm_reload`` parameter (a value no backend reads): Triton then builds a new set of instances,
        switches traffic to them once they are ready and retires the old ones, serving requests meanwhile.

        Triton 2.51 never finishes retiring a version one of whose instances died during a request: its surviving
        stub processes stay alive, idle, holding their memory. ``reap_after_s`` seconds after the reload (long after
        any request they still held has drained), those still alive are killed; None leaves them.
        """
        started = time.monotonic()
        retired = {p.pid for p in instance_processes(self.pid, name)}
        config = self._call("GET", f"/v2/models/{name}/config", None, timeout=10.0)
        config.setdefault("parameters", {})[RELOAD_PARAMETER] = {"string_value": str(time.time_ns())}
        body = {"parameters": {"config": json.dumps(config)}}
        self._call("POST", f"/v2/repository/models/{name}/load", body, timeout)
        if retired and reap_after_s is not None:
            reaper = threading.Timer(reap_after_s, self._reap_retired, args=(name, retired))
            reaper.daemon = True
            reaper.start()
        return time.monotonic() - started

    def _reap_retired(self, name: str, retired: set[int]) -> None:
        try:
            lingering = [p for p in instance_processes(self.pid, name) if p.pid in retired]
        except psutil.Error:
            return  # the server is gone
        for process in lingering:
            logger.warning(
                "instance %s (pid %d) of a retired version of %s is still alive after its reload (Triton cannot "
                "finish retiring a version whose instance died mid-request); killing it to free its memory",
                process.name, process.pid, name,
            )  # fmt: skip
            with contextlib.suppress(psutil.Error):
                psutil.Process(process.pid).kill()

    def ready_models(self) -> list[str]:
        """Names of the models that are ready, sorted."""
        return sorted({entry["name"] for entry in self.repository_index() if entry.get("state") == "READY"})


# --------------------------------------------------------------------------------------------------------------------
# CLI helper
# --------------------------------------------------------------------------------------------------------------------


def serve_forever(
    model_repository: str | os.PathLike[str],
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    *,
    host: str = "127.0.0.1",
    log_dir: str | os.PathLike[str] | None = None,
    log_verbose: int = 0,
    startup_timeout: float = 300.0,
    out: TextIO | None = None,
) -> int:
    """Serves ``model_repository`` until SIGINT/SIGTERM or the server's death; returns an exit code for the CLI.

    Prints the endpoints and the ready models to ``out`` (stdout). Returns 0 after a signal, 1 if the server died,
    130 if a signal came before the server was ready; raises ``ServerError`` if it could not start.
    """
    out = out or sys.stdout
    stop_requested = threading.Event()
    ready = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop_requested.set()
        if not ready.is_set():
            raise KeyboardInterrupt  # interrupts start(), which then stops what it started

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM too: its default would orphan the server
            previous[sig] = signal.signal(sig, on_signal)
    server = TritonServer(
        model_repository,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        host=host,
        log_dir=log_dir,
        log_verbose=log_verbose,
        startup_timeout=startup_timeout,
    )
    try:
        try:
            server.start()
        except KeyboardInterrupt:
            print("interrupted before the server was ready", file=sys.stderr)
            return 130
        ready.set()
        print(f"Triton server ready (pid {server.pid}), model repository {server.model_repository}", file=out)
        print(f"  HTTP     {server.http_url}", file=out)
        print(f"  gRPC     {server.grpc_url}", file=out)
        print(f"  metrics  {server.metrics_url}", file=out)
        print(f"  log      {server.log_path}", file=out)
        print(f"  models   {', '.join(server.ready_models()) or '(none)'}", file=out)
        print("Press Ctrl-C to stop.", file=out, flush=True)
        while not stop_requested.wait(0.5):
            if not server.is_alive():
                print(f"the server died; {_diagnosis(server.log_path)}", file=sys.stderr)  # type: ignore[arg-type]
                return 1
        print("stopping...", file=out, flush=True)
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

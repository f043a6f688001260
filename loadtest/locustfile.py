"""Locust users for any Triton model, over HTTP and gRPC, with inputs drawn from a real data set.

Run it against any Triton endpoint (here the coded endpoint of the committed repository)::

    locust -f loadtest/locustfile.py --headless -u 8 -r 8 -t 30s --host http://127.0.0.1:8000 \\
        --triton-model digits_coded --triton-protocol both

or ``parm loadtest`` (the same, headless, with a summary and a hard stop as a safety net). Options (besides
Locust's own): ``--triton-model``, ``--triton-protocol`` (http, grpc or both), ``--triton-grpc-url`` (default: the
``--host`` host on port 8001), ``--triton-batch``, ``--triton-data`` (a ``.npy``/``.npz`` file of queries; default:
the digits test split when the model takes digits, else random data of the model's input shape),
``--triton-timeout`` and ``--triton-wait`` (seconds between a user's requests).

Each user reads the model's metadata first and builds its inputs from it (name, datatype, shape). Each request fires
one Locust request event, named after the model; an answer the coded endpoint rebuilt (its ``parm_reconstructed``
output is true) is reported under ``<model> [rebuilt]``, so Locust's table shows rebuilt answers apart.

gRPC and gevent: Locust runs every user as a greenlet on one thread, and tritonclient.grpc's blocking calls would
block them all (grpc's C core does not yield to gevent). ``grpc.experimental.gevent.init_gevent()`` makes it yield,
but left Locust hanging at exit. Here each blocking gRPC call runs on a native thread of a gevent thread pool
instead: the greenlet waits cooperatively, other users keep running, and nothing of grpc touches the gevent hub, so
the process exits on its own once each user has closed its client. The latency of a gRPC request is timed on that
thread around the call itself (so it excludes the hand-off between greenlet and thread, some tens of
microseconds); an HTTP request is timed in its greenlet, around the call.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import gevent
import gevent.threadpool
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from locust import User, events, task
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

logger = logging.getLogger(__name__)

RECONSTRUCTED_OUTPUT = "parm_reconstructed"
"""The coded endpoint's flag output (``parm.backend.orchestrator.contract``), spelled here so that this file runs
with Locust alone, outside the project."""
REBUILT_SUFFIX = " [rebuilt]"
DEFAULT_GRPC_PORT = 8001


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("Triton")
    group.add_argument("--triton-model", default="digits_coded", help="model to call (default digits_coded)")
    group.add_argument(
        "--triton-protocol", choices=("http", "grpc", "both"), default="both", help="which users run (default both)"
    )
    group.add_argument("--triton-grpc-url", default="", help="gRPC host:port (default: --host's host, port 8001)")
    group.add_argument("--triton-batch", type=int, default=1, help="queries per request (default 1)")
    group.add_argument("--triton-data", default="", help=".npy or .npz (array x) of queries (default: digits)")
    group.add_argument("--triton-timeout", type=float, default=10.0, help="client timeout per request, seconds")
    group.add_argument("--triton-wait", type=float, default=0.0, help="pause between a user's requests, seconds")


@events.init.add_listener
def _choose_users(environment: Any, **_: Any) -> None:
    """``--triton-protocol`` picks the user classes (Locust's own class selection still works on top)."""
    protocol = getattr(environment.parsed_options, "triton_protocol", "both")
    if protocol != "both":
        wanted = TritonHttpUser if protocol == "http" else TritonGrpcUser
        chosen = [cls for cls in environment.user_classes if cls is wanted]
        if chosen:
            environment.user_classes = chosen


class ModelInputs:
    """The model's single input as its metadata describes it, and the queries to send."""

    def __init__(self, name: str, datatype: str, shape: list[int], queries: np.ndarray, batch: int) -> None:
        self.name = name
        self.datatype = datatype
        self.shape = shape
        self.queries = queries
        self.batch = batch
        self._rng = np.random.default_rng()

    def draw(self) -> np.ndarray:
        rows = self._rng.integers(0, len(self.queries), size=self.batch)
        return np.ascontiguousarray(self.queries[rows])


_inputs_lock = threading.Lock()
_inputs_cache: dict[tuple[str, str], ModelInputs] = {}


def model_inputs(metadata: dict[str, Any], data: str, batch: int) -> ModelInputs:
    """Inputs for a model from its metadata (JSON form): real queries when they fit, else random ones."""
    model = metadata.get("name", "?")
    key = (model, data)
    with _inputs_lock:
        if key in _inputs_cache:
            return _inputs_cache[key]
    inputs = metadata.get("inputs", [])
    if len(inputs) != 1:
        raise ValueError(f"model '{model}' has {len(inputs)} inputs; these users send one input")
    spec = inputs[0]
    name, datatype = spec["name"], spec["datatype"]
    shape = [int(d) for d in spec["shape"]]
    row_shape = tuple(1 if d < 0 else d for d in shape[1:])  # the first dim is the batch (-1)
    dtype = triton_to_np_dtype(datatype)
    queries = _load_queries(data, row_shape)
    if queries is None:
        logger.warning("model '%s': no data set fits input %s %s; sending random queries", model, name, shape)
        queries = np.random.default_rng(0).random((256, *row_shape))
    with _inputs_lock:
        return _inputs_cache.setdefault(key, ModelInputs(name, datatype, shape, queries.astype(dtype), batch))


def _load_queries(data: str, row_shape: tuple[int, ...]) -> np.ndarray | None:
    if data:
        path = Path(data)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                queries = archive["x"]
        else:
            queries = np.load(path, allow_pickle=False)
        if tuple(queries.shape[1:]) != row_shape:
            raise ValueError(f"{path}: queries of shape {queries.shape[1:]}, the model takes {row_shape}")
        return queries
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return None
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    if images.shape[1:] == row_shape:
        return images[-360:]  # the last fifth, in the spirit of a held-out split
    flat = images.reshape(len(images), -1)
    return flat[-360:] if flat.shape[1:] == row_shape else None


class _TritonUser(User):
    """What both users share: options, inputs, and firing one request event per call."""

    abstract = True
    protocol = ""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.model = options.triton_model if options else "digits_coded"
        self.timeout = options.triton_timeout if options else 10.0
        self.pause = options.triton_wait if options else 0.0
        self.data = options.triton_data if options else ""
        self.batch = options.triton_batch if options else 1
        self.output_names: list[str] = []

    def wait_time(self) -> float:
        return self.pause

    def _learn(self, metadata: dict[str, Any]) -> None:
        self.inputs = model_inputs(metadata, self.data, self.batch)
        self.output_names = [o["name"] for o in metadata.get("outputs", [])]
        self.flagged = RECONSTRUCTED_OUTPUT in self.output_names

    def _outcome(self, result: Any) -> tuple[int, bool]:
        """(bytes of the outputs, whether the answer was rebuilt)."""
        arrays = [result.as_numpy(name) for name in self.output_names]
        length = sum(a.nbytes for a in arrays if a is not None)
        flag = result.as_numpy(RECONSTRUCTED_OUTPUT) if self.flagged else None
        return length, bool(flag is not None and flag.any())

    def _fire(self, started: float, elapsed_s: float, length: int, rebuilt: bool, error: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type=self.protocol,
            name=self.model + (REBUILT_SUFFIX if rebuilt else ""),
            response_time=1000 * elapsed_s,
            response_length=length,
            exception=error,
            context={"started": started},
        )


class TritonHttpUser(_TritonUser):
    """Calls the model with ``tritonclient.http`` (geventhttpclient: gevent-native); one client per user."""

    protocol = "http"

    def on_start(self) -> None:
        super().on_start()
        self.client = httpclient.InferenceServerClient(urlparse(self.host or "http://127.0.0.1:8000").netloc)
        self._learn(self.client.get_model_metadata(self.model))

    def on_stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    @task
    def infer(self) -> None:
        x = self.inputs.draw()
        tensor = httpclient.InferInput(self.inputs.name, list(x.shape), self.inputs.datatype)
        tensor.set_data_from_numpy(x)
        started = time.time()
        start = time.perf_counter()
        try:
            result = self.client.infer(self.model, [tensor], timeout=int(self.timeout * 1e6))
        except InferenceServerException as error:
            self._fire(started, time.perf_counter() - start, 0, False, error)
            return
        elapsed = time.perf_counter() - start
        self._fire(started, elapsed, *self._outcome(result), None)


_pool_lock = threading.Lock()
_pool: gevent.threadpool.ThreadPool | None = None


def _grpc_pool(users: int) -> gevent.threadpool.ThreadPool:
    """The native threads that run blocking gRPC calls: at least one per gRPC user, so none waits for another."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = gevent.threadpool.ThreadPool(max(4, users))
        elif _pool.maxsize < users:
            _pool.maxsize = users
        return _pool


class TritonGrpcUser(_TritonUser):
    """Calls the model with ``tritonclient.grpc``; each blocking call runs on a native thread (see the module
    docstring), so gRPC users run concurrently under gevent and the process exits cleanly."""

    protocol = "grpc"
    _users = 0

    def on_start(self) -> None:
        super().on_start()
        options = self.environment.parsed_options
        url = options.triton_grpc_url if options and options.triton_grpc_url else ""
        if not url:
            host = urlparse(self.host or "http://127.0.0.1:8000").hostname or "127.0.0.1"
            url = f"{host}:{DEFAULT_GRPC_PORT}"
        TritonGrpcUser._users += 1
        self.pool = _grpc_pool(TritonGrpcUser._users)
        self.client = self.pool.apply(grpcclient.InferenceServerClient, (url,))
        metadata = self.pool.apply(
            self.client.get_model_metadata, (self.model,), {"as_json": True, "client_timeout": self.timeout}
        )
        self._learn(metadata)

    def on_stop(self) -> None:
        TritonGrpcUser._users -= 1
        client = getattr(self, "client", None)
        if client is not None:
            self.pool.apply(client.close)

    def _call(self, x: np.ndarray) -> tuple[float, Any, Exception | None]:
        """Runs on a pool thread: the blocking call, timed around itself."""
        tensor = grpcclient.InferInput(self.inputs.name, list(x.shape), self.inputs.datatype)
        tensor.set_data_from_numpy(x)
        start = time.perf_counter()
        try:
            result = self.client.infer(self.model, [tensor], client_timeout=self.timeout)
        except InferenceServerException as error:
            return time.perf_counter() - start, None, error
        return time.perf_counter() - start, result, None

    @task
    def infer(self) -> None:
        x = self.inputs.draw()
        started = time.time()
        elapsed, result, error = self.pool.apply(self._call, (x,))
        if error is not None:
            self._fire(started, elapsed, 0, False, error)
            return
        self._fire(started, elapsed, *self._outcome(result), None)


@events.quitting.add_listener
def _close_pool(environment: Any, **_: Any) -> None:
    """Stops the pool's threads so that nothing outlives Locust."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.kill()
            _pool = None


__all__ = ["TritonGrpcUser", "TritonHttpUser"]

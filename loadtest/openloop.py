"""An open-loop load generator on tritonclient's asyncio gRPC client: requests leave at Poisson arrival times.

Open loop means the schedule never waits for answers: request i is sent at its arrival time whatever happened to
requests before it, so a slow answer cannot hold back the requests behind it (no coordinated omission). Latency is
measured from the *scheduled* send time, so even a generator that falls behind its schedule cannot hide a stall; how
far it fell behind is recorded too (``RequestRecord.sent``), and so are the generator's own garbage-collection pauses
(``RunResult.gc_pauses``), the one thing in this process that stops its event loop for long.

The generator shares its process with the benchmark's other work (torch, onnxruntime, the records of earlier cells:
a few hundred thousand objects), so one full collection of Python's cyclic garbage collector stops the loop for 100
to 250 ms on a small CPU, and its sends fall behind schedule for that long. ``run_open_loop`` therefore collects and
*freezes* everything that exists before a run (``gc.freeze``): collections during the run only look at the objects
the run itself made, and take well under a millisecond.

The generator also shares the machine's CPUs with the server it loads. A Poisson burst can keep every CPU busy for
tens of milliseconds, and a generator that waits its turn sends late (measured: 25-56 ms behind schedule at 100
requests/s on 2 cores, in every scheme, with the CPUs 50-65% busy on average). Where the system allows it (root, or
CAP_SYS_NICE), the thread that sends runs at a raised priority (``GENERATOR_NICE``) for the run, so it is scheduled
as soon as a send is due; it uses the same CPU either way.

Each request's outcome is recorded: latency, error, whether the answer was rebuilt (the coded endpoint's
``parm_reconstructed`` output) and which class it predicts. ``hedge_delay_s`` turns a plain call into a hedged one:
if no successful answer has come after the delay, a backup copy is sent to the same model, and the first successful
answer wins; both copies are counted, and the losing copy is awaited (not cancelled, since the server does the work
anyway) before the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from parm.backend.orchestrator.contract import RECONSTRUCTED_OUTPUT
from parm.errors import ConfigError


def poisson_arrivals(rate: float, duration_s: float, seed: int) -> np.ndarray:
    """Send times (seconds from the start, increasing) of a Poisson process of ``rate`` per second over the run."""
    if rate <= 0 or duration_s <= 0:
        raise ConfigError(f"rate and duration must be > 0, got {rate}, {duration_s}")
    rng = np.random.default_rng(seed)
    expected = rate * duration_s
    gaps = rng.exponential(1.0 / rate, size=int(expected + 10 * np.sqrt(expected) + 10))
    times = np.cumsum(gaps)
    while times[-1] < duration_s:  # astronomically rare: draw more
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / rate, size=len(times)))])
    return times[times < duration_s]


@dataclass
class RequestRecord:
    """One request of the schedule. Times are seconds from the run's start (``RunResult.started_wall``)."""

    index: int
    query: int
    scheduled: float
    sent: float = float("nan")
    latency: float = float("nan")
    """From ``scheduled`` to the first successful answer (to the error, for a failed request)."""
    ok: bool = False
    rebuilt: bool = False
    copies: int = 0
    """Requests actually sent: 1, or 2 when a hedged backup went out."""
    answers: int = 0
    """Answers received, successful or not, over all copies (every copy gets exactly one)."""
    backup_won: bool = False
    prediction: int = -1
    error: str | None = None


@dataclass(frozen=True)
class GcPause:
    """One collection of Python's garbage collector in the generator's process, during a run."""

    at_s: float
    """Start, seconds from the run's start."""
    duration_s: float
    generation: int


class _GcWatch:
    """Times the collections that happen while it is installed (``gc.callbacks``): each stops the event loop."""

    def __init__(self) -> None:
        self._started: float | None = None
        self._pauses: list[tuple[float, float, int]] = []

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._started = now
        elif self._started is not None:
            self._pauses.append((self._started, now - self._started, info["generation"]))
            self._started = None

    def since(self, t0: float) -> list[GcPause]:
        """The pauses recorded so far, timed from ``t0`` (``time.monotonic``, the event loop's clock)."""
        return [GcPause(start - t0, duration, generation) for start, duration, generation in self._pauses]


@contextlib.contextmanager
def generator_gc(freeze: bool) -> Iterator[_GcWatch]:
    """Records the collections of a run; with ``freeze``, first collects and freezes every object that already
    exists, so that collections during the run skip them (see the module docstring)."""
    if freeze:
        gc.collect()
        gc.freeze()
    watch = _GcWatch()
    gc.callbacks.append(watch)
    try:
        yield watch
    finally:
        gc.callbacks.remove(watch)
        if freeze:
            gc.unfreeze()


GENERATOR_NICE = -10
"""The sending thread's nice value during a run, where it may be raised (see the module docstring)."""


@contextlib.contextmanager
def generator_priority() -> Iterator[bool]:
    """Raises the calling thread's scheduling priority for the run (Linux nice values are per thread); yields
    whether it could. The thread's own value is restored afterwards, so processes it starts later (a server
    restart) do not inherit it."""
    thread = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, GENERATOR_NICE)
    except (OSError, AttributeError):
        yield False
        return
    try:
        yield True
    finally:
        os.setpriority(os.PRIO_PROCESS, thread, before)


@dataclass
class RunResult:
    """Every request of one open-loop run, and what the generator itself did."""

    model: str
    rate: float
    duration_s: float
    started_wall: float
    records: list[RequestRecord]
    hedge_delay_s: float | None = None
    max_send_lag_s: float = 0.0
    wall_s: float = 0.0
    unfinished: int = 0
    """Requests still unanswered when the drain timeout ran out (they count as errors)."""
    gc_pauses: list[GcPause] = field(default_factory=list)
    """The generator's garbage collections during the run."""
    notes: list[str] = field(default_factory=list)

    @property
    def latencies(self) -> np.ndarray:
        return np.array([r.latency for r in self.records if r.ok])


def _short(error: BaseException) -> str:
    if isinstance(error, InferenceServerException):
        text = error.message() or str(error)
        status = error.status()
        text = f"{status}: {text}" if status else text
    elif isinstance(error, asyncio.TimeoutError):
        text = "client timeout"
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(text.split())[:300]


class OpenLoopClient:
    """Sends queries to one model over gRPC (asyncio) and turns responses into ``RequestRecord`` fields."""

    def __init__(
        self,
        url: str,
        model: str,
        input_name: str,
        output_name: str,
        *,
        flag_output: bool,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.model = model
        self.input_name = input_name
        self.output_name = output_name
        self.flag_output = flag_output
        self.timeout_s = timeout_s
        self._client: grpcaio.InferenceServerClient | None = None
        names = [output_name, RECONSTRUCTED_OUTPUT] if flag_output else [output_name]
        self._outputs = [InferRequestedOutput(name) for name in names]

    async def __aenter__(self) -> OpenLoopClient:
        self._client = grpcaio.InferenceServerClient(self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def infer(self, x: np.ndarray) -> tuple[bool, int]:
        """One call: (rebuilt, predicted class). Raises what tritonclient raises on an error or timeout."""
        assert self._client is not None, "use OpenLoopClient as an async context manager"
        tensor = InferInput(self.input_name, list(x.shape), np_to_triton_dtype(x.dtype))
        tensor.set_data_from_numpy(x)
        result = await self._client.infer(self.model, [tensor], outputs=self._outputs, client_timeout=self.timeout_s)
        output = result.as_numpy(self.output_name)
        rebuilt = bool(result.as_numpy(RECONSTRUCTED_OUTPUT).any()) if self.flag_output else False
        return rebuilt, int(np.argmax(output[0])) if output is not None and output.size else -1


async def _one(
    client: OpenLoopClient, record: RequestRecord, x: np.ndarray, t0: float, hedge_delay_s: float | None
) -> list[asyncio.Task]:
    """Runs one scheduled request (and its hedge); returns copies still running after the winner answered."""
    loop = asyncio.get_running_loop()
    record.sent = loop.time() - t0

    async def attempt() -> tuple[bool, int]:
        try:
            result = await client.infer(x)
        except Exception:
            record.answers += 1  # an error is an answer too; a cancelled copy (drain timeout) is not
            raise
        record.answers += 1
        return result

    tasks = [asyncio.create_task(attempt())]
    record.copies = 1
    pending: set[asyncio.Task] = set(tasks)
    hedge_at = None if hedge_delay_s is None else record.scheduled + hedge_delay_s
    errors: list[str] = []
    while pending:
        timeout = None
        if hedge_at is not None and len(tasks) == 1:
            timeout = max(0.0, hedge_at - (loop.time() - t0))
        done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:  # the hedge delay ran out with no successful answer: send the backup copy
            backup = asyncio.create_task(attempt())
            tasks.append(backup)
            pending.add(backup)
            record.copies = 2
            continue
        for task in done:
            error = task.exception()
            if error is None:
                record.ok = True
                record.latency = loop.time() - t0 - record.scheduled
                record.rebuilt, record.prediction = task.result()
                record.backup_won = task is not tasks[0]
                return list(pending)
            errors.append(_short(error))
        if not pending and hedge_at is not None and len(tasks) == 1:
            # The primary failed before the hedge delay: the backup still goes out at the delay, as hedging does.
            await asyncio.sleep(max(0.0, hedge_at - (loop.time() - t0)))
            backup = asyncio.create_task(attempt())
            tasks.append(backup)
            pending.add(backup)
            record.copies = 2
    record.latency = loop.time() - t0 - record.scheduled
    record.error = errors[-1] if errors else "no answer"
    return []


async def run_open_loop(
    client: OpenLoopClient,
    queries: np.ndarray,
    arrivals: Sequence[float],
    *,
    rate: float,
    duration_s: float,
    seed: int = 0,
    hedge_delay_s: float | None = None,
    drain_timeout_s: float = 30.0,
    freeze_gc: bool = True,
) -> RunResult:
    """Sends ``queries`` (one row per request, drawn at random with ``seed``) at the ``arrivals`` times.

    Returns after every request has been answered (or ``drain_timeout_s`` after the last send: the rest count as
    unfinished errors). ``client`` must be entered (``async with``). ``freeze_gc``: see the module docstring.
    """
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(queries), size=len(arrivals))
    records = [RequestRecord(i, int(rows[i]), float(t)) for i, t in enumerate(arrivals)]
    tasks: list[asyncio.Task] = []
    max_lag = 0.0
    with generator_gc(freeze_gc) as watch, generator_priority() as prioritised:
        t0 = loop.time()
        started_wall = time.time()
        for record in records:
            delay = t0 + record.scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            max_lag = max(max_lag, loop.time() - t0 - record.scheduled)
            x = queries[record.query : record.query + 1]
            tasks.append(asyncio.create_task(_one(client, record, x, t0, hedge_delay_s)))
        unfinished = await _drain(tasks, drain_timeout_s)
    for record in records:
        if not record.ok and record.error is None:
            record.error = "unfinished: no answer within the drain timeout"
    return RunResult(
        model=client.model,
        rate=rate,
        duration_s=duration_s,
        started_wall=started_wall,
        records=records,
        hedge_delay_s=hedge_delay_s,
        max_send_lag_s=max_lag,
        wall_s=loop.time() - t0,
        unfinished=unfinished,
        gc_pauses=watch.since(t0),
        notes=[] if prioritised else ["the generator's priority could not be raised: it competes with the server"],
    )


async def _drain(tasks: Sequence[asyncio.Task], timeout_s: float) -> int:
    """Waits for every request (then for losing hedged copies, so each is counted as answered); returns how many
    requests were still unanswered after ``timeout_s`` (they are cancelled)."""
    if not tasks:
        return 0
    _, still = await asyncio.wait(tasks, timeout=timeout_s)
    for task in still:
        task.cancel()
    await asyncio.gather(*still, return_exceptions=True)
    stragglers = [copy for task in tasks if not task.cancelled() and task.exception() is None for copy in task.result()]
    if stragglers:
        _, late = await asyncio.wait(stragglers, timeout=timeout_s)
        for task in late:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*stragglers, return_exceptions=True)
    return len(still)

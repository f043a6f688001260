"""Workers: where F and the parity models run, each one failure domain, with its health and its share of the load.

A *worker* is one Triton server reached over gRPC (a gateway's ``f_workers`` and ``parity_workers``), or, on a
single server, one model of it reached over BLS. Either way the dispatcher asks a ``WorkerPool`` for a worker, never
for a model: the members of one coding group go to distinct workers when there are enough (a stalled server then
delays at most one member of the group, which the code rebuilds), the group's parity to a worker outside its members'
domains, and among the healthy candidates the one with the fewest calls outstanding.

Health is judged from what the worker does, since a stopped server still completes TCP handshakes:

- passively: a call the worker failed (unreachable, deadline exceeded) or an answer far beyond F's usual latency
  ejects it (``WorkerPool.failed``);
- actively: a prober asks every worker whether it is ready, with a short deadline, every ``worker_probe_ms``; two
  failed probes in a row eject a worker, and ``worker_readmit_probes`` good ones in a row readmit it once its
  cooldown is over.

An ejected worker gets no new work for a cooldown that doubles while ejections repeat (a slow server does not flap
in and out) and resets once the worker has served a cooldown's worth without one. A worker without a prober (a
model on the same server) is readmitted on trial once its cooldown is over: its next call decides, as the parity
models' circuit breaker always did.

Plain Python and asyncio; the gRPC client is behind the ``Target`` interface (``remote.py``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import numpy as np

from .config import OrchestratorConfig, check_worker_address
from .errors import OrchestratorError
from .groups import AnswerSource, Tensors

logger = logging.getLogger(__name__)

MAX_DOUBLINGS = 5
"""An ejection lasts at most 2**5 = 32 times the base cooldown."""
PROBE_FAILURES_TO_EJECT = 2
"""Failed readiness probes in a row that eject a worker: one probe may miss its deadline on a busy host."""


class Target(Protocol):
    """A model the orchestrator calls: a Triton model over BLS, a model on a remote worker over gRPC, anything async
    in tests."""

    name: str

    async def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        on_outputs: Callable[[Tensors], None] | None = None,
        timeout: float | None = None,
    ) -> Tensors:
        """Runs the model; raises ``TargetError`` when it answers with an error or not within ``timeout`` seconds
        (None: no deadline of its own).

        ``on_outputs``, when given, is called with the outputs as soon as they are known, on any thread, before
        ``infer`` returns them: a target that waits for its model on a worker thread calls it there.
        """
        ...


class WorkerRole(Enum):
    F = "f"
    PARITY = "parity"


class Health:
    """Whether one worker takes new work: up, or ejected until its cooldown is over and it has proven itself."""

    def __init__(self, cooldown_s: float, readmit_probes: int) -> None:
        self._cooldown_s = cooldown_s
        self._readmit_probes = readmit_probes
        """0: no prober; the worker is readmitted on trial once its cooldown is over."""
        self.ejected = False
        self.down_until = float("-inf")
        self.strikes = 0
        """Ejections in a row: each doubles the cooldown."""
        self.ejections = 0
        self.good_probes = 0
        self.failed_probes = 0
        self._up_since = float("-inf")

    def cooldown(self, strikes: int) -> float:
        return self._cooldown_s * 2 ** min(max(strikes - 1, 0), MAX_DOUBLINGS)

    def available(self, now: float) -> bool:
        """Takes new work: up, or (without a prober) on trial after its cooldown."""
        return not self.ejected or (self._readmit_probes == 0 and now >= self.down_until)

    def eject(self, now: float) -> float | None:
        """Ejects the worker; returns the cooldown it starts, or None when it is already ejected (calls sent before
        may still fail, and must not extend it)."""
        if self.ejected and now < self.down_until:
            return None
        if not self.ejected and now - self._up_since >= self.cooldown(self.strikes):
            self.strikes = 0  # it served a cooldown's worth since its last ejection
        self.strikes += 1
        self.ejections += 1
        cooldown = self.cooldown(self.strikes)
        self.ejected = True
        self.down_until = now + cooldown
        self.good_probes = 0
        return cooldown

    def succeeded(self, now: float) -> None:
        """A call answered: a worker on trial is back."""
        if self.ejected and self._readmit_probes == 0 and now >= self.down_until:
            self._readmit(now)

    def probed(self, ok: bool, now: float) -> str | None:
        """Records a readiness probe; returns "eject" or "readmit" when it changes the worker's state."""
        if not ok:
            self.good_probes = 0
            self.failed_probes += 1
            if not self.ejected and self.failed_probes >= PROBE_FAILURES_TO_EJECT:
                return "eject"
            return None
        self.failed_probes = 0
        if not self.ejected or now < self.down_until:
            return None
        self.good_probes += 1
        if self.good_probes >= self._readmit_probes:
            self._readmit(now)
            return "readmit"
        return None

    def _readmit(self, now: float) -> None:
        self.ejected = False
        self.good_probes = 0
        self._up_since = now


@dataclass(eq=False)
class Worker:
    """One failure domain: the models it serves, how to reach them, and how it is doing."""

    name: str
    """Its address (``host:port``) for a remote worker, the model's name for a model of this server."""
    role: WorkerRole
    targets: Mapping[str, Target]
    """Model name -> how to call it there."""
    health: Health
    probe: Callable[[float], Awaitable[bool]] | None = None
    """Readiness with a deadline in seconds; None for a model of this server."""
    close: Callable[[], Awaitable[None]] | None = None
    outstanding: int = 0
    calls: int = 0
    latencies: list[float] | None = field(default_factory=list)
    """Seconds per answered call since the metrics last drained them; None: not kept (the models of a single server,
    whose latency Triton's own metrics already give)."""
    retired: bool = False
    """No longer named by its DNS record: it gets no new work, and goes once its calls are done."""
    answers: dict[AnswerSource, int] = field(default_factory=lambda: dict.fromkeys(AnswerSource, 0))
    """How the requests whose F call it ran were answered: its own answer, rebuilt around it, or an error."""
    _answers_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_answer(self, source: AnswerSource) -> None:
        """Counts one answer (on whichever thread sent it)."""
        with self._answers_lock:
            self.answers[source] += 1

    def serves(self, model: str | None) -> bool:
        return model is None or model in self.targets

    def available(self, now: float) -> bool:
        return not self.retired and self.health.available(now)

    def target(self, model: str | None = None) -> Target:
        return self.targets[model] if model is not None else next(iter(self.targets.values()))


class WorkerPool:
    """The workers of one role, placement among them, and their health.

    ``ejectable``: whether passive signals eject a worker. Off for the F models of a single server: with one
    failure domain there is nowhere else to send the work, and the code rebuilds around a failed call anyway.
    """

    def __init__(
        self,
        role: WorkerRole,
        workers: Iterable[Worker] = (),
        *,
        ejectable: bool = True,
        cooldown_setting: str = "worker_cooldown_ms",
        factory: Callable[[str], Worker] | None = None,
    ) -> None:
        self.role = role
        self.workers: list[Worker] = list(workers)
        self.ejectable = ejectable
        self._cooldown_setting = cooldown_setting
        self._factory = factory
        self.on_eject: Callable[[Worker], None] | None = None
        """Called on the loop when a worker is ejected: the dispatcher rebuilds the members it still holds."""

    @classmethod
    def local(
        cls, role: WorkerRole, targets: Sequence[Target], cooldown_s: float, *, ejectable: bool, setting: str
    ) -> WorkerPool:
        """One worker per model of this server (BLS), judged only by its calls."""
        workers = [
            Worker(t.name, role, {t.name: t}, Health(cooldown_s, readmit_probes=0), latencies=None) for t in targets
        ]
        return cls(role, workers, ejectable=ejectable, cooldown_setting=setting)

    def pick(
        self, now: float, model: str | None = None, exclude: Iterable[str] = (), *, fallback: bool = True
    ) -> Worker | None:
        """The available worker serving ``model``, outside the ``exclude``d domains when possible, with the fewest
        calls outstanding (ties: the fewest calls, so equal workers take turns). With none available, ``fallback``
        picks among the ejected ones rather than none (an F call then may still answer, and the code rebuilds it
        if not); without it, None."""
        serving = [w for w in self.workers if w.serves(model)]
        up = [w for w in serving if w.available(now)]
        excluded = set(exclude)
        candidates = [w for w in up if w.name not in excluded] or up
        if not candidates and fallback:
            candidates = [w for w in serving if not w.retired] or serving
        if not candidates:
            return None
        return min(candidates, key=lambda w: (w.outstanding, w.calls))

    def unavailable_reason(self, now: float, model: str | None = None) -> str | None:
        """Why no worker serving ``model`` takes work now, or None when one does."""
        serving = [w for w in self.workers if w.serves(model)]
        if any(w.available(now) for w in serving):
            return None
        if not serving:
            return f"no {self.role.value} worker serves {model or 'it'} (none known yet)"
        names = ", ".join(w.name for w in serving)
        setting = self._cooldown_setting
        return f"{names} failed recently; retried after {setting} (ejected {len(serving)} of {len(serving)})"

    def started(self, worker: Worker) -> None:
        worker.outstanding += 1
        worker.calls += 1

    def finished(self, worker: Worker, seconds: float | None, now: float) -> None:
        """A call ended: answered in ``seconds``, or failed (None)."""
        worker.outstanding -= 1
        if seconds is not None:
            if worker.latencies is not None:
                worker.latencies.append(seconds)
            worker.health.succeeded(now)
        if worker.retired and worker.outstanding == 0:
            self._drop(worker)

    def failed(self, worker: Worker, now: float, why: str) -> None:
        """A passive signal against ``worker``: it is ejected (when this pool ejects)."""
        if not self.ejectable:
            return
        cooldown = worker.health.eject(now)
        if cooldown is None:
            return
        logger.warning(
            "%s worker %s ejected for %.1f s (%s): no new work until then, its calls in flight are rebuilt",
            self.role.value, worker.name, cooldown, why,
        )  # fmt: skip
        if self.on_eject is not None:
            self.on_eject(worker)

    async def probe_all(self, now: Callable[[], float], timeout: float) -> None:
        """Probes every worker that has a prober, side by side, and ejects or readmits by the answers."""
        probed = [w for w in self.workers if w.probe is not None and not w.retired]
        results = await asyncio.gather(*(_probe(w, timeout) for w in probed))
        for worker, ok in zip(probed, results, strict=True):
            change = worker.health.probed(ok, now())
            if change == "eject":
                self.failed(worker, now(), f"{PROBE_FAILURES_TO_EJECT} readiness probes in a row failed")
            elif change == "readmit":
                logger.warning("%s worker %s readmitted after good probes", self.role.value, worker.name)

    def set_addresses(self, addresses: Sequence[str]) -> None:
        """The workers are now these ``host:port`` addresses: new ones join, vanished ones retire (they finish
        what they hold, then go)."""
        if self._factory is None:
            raise OrchestratorError("this pool has no worker factory")
        known = {w.name: w for w in self.workers}
        for address in addresses:
            worker = known.get(address)
            if worker is None:
                self.workers.append(self._factory(address))
                logger.warning("%s worker %s joined", self.role.value, address)
            elif worker.retired:
                worker.retired = False
        wanted = set(addresses)
        for worker in list(self.workers):
            if worker.name not in wanted and not worker.retired:
                worker.retired = True
                logger.warning("%s worker %s left its DNS record: it takes no new work", self.role.value, worker.name)
                if worker.outstanding == 0:
                    self._drop(worker)

    def _drop(self, worker: Worker) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        if worker.close is not None:
            task = asyncio.get_running_loop().create_task(worker.close())
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def close(self) -> None:
        """Closes every worker's connection (the gateway's ``finalize``)."""
        closers = [w.close() for w in self.workers if w.close is not None]
        await asyncio.gather(*closers, return_exceptions=True)


def local_pools(
    config: OrchestratorConfig, f_targets: Sequence[Target], parity_targets: Sequence[Target]
) -> tuple[WorkerPool, WorkerPool]:
    """The pools of a single server: each F model and each parity model is one worker. F is never ejected (there is
    nowhere else to go); a parity model that fails is left alone for ``parity_cooldown_ms``, doubling while its
    failures repeat, and tried again after it."""
    if len(parity_targets) != config.r:
        raise ValueError(f"expected {config.r} parity targets, got {len(parity_targets)}")
    f_pool = WorkerPool.local(WorkerRole.F, f_targets, config.worker_cooldown_ms / 1000, ejectable=False, setting="")
    parity_pool = WorkerPool.local(
        WorkerRole.PARITY,
        parity_targets,
        config.parity_cooldown_ms / 1000,
        ejectable=True,
        setting=f"parity_cooldown_ms={config.parity_cooldown_ms:g}",
    )
    return f_pool, parity_pool


_background: set[asyncio.Task] = set()


async def _probe(worker: Worker, timeout: float) -> bool:
    assert worker.probe is not None
    try:
        return bool(await asyncio.wait_for(worker.probe(timeout), timeout))
    except Exception:  # any failure to answer in time is a failed probe
        return False


async def resolve(entries: Sequence[str]) -> list[str]:
    """``host:port`` entries as they are, ``dns:NAME:PORT`` ones as one ``ip:port`` per A record of NAME (a name that
    does not resolve contributes none, and is logged)."""
    loop = asyncio.get_running_loop()
    addresses: list[str] = []
    for entry in entries:
        host, port, dns = check_worker_address(entry)
        if not dns:
            addresses.append(f"{host}:{port}")
            continue
        try:
            infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
        except OSError as error:
            logger.warning("worker name %s does not resolve (%s); keeping no worker from it", host, error)
            continue
        addresses.extend(sorted({f"{info[4][0]}:{port}" for info in infos}))
    return list(dict.fromkeys(addresses))


class WorkerMonitor:
    """Probes every worker of the pools and resolves their ``dns:`` names again, on the loop, until cancelled.

    Addresses are resolved once before the first probe, so a gateway knows its workers before its first request;
    a name that resolves to nothing keeps the workers it had (a DNS hiccup must not empty the pool).
    """

    def __init__(
        self,
        pools: Sequence[tuple[WorkerPool, Sequence[str]]],
        probe_s: float,
        resolve_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._pools = list(pools)
        self._probe_s = probe_s
        self._resolve_s = resolve_s
        self._clock = clock

    async def resolve(self) -> None:
        for pool, entries in self._pools:
            addresses = await resolve(entries)
            if not addresses and pool.workers:
                logger.warning("%s workers %s resolved to nothing; keeping the known ones", pool.role.value, entries)
                continue
            pool.set_addresses(addresses)

    async def run(self) -> None:
        dynamic = any(entry.strip().startswith("dns:") for _, entries in self._pools for entry in entries)
        next_resolve = self._clock() + self._resolve_s
        distinct = list({id(pool): pool for pool, _ in self._pools}.values())
        while True:
            started = self._clock()
            if dynamic and started >= next_resolve:
                await self.resolve()
                next_resolve = started + self._resolve_s
            await asyncio.gather(*(pool.probe_all(self._clock, self._probe_s / 2) for pool in distinct))
            await asyncio.sleep(max(0.0, self._probe_s - (self._clock() - started)))

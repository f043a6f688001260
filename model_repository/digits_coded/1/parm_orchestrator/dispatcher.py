"""The asyncio core of the coded endpoint: coding groups across concurrent requests, deadlines and decoding.

Data flow per request: its query goes to F at once; it joins the open coding group for its shape; a full group
(or one completed with filler queries after ``fill_timeout_ms``) is encoded into r parity queries that go to the
parity model(s); each member is answered with F's output if it comes first, else with the decoder's rebuilt output
once the decode policy allows, else with an error at its deadline. Every member is answered exactly once.

Everything runs on one event loop; ``submit`` must be called on that loop's thread. One step runs elsewhere: an F
target may hand over its outputs from the thread that received them (``on_outputs``), and the member is answered
right there, so F's answer skips two thread hand-offs; the loop settles the bookkeeping when the call returns.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from functools import partial
from typing import Any

import numpy as np

from .budget import ParityBudget
from .config import OrchestratorConfig, ParityPolicy
from .errors import OrchestratorError, TargetError
from .group_code import GroupCode
from .groups import (
    Answer,
    AnswerSource,
    CodingGroup,
    FillerCache,
    GroupState,
    Member,
    ParityReason,
    Slot,
    Tensors,
    decode_allowed,
)
from .latency import LatencyQuantile
from .stats import DispatcherStats
from .tensors import all_finite, group_key
from .workers import Target, Worker, WorkerMonitor, WorkerPool

__all__ = ["CRASH_LOG_MARKERS", "TASK_CRASHED", "CodedDispatcher", "Target"]

logger = logging.getLogger(__name__)

TASK_CRASHED = "orchestrator task crashed"
CRASH_LOG_MARKERS = (TASK_CRASHED, "Exception in callback")
"""What lands in the server's log when something on the orchestrator's loop raised: a crashed task (logged here) or
a callback that raised (logged by asyncio). Requests around it may still have been answered, so tests and the soak
look for these."""

SLOW_FACTOR = 4.0
"""A straggler older than this many times F's latency quantile counts against its worker (``WorkerPool.failed``)."""


class CodedDispatcher:
    """Forms coding groups, fans queries out to targets and answers every request exactly once."""

    def __init__(
        self,
        config: OrchestratorConfig,
        f_workers: WorkerPool,
        parity_workers: WorkerPool,
        code: GroupCode,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """``f_workers`` and ``parity_workers`` may be the same pool (parities on F workers outside the group)."""
        if parity_workers.workers and not all(
            any(worker.serves(model) for worker in parity_workers.workers) for model in config.parity_models
        ):
            raise OrchestratorError(f"no parity worker serves each of {list(config.parity_models)}")
        self._config = config
        self.f_workers = f_workers
        self.parity_workers = parity_workers
        f_workers.on_eject = self._worker_ejected
        self._code = code
        self._loop = loop
        self._open: dict[tuple, CodingGroup] = {}
        self._fillers = FillerCache(config.filler_cache_size)
        self._pending: dict[int, Member] = {}
        self._timers: dict[int, list[asyncio.TimerHandle]] = {}
        self._groups_of: dict[int, CodingGroup] = {}
        self._tasks: set[asyncio.Task] = set()
        self._ids = itertools.count()
        self._closed = False
        self._parity_in_flight = 0
        self._parity_queue: dict[CodingGroup, ParityReason] = {}
        """Groups with a stuck or failed member waiting for a parity slot (``max_parity_in_flight``), oldest first."""
        self._budget = ParityBudget(config.parity_budget, config.parity_burst, loop.time())
        self._budget_retries: set[CodingGroup] = set()
        self._due_checks: set[CodingGroup] = set()
        """Groups with a parity check scheduled for when their first unanswered member turns late."""
        """Groups withheld for want of a budget token, with a check scheduled for when the budget will have one."""
        self._f_latency = LatencyQuantile(config.fill_timeout_quantile) if config.fill_timeout_quantile > 0 else None
        self._decode_wait = LatencyQuantile(config.decode_after_quantile) if config.decode_after_quantile > 0 else None
        self._code_weights = np.array(config.code_weights, dtype=np.float64) if config.code_weights else None
        """A linear code's weights: which arrived parities solve which erased members (``CodingGroup.can_decode``)."""
        self.stats = DispatcherStats()

    @property
    def in_flight(self) -> int:
        """Requests accepted and not yet settled: an answer sent from a worker thread is settled on the loop's next
        turn, so this may trail the answers by a moment."""
        return len(self._pending)

    @property
    def in_flight_groups(self) -> int:
        """Coding groups with at least one member not yet answered."""
        return len({id(group) for group in self._groups_of.values()})

    @property
    def fill_timeout(self) -> float:
        """Seconds a new group waits for members before it is completed with fillers (see ``latency``)."""
        floor = self._config.fill_timeout_ms / 1000
        if self._f_latency is None or self._f_latency.value is None:
            return floor
        return max(floor, self._f_latency.value)

    @property
    def decode_after(self) -> float:
        """Seconds a new member's F gets before a rebuilt answer may replace its own (see ``OrchestratorConfig``)."""
        floor = self._config.decode_after_ms / 1000
        if self._decode_wait is None or self._decode_wait.value is None:
            return floor
        return max(floor, self._decode_wait.value)

    @property
    def open_groups(self) -> int:
        """Groups still forming (waiting for members or for the fill timeout)."""
        return len(self._open)

    def submit(self, inputs: Tensors, reply: Callable[[Answer], None]) -> None:
        """Accepts one validated request; ``reply`` is called exactly once: on the loop thread, or for F's own
        answer on the thread where the F target handed it over (so ``reply`` must be thread-safe)."""
        request_id = next(self._ids)
        member = Member(request_id, inputs, self._loop.time(), reply, self.decode_after)
        member.reply = partial(self._send_answer, member, reply)  # counts the answer, then sends it
        self.stats.requests += 1
        if self._closed:
            self._answer(member, Answer(AnswerSource.ERROR, error="the coded endpoint is shutting down"))
            return
        if len(self._pending) >= self._config.max_in_flight:
            self.stats.shed_requests += 1
            self._answer(
                member,
                Answer(
                    AnswerSource.ERROR,
                    error=f"overloaded: {len(self._pending)} requests in flight (max_in_flight="
                    f"{self._config.max_in_flight}); request shed, retry later",
                ),
            )
            return
        if not self.f_workers.workers:
            self._answer(member, Answer(AnswerSource.ERROR, error="no F worker is known yet (f_workers)"))
            return
        self._pending[request_id] = member
        self._budget.credit()
        timers = [self._loop.call_later(self._config.request_timeout_ms / 1000, self._expire, member)]
        self._timers[request_id] = timers
        now = self._loop.time()
        if not all_finite(inputs):
            self.stats.uncoded_requests += 1
            member.worker = self.f_workers.pick(now)
            self._spawn(self._run_original(None, Slot(0, inputs, member), member.worker))
            return
        group, slot = self._join_group(member)
        member.worker = self.f_workers.pick(now, exclude=group.domains)  # distinct failure domains when possible
        assert member.worker is not None  # with workers known, an F pick always finds one
        group.domains.add(member.worker.name)
        self._spawn(self._run_original(group, slot, member.worker))
        if member.decode_after > 0:
            timers.append(self._loop.call_later(member.decode_after, self._try_decode, group))
        if group.full:
            self.stats.groups_full += 1
            self._close(group)

    def watch(self, monitor: WorkerMonitor) -> None:
        """Runs the workers' health checks on the loop until ``close`` (call on the loop thread)."""
        self._spawn(monitor.run())

    @property
    def workers(self) -> list[Worker]:
        """Every F and parity worker, once each."""
        pools = [self.f_workers] if self.parity_workers is self.f_workers else [self.f_workers, self.parity_workers]
        return [worker for pool in pools for worker in pool.workers]

    async def close(self) -> None:
        """Answers every request still in flight with an error, cancels outstanding work and closes the workers'
        connections; idempotent."""
        self._closed = True
        for member in list(self._pending.values()):
            self._answer(member, Answer(AnswerSource.ERROR, error="the coded endpoint is shutting down"))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.f_workers.close()
        if self.parity_workers is not self.f_workers:
            await self.parity_workers.close()

    def _join_group(self, member: Member) -> tuple[CodingGroup, Slot]:
        key = group_key(member.inputs)
        group = self._open.get(key)
        if group is None:
            group = CodingGroup(key=key, k=self._config.k, r=self._config.r, weights=self._code_weights)
            self._open[key] = group
            self._loop.call_later(self.fill_timeout, self._close, group)
        slot = group.add(member.inputs, member)
        self._groups_of[member.request_id] = group
        return group, slot

    def _close(self, group: CodingGroup) -> None:
        """Closes a group: completes it with fillers if it is not full, then sends its parity now (eager) or when a
        member turns out late (on demand)."""
        if group.closed:
            return
        if self._open.get(group.key) is group:
            del self._open[group.key]
        if len(group.domains) == len(group.members):
            self.stats.groups_spread += 1
        else:
            self.stats.groups_shared += 1
        unanswered = [member for member in group.members if not member.answered]  # F may answer one meanwhile
        if not unanswered:
            group.move(GroupState.UNNEEDED)
            self.stats.groups_unneeded += 1
            return
        if not group.full:
            filler = self._fillers.take(group.slots[0].inputs)
            if filler is None:
                self._go_without_parity(group, "no filler query was known yet")
                return
            self.stats.groups_filled += 1
            while not group.full:
                group.add(filler[0], None, outputs=filler[1])
        if self._config.parity_policy is ParityPolicy.EAGER:
            self._send_parity(group, ParityReason.EAGER)
            return
        group.move(GroupState.PARITY_PENDING)
        if any(slot.failure is not None for slot in group.slots):
            self._send_parity(group, ParityReason.FAILURE)
            return
        if any(member.straggler for member in unanswered):
            self._parity_if_still_needed(group)
        else:
            self._check_when_due(group, unanswered)

    def _check_when_due(self, group: CodingGroup, unanswered: list[Member]) -> None:
        """Checks the group's parity again when its first unanswered member turns late (at once if one is): one
        check per group at a time, however often it is asked for."""
        if group in self._due_checks:
            return
        now = self._loop.time()
        due = min(member.arrival + member.decode_after for member in unanswered)
        if due <= now:
            self._parity_if_still_needed(group)
            return
        self._due_checks.add(group)
        self._loop.call_later(due - now, self._due_check, group)

    def _due_check(self, group: CodingGroup) -> None:
        self._due_checks.discard(group)
        self._parity_if_still_needed(group)

    def _parity_if_still_needed(self, group: CodingGroup) -> None:
        """A deferred parity's due time, or a member of the group overtaken or answered since: sent if an unanswered
        member is a straggler, or late and within the budget while the parity could rebuild every unanswered member,
        else withheld until one of these holds (``budget``); a group whose members all answered cost nothing."""
        if not group.parity_pending or self._closed:
            return
        unanswered = [member for member in group.members if not member.answered]
        if not unanswered:
            group.move(GroupState.UNNEEDED)
            self.stats.groups_unneeded += 1
            return
        now = self._loop.time()
        if any(member.straggler for member in unanswered):
            self._send_parity(group, ParityReason.STRAGGLER)
            return
        late = [member for member in unanswered if member.late(now)]
        if not late:
            self._check_when_due(group, unanswered)  # members arrive apart: the next one's due time
            return
        if self._hedge_late(late):  # F's own answers are on their way: the parity waits for a straggler
            on_time = [member for member in unanswered if not member.late(now)]
            if on_time:
                self._check_when_due(group, on_time)
            return
        # Else the parity could not rebuild them until F answers some; a member's answer tries again. (Sending it
        # while an on-time partner is still in F was measured: it removes the partner's wait at 50 req/s, but at
        # 100 req/s the partner is queued anyway and the early parity only takes CPU from F: README, benchmark.)
        if len(unanswered) <= group.r and self._parity_in_flight < self._config.max_parity_in_flight:
            if self._budget.take(now):
                self._send_parity(group, ParityReason.BUDGET)
                return
            if group not in self._budget_retries:  # one retry per group at a time, however often it is checked
                self._budget_retries.add(group)
                self._loop.call_later(self._budget.seconds_until_token(now), self._retry_budget_parity, group)
        if not group.parity_withheld:
            group.parity_withheld = True
            self.stats.parities_withheld += 1

    def _retry_budget_parity(self, group: CodingGroup) -> None:
        """The budget will have a token now: a group withheld for want of one is checked again."""
        self._budget_retries.discard(group)
        self._parity_if_still_needed(group)

    def _note_overtakes(self, answered: Member) -> None:
        """F answered ``answered``: every older request still waiting for F was overtaken once more. One overtaken
        ``straggler_overtakes`` times is a straggler: known stuck, whatever F's latency quantile says (which a burst
        of slow answers inflates), so its group closes now (with fillers if it is not full), its parity is sent and
        its rebuild allowed. Pending requests are kept in arrival order, so only the older ones are visited."""
        threshold = self._config.straggler_overtakes
        now = self._loop.time()
        usual = self._f_latency.value if self._f_latency is not None else None
        stragglers = []
        slow_workers: dict[Worker, float] = {}
        for member in self._pending.values():
            if member.request_id >= answered.request_id:
                break
            member.overtaken += 1
            if member.overtaken >= threshold and not member.straggler and not member.answered:
                member.straggler = True
                stragglers.append(member.request_id)
                age = now - member.arrival
                if member.worker is not None and usual is not None and age > SLOW_FACTOR * usual:
                    slow_workers[member.worker] = age
        self._handle_stragglers(stragglers)
        for worker, age in slow_workers.items():  # may eject it, which marks its other members stragglers
            usual_ms = 1000 * (usual or 0.0)
            self.f_workers.failed(worker, now, f"an answer overdue by {1000 * age:.0f} ms, F's usual {usual_ms:.0f}")

    def _worker_ejected(self, worker: Worker) -> None:
        """An F worker was ejected: the members it still holds are known stuck, and rebuilt as stragglers are."""
        stuck = []
        for member in self._pending.values():
            if member.worker is worker and not member.answered and not member.straggler:
                member.straggler = True
                stuck.append(member.request_id)
        self._handle_stragglers(stuck)

    def _handle_stragglers(self, request_ids: list[int]) -> None:
        """Members just found stuck: each may be hedged, and its group closes now, its parity is sent, or its
        rebuild starts."""
        for request_id in request_ids:  # what follows may answer members, which changes ``_pending``
            member = self._pending.get(request_id)
            if member is not None and not member.answered:
                self._maybe_hedge(member)
            group = self._groups_of.get(request_id)
            if group is None:
                continue
            if not group.closed:
                self._close(group)
            elif group.parity_pending:
                self._parity_if_still_needed(group)
            else:
                self._try_decode(group)

    def _hedge_late(self, late: list[Member]) -> bool:
        """Hedges every late member while the workers have spare capacity: at low load a second F call answers a
        member stuck on a slow worker at F's own latency, while a straggler is only known after later answers
        overtake it, which at a few requests a second takes longer than F. True when every one has a hedge that has
        not failed."""
        for member in late:
            self._maybe_hedge(member)
        return all(member.hedged and not member.hedge_failed for member in late)

    def _maybe_hedge(self, member: Member) -> None:
        """Sends a late member's query to a second F worker too while the workers have spare capacity
        (``hedge_below_load``): the first of F's answers and the rebuild wins, and a hedge's answer also completes
        the group for its other members' rebuilds."""
        threshold = self._config.hedge_below_load
        if threshold <= 0 or member.hedged:
            return
        now = self._loop.time()
        up = [worker for worker in self.f_workers.workers if worker.available(now)]
        if not up or sum(worker.outstanding for worker in up) / len(up) >= threshold:
            return
        exclude = [member.worker.name] if member.worker is not None else []
        worker = self.f_workers.pick(now, exclude=exclude, fallback=False)
        if worker is None:
            return
        member.hedged = True
        self.stats.hedges += 1
        self._spawn(self._run_hedge(member, worker))

    async def _run_hedge(self, member: Member, worker: Worker) -> None:
        group = self._groups_of.get(member.request_id)
        try:
            outputs, won = await self._call_f(member, worker)
        except TargetError:
            member.hedge_failed = True  # the first call and, within the budget, a rebuild are still racing
            if group is not None:
                self._parity_if_still_needed(group)
            return
        if won:
            self.stats.hedges_won += 1
            self._settle(member)
        if group is not None:
            slot = next(slot for slot in group.slots if slot.member is member)
            if slot.outputs is None and slot.failure is None:
                slot.outputs = outputs
                self._try_decode(group)

    def _send_parity(self, group: CodingGroup, why: ParityReason) -> None:
        """Encodes the group and runs its parity model(s), unless every parity model is in its cooldown. At the
        in-flight bound, a group whose member is stuck or failed waits for a free slot (it is what parity is for);
        an eager one goes without."""
        reason = self._no_parity_reason()
        if reason is None and self._parity_in_flight >= self._config.max_parity_in_flight:
            if why in (ParityReason.STRAGGLER, ParityReason.FAILURE):
                if group not in self._parity_queue:
                    self._parity_queue[group] = why
                return
            reason = f"max_parity_in_flight={self._config.max_parity_in_flight} parity computations already running"
        if reason is not None:
            self._go_without_parity(group, reason)
            return
        group.move(GroupState.PARITY_SENT)
        group.parity_sent_at = self._loop.time()
        self.stats.parities[why] += 1
        real = len(group.members)
        self.stats.group_members_real += real
        self.stats.group_members_filler += group.k - real
        self._parity_in_flight += 1
        self._spawn(self._run_parity(group))

    def _send_queued_parity(self) -> None:
        """A parity slot came free: the oldest queued group still waiting for its parity takes it."""
        while self._parity_queue and self._parity_in_flight < self._config.max_parity_in_flight:
            group, why = next(iter(self._parity_queue.items()))
            del self._parity_queue[group]
            if not group.parity_pending or self._closed:
                continue
            if all(member.answered for member in group.members):
                group.move(GroupState.UNNEEDED)
                self.stats.groups_unneeded += 1
                continue
            self._send_parity(group, why)

    def _go_without_parity(self, group: CodingGroup, reason: str) -> None:
        """The group will have no parity: members whose F already failed get their error now."""
        group.no_parity_reason = reason
        group.move(GroupState.UNPROTECTED)
        self.stats.groups_unprotected += 1
        self._fail_unrecoverable(group)

    def _no_parity_reason(self) -> str | None:
        """Why a group's parity cannot be sent now, or None when it can: a worker takes at least one of the parity
        models (the parities that arrive rebuild what they can, ``CodingGroup.can_decode``)."""
        now = self._loop.time()
        reasons = [self.parity_workers.unavailable_reason(now, model) for model in self._config.parity_models]
        if all(reasons):
            return "; ".join(dict.fromkeys(reason for reason in reasons if reason))
        return None

    async def _call_f(self, member: Member, worker: Worker) -> tuple[Tensors, bool]:
        """Runs F on ``member``'s query on ``worker``, with the request's remaining time as deadline. F's answer goes
        to the member from the thread that received it (unless it has one already); the call is accounted to the
        worker, and a failure that says something about the worker counts against it. Returns the outputs and
        whether they answered the member; raises ``TargetError``."""
        answered = False

        def answer_early(outputs: Tensors) -> None:
            nonlocal answered
            answered = member.answer(Answer(AnswerSource.ORIGINAL, outputs))

        pool = self.f_workers
        pool.started(worker)
        started = self._loop.time()
        answered_in = None
        time_left = member.arrival + self._config.request_timeout_ms / 1000 - started
        try:
            outputs = await worker.target().infer(
                member.inputs, self._config.output_names, on_outputs=answer_early, timeout=time_left
            )
            answered_in = self._loop.time() - started
        except TargetError as error:
            if error.worker_fault:
                pool.failed(worker, self._loop.time(), str(error))
            raise
        finally:
            pool.finished(worker, answered_in, self._loop.time())
        return outputs, answered

    async def _run_original(self, group: CodingGroup | None, slot: Slot, worker: Worker) -> None:
        member = slot.member
        assert member is not None
        try:
            outputs, answered_early = await self._call_f(member, worker)
        except TargetError as error:
            self.stats.original_failures += 1
            slot.failure = str(error)
            reason = "it is not coded" if group is None else group.unrecoverable_reason()
            if reason is not None:
                self._answer(member, Answer(AnswerSource.ERROR, error=f"{error}; no rebuild possible: {reason}"))
            elif group is not None and group.parity_pending:
                self._send_parity(group, ParityReason.FAILURE)  # a failed member is rebuilt at once
            elif group is not None:
                self._try_decode(group)
            return
        slot.outputs = outputs
        latency = self._loop.time() - member.arrival
        for estimate in (self._f_latency, self._decode_wait):
            if estimate is not None:
                estimate.add(latency)
        if member.source is AnswerSource.REBUILT and member.rebuilt is not None:
            self.stats.record_fidelity(member.rebuilt, outputs)
        if answered_early or member.answer(Answer(AnswerSource.ORIGINAL, outputs)):
            self._settle(member)
        self._note_overtakes(member)
        self._fillers.add(slot.inputs, outputs)
        if group is not None and group.parity_pending:
            self._parity_if_still_needed(group)  # a partner answered: a late member may now be worth a parity
        if group is not None:
            self._try_decode(group)

    async def _run_parity(self, group: CodingGroup) -> None:
        """Encodes the group and runs its r parity models side by side; each output may start a decode on arrival."""
        started = time.perf_counter()
        try:
            try:
                parity_queries = await self._code.encode(group)
            except TargetError as error:
                self._parity_failed(group, range(group.r), error)
                return
            self.stats.encode_seconds.append(time.perf_counter() - started)
            now = self._loop.time()
            calls = []
            used = set(group.domains)
            for j, model in enumerate(self._config.parity_models):
                worker = self.parity_workers.pick(now, model, exclude=used, fallback=False)
                if worker is None:
                    self._skip_parity(group, j, self.parity_workers.unavailable_reason(now, model) or "")
                    continue
                used.add(worker.name)  # the r parities of a group on distinct workers too, when possible
                query = {name: q[j] for name, q in parity_queries.items()}
                calls.append(self._run_one_parity(group, j, worker, model, query))
            await asyncio.gather(*calls)
        finally:
            self._parity_in_flight -= 1
            self._send_queued_parity()

    def _skip_parity(self, group: CodingGroup, index: int, reason: str) -> None:
        """No worker takes this parity now: the group notes why, and may still decode from the other parities."""
        group.parity_errors[index] = reason
        self._fail_unrecoverable(group)

    async def _run_one_parity(self, group: CodingGroup, index: int, worker: Worker, model: str, query: Tensors) -> None:
        pool = self.parity_workers
        pool.started(worker)
        started = self._loop.time()
        answered_in = None
        try:
            outputs = await worker.target(model).infer(query, self._config.output_names, timeout=self._time_left(group))
            answered_in = self._loop.time() - started
        except TargetError as error:
            if error.worker_fault:
                pool.failed(worker, self._loop.time(), str(error))
            self._parity_failed(group, [index], error)
            return
        finally:
            pool.finished(worker, answered_in, self._loop.time())
        group.parity_outputs[index] = outputs
        group.parity_arrived_at = self._loop.time()
        self._try_decode(group)

    def _time_left(self, group: CodingGroup) -> float:
        """Seconds until the last deadline of the group's unanswered members: what a parity call may take."""
        deadlines = [m.arrival for m in group.members if not m.answered] or [self._loop.time()]
        return max(deadlines) + self._config.request_timeout_ms / 1000 - self._loop.time()

    def _parity_failed(self, group: CodingGroup, indices: Iterable[int], error: TargetError) -> None:
        """Parities ``indices`` of ``group`` failed (all of them when the encoder did)."""
        self.stats.parity_failures += 1
        for index in indices:
            group.parity_errors[index] = str(error)
        self._fail_unrecoverable(group)

    def _try_decode(self, group: CodingGroup) -> None:
        """Starts a decode when the code can rebuild a missing answer and the policy allows it."""
        if group.decoding or not group.can_decode():
            return
        now = self._loop.time()
        if not any(
            slot.member is not None and not slot.member.answered and decode_allowed(now, slot.member, slot)
            for slot in group.erased()
        ):
            return
        group.move(GroupState.DECODING)
        self._spawn(self._run_decode(group))

    async def _run_decode(self, group: CodingGroup) -> None:
        erased = group.erased()
        started = time.perf_counter()
        try:
            decoded = await self._code.decode(group)
        except TargetError as error:
            self.stats.decode_failures += 1
            logger.warning("decode failed, members wait for F or their deadline: %s", error)
            return
        finally:
            group.move(GroupState.PARITY_SENT)
        self.stats.decode_seconds.append(time.perf_counter() - started)
        now = self._loop.time()
        for slot in erased:
            member = slot.member
            if member is None or member.answered or not decode_allowed(now, member, slot):
                continue
            outputs = {name: decoded[name][slot.index] for name in decoded}
            if self._answer(member, Answer(AnswerSource.REBUILT, outputs)):
                assert group.parity_sent_at is not None and group.parity_arrived_at is not None  # a parity arrived
                self.stats.record_rebuild(member.arrival, group.parity_sent_at, group.parity_arrived_at, now)
        self._try_decode(group)

    def _fail_unrecoverable(self, group: CodingGroup) -> None:
        """Members whose F already failed get their error now, once the group can no longer rebuild them."""
        reason = group.unrecoverable_reason()
        if reason is None:
            return
        for slot in group.slots:
            if slot.member is not None and slot.failure is not None:
                error = f"{slot.failure}; no rebuild possible: {reason}"
                self._answer(slot.member, Answer(AnswerSource.ERROR, error=error))

    def _expire(self, member: Member) -> None:
        if member.answered:
            return
        group = self._groups_of.get(member.request_id)
        reason = group.unrecoverable_reason() if group is not None else "it was not coded"
        detail = f" and could not be rebuilt: {reason}" if reason else " and the code has not rebuilt it yet"
        message = f"no answer within request_timeout_ms={self._config.request_timeout_ms:g}: F did not answer{detail}"
        if self._answer(member, Answer(AnswerSource.ERROR, error=message)):
            self.stats.deadline_misses += 1

    def _answer(self, member: Member, answer: Answer) -> bool:
        """Answers ``member`` from the loop unless it already has its answer (F's may have come from another thread
        since the caller looked); returns whether this was its answer."""
        if not member.answer(answer):
            return False
        self._settle(member)
        return True

    def _settle(self, member: Member) -> None:
        """The loop's bookkeeping once ``member`` was answered (on whichever thread): called once per member."""
        self._pending.pop(member.request_id, None)
        self._groups_of.pop(member.request_id, None)
        for timer in self._timers.pop(member.request_id, []):
            timer.cancel()

    def _send_answer(self, member: Member, reply: Callable[[Answer], None], answer: Answer) -> None:
        """Counts and sends the one answer of a request, on whichever thread won it (per source, and per source for
        the worker its F call went to). A failing reply callback is logged: it must not break the bookkeeping."""
        self.stats.count_answer(answer.source)
        if member.worker is not None:
            member.worker.count_answer(answer.source)
        try:
            reply(answer)
        except Exception:
            logger.exception("sending the answer of request %d failed", member.request_id)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(TASK_CRASHED, exc_info=task.exception())

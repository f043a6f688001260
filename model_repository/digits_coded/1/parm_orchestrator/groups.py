"""Coding groups: which queries are coded together, what has arrived, and when a missing answer can be rebuilt.

Pure bookkeeping with no asyncio and no Triton, so every rule here is unit-testable on its own.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from . import linear
from .errors import OrchestratorError

if TYPE_CHECKING:
    from .workers import Worker

Tensors = dict[str, np.ndarray]


class AnswerSource(Enum):
    """Where a client's answer came from."""

    ORIGINAL = "original"
    REBUILT = "rebuilt"
    ERROR = "error"


class ParityReason(Enum):
    """Why a group's parity was computed."""

    EAGER = "eager"
    """ParM's policy: every group, as soon as it closes."""
    FAILURE = "failure"
    """A member's F call failed."""
    STRAGGLER = "straggler"
    """A late member's F call was overtaken by answers to later requests (``budget``)."""
    BUDGET = "budget"
    """A late member, within the parity budget (``budget``)."""


class GroupState(Enum):
    """Where a coding group is in its life. ``CodingGroup.move`` allows only the transitions of ``_NEXT``."""

    OPEN = "open"
    """Forming: requests with its input shapes join it until it is full or its fill timeout."""
    PARITY_PENDING = "parity_pending"
    """Closed; its parity waits until a member turns out late (``on_demand``) or for a parity slot."""
    PARITY_SENT = "parity_sent"
    """Its parity computation started: its missing answers can be rebuilt."""
    DECODING = "decoding"
    """A decode of its missing answers is running (it goes back to ``PARITY_SENT`` when done)."""
    UNNEEDED = "unneeded"
    """Closed with every member answered in time: no parity was needed."""
    UNPROTECTED = "unprotected"
    """Closed without a parity (``no_parity_reason`` says why): its missing answers cannot be rebuilt."""


_NEXT = {
    GroupState.OPEN: {GroupState.PARITY_PENDING, GroupState.PARITY_SENT, GroupState.UNNEEDED, GroupState.UNPROTECTED},
    GroupState.PARITY_PENDING: {GroupState.PARITY_SENT, GroupState.UNNEEDED, GroupState.UNPROTECTED},
    GroupState.PARITY_SENT: {GroupState.DECODING},
    GroupState.DECODING: {GroupState.PARITY_SENT},
    GroupState.UNNEEDED: set(),
    GroupState.UNPROTECTED: set(),
}


@dataclass(frozen=True)
class Answer:
    """The one answer a request gets: F's outputs, rebuilt outputs (flagged), or an error message."""

    source: AnswerSource
    outputs: Tensors | None = None
    error: str | None = None


@dataclass(eq=False)
class Member:
    """One client request inside the orchestrator; ``answer`` guarantees it is answered exactly once."""

    request_id: int
    inputs: Tensors
    arrival: float
    reply: Callable[[Answer], None]
    """The client's callback: called once, on whichever thread wins ``answer``."""
    decode_after: float = 0.0
    """Seconds F gets to answer before a rebuilt answer may replace its own (unless F fails)."""
    source: AnswerSource | None = None
    rebuilt: Tensors | None = None
    overtaken: int = 0
    """Answers F gave to later requests while this one's call was still out (``budget``)."""
    straggler: bool = False
    """Overtaken often enough, or on a worker that was ejected, to be known stuck (``budget``): its rebuild need not
    wait for ``decode_after``."""
    worker: Worker | None = None
    """Where its F call runs."""
    hedged: bool = False
    """Its query was also sent to a second F worker (``hedge_below_load``)."""
    hedge_failed: bool = False
    """That second call failed: the member's rebuild no longer waits on it."""
    _claim: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def answered(self) -> bool:
        return self.source is not None

    def late(self, now: float) -> bool:
        """F had its ``decode_after`` to answer."""
        return now - self.arrival >= self.decode_after

    def answer(self, answer: Answer) -> bool:
        """Sends ``answer`` unless one was already sent; returns whether it was sent.

        Thread-safe: F's answer is sent from the thread that received it (no hop through the event loop), and may
        race a rebuilt answer, a deadline or a shutdown on the loop; exactly one of them wins.
        """
        with self._claim:
            if self.source is not None:
                return False
            self.source = answer.source
            if answer.source is AnswerSource.REBUILT:
                self.rebuilt = answer.outputs
        self.reply(answer)
        return True


@dataclass(eq=False)
class Slot:
    """One of the k positions of a group: a client's query, or a filler whose F output is already known."""

    index: int
    inputs: Tensors
    member: Member | None
    outputs: Tensors | None = None
    failure: str | None = None

    @property
    def is_filler(self) -> bool:
        return self.member is None


def rebuildable(weights: np.ndarray | None, parities: Sequence[int], erased: Sequence[int]) -> bool:
    """Whether the answers of the ``parities`` determine the ``erased`` members: for a linear code with [r, k]
    ``weights``, their rows span those columns (``linear.solvable``); without weights (a decoder network, by the
    decoder contract), there are at least as many of them. The one rule for the orchestrator, the exported decoders
    and the accuracy report."""
    if weights is None:
        return len(erased) <= len(parities)
    return linear.solvable(weights, parities, erased)


@dataclass(eq=False)
class CodingGroup:
    """k slots coded together into r parity queries."""

    key: tuple
    k: int
    r: int
    weights: np.ndarray | None = None
    """The linear code's [r, k] weights when decoding runs in process: then the parities arrived so far suffice
    whenever they solve the erased slots. None: the decoder model, which rebuilds e erased slots from any e
    parities (the decoder contract, ``contract.py``)."""
    slots: list[Slot] = field(default_factory=list)
    parity_outputs: list[Tensors | None] = field(default_factory=list)
    parity_errors: dict[int, str] = field(default_factory=dict)
    """Failed parity computations: parity index -> error."""
    state: GroupState = GroupState.OPEN
    no_parity_reason: str | None = None
    """Why it went ``UNPROTECTED``."""
    parity_withheld: bool = False
    """While ``PARITY_PENDING``: a member turned out late, but is no known straggler and the parity budget was empty
    (``budget``); counted once per group."""
    domains: set[str] = field(default_factory=set)
    """The workers its members' F calls went to: its parity goes elsewhere when it can."""
    parity_sent_at: float | None = None
    """Loop time its parity computation started (``DispatcherStats.record_rebuild``)."""
    parity_arrived_at: float | None = None
    """Loop time its latest parity output arrived."""

    def __post_init__(self) -> None:
        self.parity_outputs = [None] * self.r

    def move(self, state: GroupState) -> None:
        """Moves to ``state``; an illegal transition is a bug in the orchestrator, and raises."""
        if state not in _NEXT[self.state]:
            raise OrchestratorError(f"coding group: illegal transition {self.state.value} -> {state.value}")
        self.state = state

    @property
    def closed(self) -> bool:
        return self.state is not GroupState.OPEN

    @property
    def parity_pending(self) -> bool:
        return self.state is GroupState.PARITY_PENDING

    @property
    def parity_sent(self) -> bool:
        return self.state in (GroupState.PARITY_SENT, GroupState.DECODING)

    @property
    def decoding(self) -> bool:
        return self.state is GroupState.DECODING

    @property
    def full(self) -> bool:
        return len(self.slots) == self.k

    @property
    def members(self) -> list[Member]:
        return [slot.member for slot in self.slots if slot.member is not None]

    def add(self, inputs: Tensors, member: Member | None, outputs: Tensors | None = None) -> Slot:
        if self.closed or self.full:
            raise RuntimeError("cannot add to a closed or full coding group")
        slot = Slot(index=len(self.slots), inputs=inputs, member=member, outputs=outputs)
        self.slots.append(slot)
        return slot

    def arrived_parities(self) -> list[int]:
        return [j for j, out in enumerate(self.parity_outputs) if out is not None]

    def erased(self) -> list[Slot]:
        """Slots whose F output is not (yet) here: late or failed."""
        return [slot for slot in self.slots if slot.outputs is None]

    def can_decode(self) -> bool:
        """Missing outputs (at most r) can be rebuilt now, from the parity outputs arrived so far."""
        erased = [slot.index for slot in self.erased()]
        if not self.closed or not 1 <= len(erased) <= self.r:
            return False
        return rebuildable(self.weights, self.arrived_parities(), erased)

    def unrecoverable_reason(self) -> str | None:
        """Why this group can never rebuild a missing answer, or None while it still might."""
        if self.state in (GroupState.UNNEEDED, GroupState.UNPROTECTED):
            return f"its coding group was closed without a parity ({self.no_parity_reason})"
        if len(self.parity_errors) == self.r:
            return f"the parity computation failed ({next(iter(self.parity_errors.values()))})"
        failed = [slot.index for slot in self.slots if slot.failure is not None]
        usable = [j for j in range(self.r) if j not in self.parity_errors]
        if not rebuildable(self.weights, usable, failed):
            lost = f", {len(self.parity_errors)} of its {self.r} parities failed" if self.parity_errors else ""
            return f"{len(failed)} members of its coding group failed{lost}, and the code rebuilds at most {self.r}"
        return None


def decode_allowed(now: float, member: Member, slot: Slot) -> bool:
    """The decode policy: rebuild at once when F failed or the member is a known straggler (later requests were
    answered first), else once F had ``member.decode_after`` seconds to answer.

    ``decode_after = 0`` is ParM's policy (use whichever result comes first).
    """
    return slot.failure is not None or member.straggler or member.late(now)


class FillerCache:
    """Recent (query row, F output row) pairs whose F output is known.

    A group that does not fill in time is completed with such rows: their outputs are known, so their terms cancel
    in decoding and the parity still protects the real members. At low load this is what gives every request a
    parity (see DESIGN.md, "Partial groups").
    """

    def __init__(self, size: int) -> None:
        self._rows: deque[tuple[Tensors, Tensors]] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        batch = next(iter(inputs.values())).shape[0]
        for row in range(batch):
            self._rows.append(({n: a[row] for n, a in inputs.items()}, {n: a[row] for n, a in outputs.items()}))

    def take(self, like: Mapping[str, np.ndarray]) -> tuple[Tensors, Tensors] | None:
        """A filler batch shaped like ``like`` (same batch size and row shapes), newest rows first, or None."""
        batch = next(iter(like.values())).shape[0]
        rows = [
            row
            for row in reversed(self._rows)
            if row[0].keys() == like.keys() and all(row[0][n].shape == a.shape[1:] for n, a in like.items())
        ]
        if not rows:
            return None
        chosen = [rows[i % len(rows)] for i in range(batch)]
        inputs = {name: np.stack([row[0][name] for row in chosen]) for name in like}
        outputs = {name: np.stack([row[1][name] for row in chosen]) for name in chosen[0][1]}
        return inputs, outputs

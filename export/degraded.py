"""The parity side of a code, the loss patterns it tolerates, and degraded-mode accuracy: how good the answers
the code rebuilds are, for every such pattern, against F's own answers and the labels (with a paired standard error
of the gap to F)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .code_registry import Decoder, Encoder, availability
from .data import Dataset
from .models import predict


class StackedParity(nn.Module):
    """The parity side of a code as one module: parity query j goes to ``models[j]``; [r, B, *q] -> [r, B, *o].

    For ParM-style codes the models are the r trained parity models; for codes whose parities F answers (learned
    codes, Berrut) every entry is F itself.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not models:
            raise ValueError("a code needs at least one parity model")
        self.models = nn.ModuleList(models)

    def forward(self, parity_queries: torch.Tensor) -> torch.Tensor:
        return torch.stack([model(parity_queries[j]) for j, model in enumerate(self.models)])


def as_parity(parity: nn.Module | Sequence[nn.Module], r: int) -> StackedParity:
    """``parity`` as a ``StackedParity`` of r models: a list of r models, or one model used for every parity."""
    if isinstance(parity, StackedParity):
        stacked = parity
    elif isinstance(parity, nn.Module):
        stacked = StackedParity([parity] * r)
    else:
        stacked = StackedParity(list(parity))
    if len(stacked.models) != r:
        raise ValueError(f"the code has r={r} parities, got {len(stacked.models)} parity models")
    return stacked


def erasure_patterns(k: int, max_erased: int) -> list[tuple[int, ...]]:
    """Every set of 1..max_erased slots of a k-group, smallest sets first."""
    return [
        pattern for count in range(1, min(max_erased, k) + 1) for pattern in itertools.combinations(range(k), count)
    ]


@dataclass(frozen=True)
class LossPattern:
    """Which answers of a group are missing: ``erased`` members (at least one) and ``lost`` parities."""

    erased: tuple[int, ...]
    lost: tuple[int, ...] = ()

    def available(self, k: int, r: int) -> torch.Tensor:
        """The decoder's ``available`` [k + r] input for this pattern."""
        return availability(k, r, self.erased, self.lost)


def tolerated_patterns(decoder: Decoder) -> list[LossPattern]:
    """Every loss pattern the decoder rebuilds (``Decoder.can_rebuild``): 1..r erased members with every parity,
    then with 1..r - 1 parities lost too; fewer missing answers first."""
    k, r = decoder.k, decoder.r
    patterns = []
    for lost_count in range(r):
        for lost in itertools.combinations(range(r), lost_count):
            arrived = [j for j in range(r) if j not in lost]
            patterns += [
                LossPattern(erased, lost)
                for erased in erasure_patterns(k, len(arrived))
                if decoder.can_rebuild(erased, arrived)
            ]
    return patterns


def check_k(k: int, *parts: Encoder | Decoder) -> None:
    for part in parts:
        if part.k != k:
            raise ValueError(f"{type(part).__name__} was built for k={part.k}, training asked for k={k}")


@dataclass(frozen=True)
class ErasureAccuracy:
    """Rebuilt answers with exactly ``erased`` members and ``lost_parities`` parities of each group missing, every
    such pattern the code tolerates in turn."""

    erased: int
    accuracy: float | None
    agreement_with_f: float
    rebuilt: int
    lost_parities: int = 0
    gap_stderr: float | None = None
    """Standard error, in points, of F's accuracy minus ``accuracy`` over the queries (``paired_gap_stderr``);
    None without labels."""


@dataclass(frozen=True)
class DegradedAccuracy:
    """F's accuracy with every answer available, and the accuracy of answers rebuilt by the code.

    The top-level degraded numbers are for one erased member (each slot in turn) with every parity, comparable
    across codes; ``by_erasures`` has one entry per count of erased members and lost parities the code tolerates:
    1..r erased with every parity first, then with parities lost (r > 1). Accuracies against labels are
    ``None`` when the data has no labels; agreement with F's argmax always exists.
    """

    f_accuracy: float | None
    degraded_accuracy: float | None
    degraded_agreement_with_f: float
    erasures: int
    by_erasures: tuple[ErasureAccuracy, ...] = ()

    def summary(self) -> str:
        """One line for a person: F's accuracy, then each loss pattern's rebuilt accuracy and agreement with F."""
        parts = [f"F {_percent(self.f_accuracy)}"]
        for e in self.by_erasures:
            lost = f", {e.lost_parities} parity lost" if e.lost_parities else ""
            parts.append(
                f"{e.erased} rebuilt{lost}: {_percent(e.accuracy)} (agrees with F {_percent(e.agreement_with_f)})"
            )
        return "; ".join(parts)


def _percent(value: float | None) -> str:
    return "n/a (no labels)" if value is None else f"{100 * value:.2f}%"


def degraded_accuracy(
    f_model: nn.Module,
    parity: nn.Module | Sequence[nn.Module],
    data: Dataset,
    k: int,
    encoder: Encoder,
    decoder: Decoder,
    seed: int = 0,
    groupings: int = 4,
) -> DegradedAccuracy:
    """Accuracy of answers rebuilt by the code for every loss pattern it tolerates (``tolerated_patterns``: 1..r
    missing members, and with r > 1 the same with lost parities), one ``ErasureAccuracy`` per (erased, lost) count.

    ``parity`` is the parity side: one model (used for each of the r parities: F itself for learned codes and
    Berrut, or ParM's single parity model), a list of r parity models, or a ``StackedParity``. The queries are
    shuffled into groups of k (the last group topped up with queries from the first); in each group every pattern of
    erased slots is rebuilt in turn from the parity outputs and the other answers, so every query is rebuilt once
    per pattern that erases it and per grouping; ``groupings`` random groupings are averaged.
    """
    check_k(k, encoder, decoder)
    stacked = as_parity(parity, encoder.r)
    x = torch.from_numpy(data.x)
    f_outputs = predict(f_model, x)
    f_argmax = f_outputs.argmax(dim=1)
    labels = None if data.y is None else torch.from_numpy(data.y)
    generator = torch.Generator().manual_seed(seed)
    n, n_groups = len(x), math.ceil(len(x) / k)
    patterns = tolerated_patterns(decoder)
    rebuilt: dict[tuple[int, int], list[torch.Tensor]] = {}
    members: dict[tuple[int, int], list[torch.Tensor]] = {}
    stacked.eval()
    encoder.eval()
    decoder.eval()
    with torch.no_grad():
        for _ in range(groupings):
            order = torch.randperm(n, generator=generator)
            groups = torch.cat([order, order[: n_groups * k - n]]).reshape(n_groups, k)
            parity_queries = _batched(encoder, x[groups].transpose(0, 1), dim=1)  # [r, G, *q]
            parity_outputs = _batched(stacked, parity_queries, dim=1)  # [r, G, *o]
            outputs = f_outputs[groups].transpose(0, 1)  # [k, G, *o]
            for pattern in patterns:
                missing = parity_outputs.clone()
                missing[list(pattern.lost)] = float("nan")  # a lost parity's answer must not be read
                decoded = decoder(missing, outputs, pattern.available(k, encoder.r))
                count = (len(pattern.erased), len(pattern.lost))
                for slot in pattern.erased:
                    real = torch.arange(n_groups) * k + slot < n  # skip the top-up copies
                    rebuilt.setdefault(count, []).append(decoded[slot][real].argmax(dim=1))
                    members.setdefault(count, []).append(groups[real, slot])
    by_erasures = []
    for count in sorted(rebuilt, key=lambda c: (c[1], c[0])):
        predicted, index = torch.cat(rebuilt[count]), torch.cat(members[count])
        by_erasures.append(
            ErasureAccuracy(
                erased=count[0],
                lost_parities=count[1],
                accuracy=None if labels is None else float((predicted == labels[index]).float().mean()),
                agreement_with_f=float((predicted == f_argmax[index]).float().mean()),
                rebuilt=len(index),
                gap_stderr=None
                if labels is None
                else paired_gap_stderr(f_argmax == labels, predicted == labels[index], index),
            )
        )
    single = by_erasures[0]
    return DegradedAccuracy(
        f_accuracy=None if labels is None else float((f_argmax == labels).float().mean()),
        degraded_accuracy=single.accuracy,
        degraded_agreement_with_f=single.agreement_with_f,
        erasures=single.rebuilt,
        by_erasures=tuple(by_erasures),
    )


def paired_gap_stderr(f_correct: torch.Tensor, correct: torch.Tensor, index: torch.Tensor | None = None) -> float:
    """Standard error, in points, of a mean accuracy gap paired per query: F's correctness on each query
    (``f_correct`` [n]) minus the share of correct answers given in F's place for it (``correct``, one entry per
    answer, for query ``index``; default: one answer per query). A test split of a few hundred queries puts this
    near a point: differences smaller than about twice it are noise."""
    index = torch.arange(len(f_correct)) if index is None else index
    n = len(f_correct)
    hits = torch.zeros(n, dtype=torch.float64).index_add_(0, index, correct.to(torch.float64))
    counts = torch.zeros(n, dtype=torch.float64).index_add_(0, index, torch.ones(len(index), dtype=torch.float64))
    seen = counts > 0
    difference = f_correct[seen].to(torch.float64) - hits[seen] / counts[seen]
    if int(seen.sum()) < 2:
        return float("nan")
    return float(100 * difference.std() / math.sqrt(int(seen.sum())))


def _batched(module: nn.Module, stacked: torch.Tensor, dim: int, batch_size: int = 1024) -> torch.Tensor:
    """``module`` applied to slices of ``stacked`` along its batch axis ``dim`` (bounded memory), concatenated."""
    return torch.cat(
        [
            module(stacked.narrow(dim, i, min(batch_size, stacked.shape[dim] - i)))
            for i in range(0, stacked.shape[dim], batch_size)
        ],
        dim=dim,
    )

"""Training loops for F and for ParM parity models, and the degraded-mode accuracy that judges a parity model.

A parity model Fp learns Fp(encoder(X1..Xk)) ~ F(X1) + ... + F(Xk) from queries and F's own outputs, no labels; it
is judged by what serving uses it for: an erased answer rebuilt by the decoder from Fp's output and the k-1 answers
that arrived, compared with F's own answer (and with labels, where the data has them).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .codes import Decoder, Encoder
from .data import Dataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``groups_per_epoch`` (parity training only) is how many random k-groups an epoch draws;
    ``None`` means as many as there are training queries. ``max_steps`` caps optimizer steps (smoke runs)."""

    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    weight_decay: float = 0.0
    groups_per_epoch: int | None = None
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if self.groups_per_epoch is not None and self.groups_per_epoch < 1:
            raise ValueError(f"groups_per_epoch must be >= 1 or None, got {self.groups_per_epoch}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    loss: float
    val_metric: float


@dataclass(frozen=True)
class TrainResult:
    """What a run did; the model passed in now holds the weights of ``best_epoch``."""

    best_epoch: int
    best_val_metric: float
    steps: int
    history: list[EpochLog]


@dataclass(frozen=True)
class DegradedAccuracy:
    """F's accuracy with every answer available, and the accuracy of answers rebuilt with one slot erased.

    Accuracies against labels are ``None`` when the data has no labels; agreement with F's argmax always exists.
    """

    f_accuracy: float | None
    degraded_accuracy: float | None
    degraded_agreement_with_f: float
    erasures: int


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    total = cfg.epochs * steps_per_epoch
    return total if cfg.max_steps is None else min(total, cfg.max_steps)


def _optimizer(
    model: nn.Module, cfg: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam with a cosine decay to zero over the run: the late small steps settle the regression of parity models."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))


def _require_labels(data: Dataset, what: str) -> np.ndarray:
    if data.y is None:
        raise ValueError(f"{what} needs labels, and the {what} data has none")
    return data.y


def accuracy(model: nn.Module, data: Dataset) -> float:
    """Top-1 accuracy of ``model`` on labelled ``data``."""
    labels = torch.from_numpy(_require_labels(data, "accuracy"))
    predicted = _predict(model, torch.from_numpy(data.x)).argmax(dim=1)
    return float((predicted == labels).float().mean())


def train_classifier(model: nn.Module, train: Dataset, val: Dataset, cfg: TrainConfig) -> TrainResult:
    """Fit F with cross-entropy and Adam; keep the epoch with the best validation accuracy."""
    x, y = torch.from_numpy(train.x), torch.from_numpy(_require_labels(train, "train_classifier"))
    _require_labels(val, "train_classifier validation")
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = _total_steps(cfg, steps_per_epoch)
    optimizer, scheduler = _optimizer(model, cfg, total)
    generator = torch.Generator().manual_seed(cfg.seed)
    best_state, best_epoch, best_metric, steps, history = None, 0, -math.inf, 0, []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # dropout masks
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            order, losses = torch.randperm(len(x), generator=generator), []
            for start in range(0, len(x), cfg.batch_size):
                if steps >= total:
                    break
                batch = order[start : start + cfg.batch_size]
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                steps += 1
            metric = accuracy(model, val)
            history.append(EpochLog(epoch, float(np.mean(losses)), metric))
            logger.info("F epoch %d/%d: loss %.4f, val accuracy %.4f", epoch, cfg.epochs, history[-1].loss, metric)
            if metric > best_metric:
                best_state, best_epoch, best_metric = copy.deepcopy(model.state_dict()), epoch, metric
            if steps >= total:
                break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(best_epoch, best_metric, steps, history)


def _check_k(k: int, *parts: Encoder | Decoder) -> None:
    for part in parts:
        if part.k != k:
            raise ValueError(f"{type(part).__name__} was built for k={part.k}, training asked for k={k}")


def _random_groups(n: int, groups: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``groups`` rows of k query indices, drawn from successive permutations so every query is used evenly."""
    needed = groups * k
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(needed / n))])
    return order[:needed].reshape(groups, k)


def train_parity(
    parity_model: nn.Module,
    f_model: nn.Module,
    train: Dataset,
    val: Dataset,
    cfg: TrainConfig,
    k: int,
    encoder: Encoder,
    decoder: Decoder,
) -> TrainResult:
    """ParM training: Fp(encoder(X1..Xk)) regresses onto F(X1) + ... + F(Xk) with MSE, F frozen, labels unused.

    Keeps the epoch whose rebuilt answers on ``val`` (one slot erased in turn, decoded by ``decoder``) agree most
    with F's own answers; that needs no labels either.
    """
    _check_k(k, encoder, decoder)
    x = torch.from_numpy(train.x)
    f_outputs = _predict(f_model, x)  # F is frozen and deterministic in eval mode: compute its answers once
    groups_per_epoch = cfg.groups_per_epoch or len(x)
    steps_per_epoch = math.ceil(groups_per_epoch / cfg.batch_size)
    total = _total_steps(cfg, steps_per_epoch)
    optimizer, scheduler = _optimizer(parity_model, cfg, total)
    generator = torch.Generator().manual_seed(cfg.seed)
    best_state, best_epoch, best_metric, steps, history = None, 0, -math.inf, 0, []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        for epoch in range(1, cfg.epochs + 1):
            parity_model.train()
            groups, losses = _random_groups(len(x), groups_per_epoch, k, generator), []
            for start in range(0, groups_per_epoch, cfg.batch_size):
                if steps >= total:
                    break
                batch = groups[start : start + cfg.batch_size]  # [b, k]
                parity_queries = encoder(x[batch].transpose(0, 1))  # [k, b, *q] -> [1, b, *q]
                target = f_outputs[batch].sum(dim=1)  # [b, *o]
                loss = nn.functional.mse_loss(parity_model(parity_queries[0]), target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                steps += 1
            report = degraded_accuracy(f_model, parity_model, val, k, encoder, decoder, seed=cfg.seed)
            metric = report.degraded_agreement_with_f
            history.append(EpochLog(epoch, float(np.mean(losses)), metric))
            logger.info(
                "parity epoch %d/%d: loss %.4f, val degraded agreement with F %.4f, with labels %s",
                epoch,
                cfg.epochs,
                history[-1].loss,
                metric,
                "n/a" if report.degraded_accuracy is None else f"{report.degraded_accuracy:.4f}",
            )
            if metric > best_metric:
                best_state, best_epoch, best_metric = copy.deepcopy(parity_model.state_dict()), epoch, metric
            if steps >= total:
                break
    parity_model.load_state_dict(best_state)
    parity_model.eval()
    return TrainResult(best_epoch, best_metric, steps, history)


def degraded_accuracy(
    f_model: nn.Module,
    parity_model: nn.Module,
    data: Dataset,
    k: int,
    encoder: Encoder,
    decoder: Decoder,
    seed: int = 0,
    groupings: int = 4,
) -> DegradedAccuracy:
    """Accuracy of answers rebuilt by the code when one member of a k-group is erased.

    The queries are shuffled into groups of k (the last group topped up with queries from the first), each slot of
    each group is erased in turn and rebuilt from the parity output and the other k-1 answers, so every query is
    rebuilt once per grouping; ``groupings`` random groupings are averaged.
    """
    _check_k(k, encoder, decoder)
    x = torch.from_numpy(data.x)
    f_outputs = _predict(f_model, x)
    f_argmax = f_outputs.argmax(dim=1)
    labels = None if data.y is None else torch.from_numpy(data.y)
    generator = torch.Generator().manual_seed(seed)
    n, n_groups = len(x), math.ceil(len(x) / k)
    rebuilt, members = [], []
    parity_model.eval()
    with torch.no_grad():
        for _ in range(groupings):
            order = torch.randperm(n, generator=generator)
            groups = torch.cat([order, order[: n_groups * k - n]]).reshape(n_groups, k)
            parity_outputs = _predict(parity_model, encoder(x[groups].transpose(0, 1))[0]).unsqueeze(0)
            outputs = f_outputs[groups].transpose(0, 1)  # [k, G, *o]
            for slot in range(k):
                available = torch.ones(k)
                available[slot] = 0.0
                real = torch.arange(n_groups) * k + slot < n  # skip the top-up copies
                rebuilt.append(decoder(parity_outputs, outputs, available)[slot][real].argmax(dim=1))
                members.append(groups[real, slot])
    predicted, index = torch.cat(rebuilt), torch.cat(members)
    return DegradedAccuracy(
        f_accuracy=None if labels is None else float((f_argmax == labels).float().mean()),
        degraded_accuracy=None if labels is None else float((predicted == labels[index]).float().mean()),
        degraded_agreement_with_f=float((predicted == f_argmax[index]).float().mean()),
        erasures=len(index),
    )

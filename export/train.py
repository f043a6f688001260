"""Training loops (F and backup classifiers, ParM parity models, learned codes); each validates a code by its
degraded-mode accuracy (``degraded``).

A parity model Fp learns Fp(encoder(X1..Xk)) ~ F(X1) + ... + F(Xk) (or a weighted sum, for r > 1) from queries and
F's own outputs, no labels; a learned code's encoder and decoder learn end to end through the frozen F. Both are
judged by what serving uses them for: erased answers rebuilt by the decoder from the parity answers and the answers
that arrived, compared with F's own answers (and with labels, where the data has them). All loops share ``_fit``:
one optimizer and schedule, per-epoch progress logs, the best validation epoch kept, resumable checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from parm.errors import ConfigError, DataError
from parm.progress import Progress

from .code_registry import Decoder, Encoder, availability
from .data import Dataset
from .degraded import as_parity, check_k, degraded_accuracy, tolerated_patterns
from .models import predict

logger = logging.getLogger(__name__)

QUICK_STEPS = 5
"""Optimizer steps of a quick (smoke) run, whatever is trained: F, a code, a backup."""


@dataclass(frozen=True)
class Augmentation:
    """Random changes to member queries, drawn afresh for every group of parity training.

    ParM's training set is every k-group of training queries, but each query still appears in thousands of groups:
    on a small dataset (digits: about 1,250 queries) the parity model memorises the queries and fits their sums
    badly on new ones. Moving each member a little (an integer translation of up to ``shift`` pixels, a rotation of
    up to ``rotate`` degrees, a scaling by up to ``scale``, zero padding) and adding Gaussian noise of std
    ``noise`` gives it new queries to learn from; F answers the moved queries on the fly, so the targets stay exact.
    Translation, rotation and scaling need image queries [C, H, W]; noise works for any query.
    """

    shift: int = 0
    rotate: float = 0.0
    scale: float = 0.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        if self.shift < 0 or self.rotate < 0 or not 0 <= self.scale < 1 or self.noise < 0:
            raise ConfigError(f"augmentation needs shift, rotate, noise >= 0 and 0 <= scale < 1, got {self}")

    @property
    def geometric(self) -> bool:
        """True when queries are moved (translated, rotated or scaled), which needs image queries."""
        return bool(self.shift or self.rotate or self.scale)

    def check(self, query_shape: tuple[int, ...]) -> None:
        """Refuses (before any training) to move queries that are not images [C, H, W]."""
        if self.geometric and len(query_shape) != 3:
            raise ConfigError(f"shift, rotate and scale need image queries [C, H, W], got queries {list(query_shape)}")


SCHEDULES = ("cosine", "constant")
LOSSES = ("mse", "kl")
SELECTIONS = ("agreement", "reconstruction")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``groups_per_epoch`` (parity training only) is how many random k-groups an epoch draws;
    ``None`` means one group per k training queries (each query in one group per epoch on average, ParM's epoch).
    ``max_steps`` caps optimizer steps (smoke runs)."""

    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    weight_decay: float = 0.0
    groups_per_epoch: int | None = None
    max_steps: int | None = None
    distill_weight: float = 0.0
    """Parity training only: weight of a distillation term, KL(softmax F(X_e) || softmax decoded_e), on one erased
    slot per minibatch, decoded by the code's own decoder: it trains for what serving uses (the rebuilt answer's
    argmax), where MSE alone treats every logit alike. 0 is ParM's plain MSE."""
    augment: Augmentation | None = None
    """Parity training only: augment member queries (see ``Augmentation``); F's targets are then computed on the
    fly, once per minibatch, instead of once for the training split. ``None`` is ParM's plain training."""
    schedule: str = "cosine"
    """``cosine``: the rate decays to zero over the run; ``constant``: it stays (ParM's published recipe)."""
    loss: str = "mse"
    """Parity training only: ``mse`` on the parity answers (ParM); ``kl``: KL from F's softmax to the parity
    answer's, per answer along the last axis (for parity models that answer each member on its own head, the
    collage; meaningless for a sum of answers)."""
    select_by: str = "agreement"
    """Parity training only: the epoch kept is the one whose rebuilt answers on validation agree most with F's
    (``agreement``), or whose parity answers are nearest their targets (``reconstruction``: ParM's choice)."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise ConfigError(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if self.groups_per_epoch is not None and self.groups_per_epoch < 1:
            raise ConfigError(f"groups_per_epoch must be >= 1 or None, got {self.groups_per_epoch}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.distill_weight < 0:
            raise ConfigError(f"distill_weight must be >= 0, got {self.distill_weight}")
        for name, value, known in (
            ("schedule", self.schedule, SCHEDULES),
            ("loss", self.loss, LOSSES),
            ("select_by", self.select_by, SELECTIONS),
        ):
            if value not in known:
                raise ConfigError(f"{name} must be one of {list(known)}, got {value!r}")

    def quick(self) -> TrainConfig:
        """This training cut to ``QUICK_STEPS`` optimizer steps in one epoch: the one rule of every smoke run (the
        files are complete, the accuracies meaningless)."""
        groups = None if self.groups_per_epoch is None else self.batch_size * QUICK_STEPS
        return dataclasses.replace(self, epochs=1, max_steps=QUICK_STEPS, groups_per_epoch=groups)


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
    seconds: float = 0.0
    """Time spent training, summed over resumed runs (a checkpoint reloaded without training adds nothing)."""


def _total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    total = cfg.epochs * steps_per_epoch
    return total if cfg.max_steps is None else min(total, cfg.max_steps)


def _optimizer(
    model: nn.Module, cfg: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam with a cosine decay to zero over the run (the late small steps settle the regression of parity models),
    or at a constant rate (``cfg.schedule``)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "constant":
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))


def _require_labels(data: Dataset, what: str) -> np.ndarray:
    if data.y is None:
        raise DataError(f"{what} needs labels, and the {what} data has none")
    return data.y


def accuracy(model: nn.Module, data: Dataset) -> float:
    """Top-1 accuracy of ``model`` on labelled ``data``."""
    labels = torch.from_numpy(_require_labels(data, "accuracy"))
    predicted = predict(model, torch.from_numpy(data.x)).argmax(dim=1)
    return float((predicted == labels).float().mean())


def _fit(
    model: nn.Module,
    cfg: TrainConfig,
    draw_batches: Callable[[torch.Generator], list[object]],
    loss_of: Callable[[object], torch.Tensor],
    validate: Callable[[], float],
    what: str,
    checkpoint: Path | None = None,
) -> TrainResult:
    """The one training loop: Adam with cosine decay, best epoch kept by ``validate`` (higher is better), progress
    logged per epoch, and resumable.

    ``draw_batches`` gives one epoch's minibatches from the run's generator; ``loss_of`` is one minibatch's loss.
    With ``checkpoint``, the whole state (weights, optimizer, schedule, generators, best epoch, history) is saved
    after every epoch and a run that finds the file resumes after its last epoch; a resumed run ends with the same
    weights as an uninterrupted one (same seed, same machine).
    """
    batches_per_epoch = len(draw_batches(torch.Generator().manual_seed(cfg.seed)))
    total = _total_steps(cfg, batches_per_epoch)
    optimizer, scheduler = _optimizer(model, cfg, total)
    generator = torch.Generator().manual_seed(cfg.seed)
    best_state, best_epoch, best_metric, steps, history, first = None, 0, -math.inf, 0, [], 1
    seconds, started = 0.0, time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))
        torch.manual_seed(cfg.seed)  # dropout masks and any other draw of the global RNG
        if checkpoint is not None and Path(checkpoint).exists():
            saved = torch.load(checkpoint, weights_only=False)
            if saved["config"] != dataclasses.asdict(cfg):
                raise ConfigError(f"{checkpoint}: saved for config {saved['config']}, this run is {cfg}")
            try:
                model.load_state_dict(saved["model"])
            except RuntimeError as error:
                raise ConfigError(
                    f"{checkpoint}: saved for another network than this run's ({type(model).__name__}); delete it to "
                    f"train afresh ({str(error).splitlines()[0]})"
                ) from error
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            generator.set_state(saved["generator"])
            torch.set_rng_state(saved["torch_rng"])
            best_state, best_epoch, best_metric = saved["best_state"], saved["best_epoch"], saved["best_metric"]
            steps, history, first = saved["steps"], [EpochLog(**h) for h in saved["history"]], saved["epoch"] + 1
            seconds = saved.get("seconds", 0.0)
            done = saved["epoch"] >= cfg.epochs or steps >= total
            logger.info(
                "%s: %s epoch %d from %s",
                what,
                "already trained, reloading its best epoch; the run ended at" if done else "resuming after",
                saved["epoch"],
                checkpoint,
            )
        progress = stack.enter_context(Progress(f"{what} epoch", cfg.epochs, logger, unit="epoch", initial=first - 1))
        for epoch in range(first, cfg.epochs + 1):
            if steps >= total:
                break
            model.train()
            losses = []
            for batch in draw_batches(generator):
                if steps >= total:
                    break
                loss = loss_of(batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                steps += 1
            metric = validate()
            history.append(EpochLog(epoch, float(np.mean(losses)), metric))
            improved = metric > best_metric
            if improved:
                best_state, best_epoch, best_metric = copy.deepcopy(model.state_dict()), epoch, metric
            progress.step("best so far" if improved else "", loss=history[-1].loss, val=metric)
            if checkpoint is not None:
                _save_checkpoint(
                    Path(checkpoint),
                    {
                        "config": dataclasses.asdict(cfg),
                        "epoch": epoch,
                        "steps": steps,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "best_state": best_state,
                        "best_epoch": best_epoch,
                        "best_metric": best_metric,
                        "history": [dataclasses.asdict(h) for h in history],
                        "seconds": seconds + time.perf_counter() - started,
                    },
                )
    if best_state is None:
        raise ConfigError(f"{what}: no epoch ran (epochs={cfg.epochs}, max_steps={cfg.max_steps})")
    model.load_state_dict(best_state)
    model.eval()
    seconds += time.perf_counter() - started
    return TrainResult(best_epoch, best_metric, steps, history, seconds)


def _save_checkpoint(path: Path, state: dict[str, object]) -> None:
    """Writes atomically (temp file, then rename), so an interrupted save never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)


def _minibatches(n: int, batch_size: int) -> Callable[[torch.Generator], list[object]]:
    """A permutation of n sample indices per epoch, cut into minibatches."""

    def draw(generator: torch.Generator) -> list[object]:
        order = torch.randperm(n, generator=generator)
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]

    return draw


def _group_batches(n: int, groups: int, k: int, batch_size: int) -> Callable[[torch.Generator], list[object]]:
    """``groups`` random k-groups of sample indices per epoch, cut into minibatches of [b, k] indices."""

    def draw(generator: torch.Generator) -> list[object]:
        drawn = _random_groups(n, groups, k, generator)
        return [drawn[i : i + batch_size] for i in range(0, groups, batch_size)]

    return draw


def train_classifier(
    model: nn.Module, train: Dataset, val: Dataset, cfg: TrainConfig, checkpoint: Path | None = None
) -> TrainResult:
    """Fit a classifier (F, or the backup baseline) with cross-entropy; keep the epoch with the best val accuracy."""
    x, y = torch.from_numpy(train.x), torch.from_numpy(_require_labels(train, "train_classifier"))
    _require_labels(val, "train_classifier validation")

    def loss_of(batch: object) -> torch.Tensor:
        return nn.functional.cross_entropy(model(x[batch]), y[batch])

    return _fit(
        model,
        cfg,
        _minibatches(len(x), cfg.batch_size),
        loss_of,
        lambda: accuracy(model, val),
        "classifier",
        checkpoint,
    )


def train_distilled(
    model: nn.Module, f_model: nn.Module, train: Dataset, val: Dataset, cfg: TrainConfig, checkpoint: Path | None = None
) -> TrainResult:
    """Fit a classifier to F's own answers (cross-entropy to F's argmax): the backup baseline when data has no
    labels. Kept by validation agreement with F."""
    x = torch.from_numpy(train.x)
    f_labels = predict(f_model, x).argmax(dim=1)
    val_x = torch.from_numpy(val.x)
    val_labels = predict(f_model, val_x).argmax(dim=1)

    def loss_of(batch: object) -> torch.Tensor:
        return nn.functional.cross_entropy(model(x[batch]), f_labels[batch])

    def validate() -> float:
        return float((predict(model, val_x).argmax(dim=1) == val_labels).float().mean())

    return _fit(model, cfg, _minibatches(len(x), cfg.batch_size), loss_of, validate, "distilled", checkpoint)


def _random_groups(n: int, groups: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``groups`` rows of k query indices, drawn from successive permutations so every query is used evenly."""
    needed = groups * k
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(needed / n))])
    return order[:needed].reshape(groups, k)


def augment_queries(x: torch.Tensor, augment: Augmentation) -> torch.Tensor:
    """``x`` [N, *q] with every query changed by its own random draw of ``augment``.

    Draws come from torch's global RNG, which ``_fit`` seeds with the run's seed and checkpoints, so augmented runs
    are reproducible and resume exactly.
    """
    augment.check(tuple(x.shape[1:]))
    if augment.geometric:
        x = _random_affine(x, augment)
    if augment.noise:
        x = x + augment.noise * torch.randn_like(x)
    return x


def _random_affine(x: torch.Tensor, augment: Augmentation) -> torch.Tensor:
    """Each image of ``x`` [N, C, H, W] rotated, scaled about its centre and translated by whole pixels, zero
    padded. Integer shifts land on pixel centres, so a pure translation moves pixels without blurring them."""
    n, _, height, width = x.shape
    angle = torch.deg2rad((2 * torch.rand(n) - 1) * augment.rotate)
    zoom = 1 + (2 * torch.rand(n) - 1) * augment.scale
    shift = torch.randint(-augment.shift, augment.shift + 1, (n, 2)).to(x.dtype)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # theta maps output to input coordinates in [-1, 1]: moving the image by s pixels samples s pixels back
    theta = torch.stack(
        [
            torch.stack([cos, -sin, -2 * shift[:, 0] / width], dim=1),
            torch.stack([sin, cos, -2 * shift[:, 1] / height], dim=1),
        ],
        dim=1,
    )
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _member_source(
    f_model: nn.Module, x: torch.Tensor, augment: Augmentation | None
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Maps a minibatch of groups [b, k] to its member queries [k, b, *q] and F's answers to them [k, b, *o].

    Without augmentation F's answers to the training split are computed once (F is frozen and deterministic in eval
    mode). With it, F answers each minibatch's augmented queries without gradients; any F does, an onnxruntime
    wrapper included.
    """
    if augment is None:
        f_outputs = predict(f_model, x)
        return lambda batch: (x[batch].transpose(0, 1), f_outputs[batch].transpose(0, 1))

    def draw(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        queries = augment_queries(x[batch].flatten(0, 1), augment)
        f_model.eval()
        with torch.no_grad():
            answers = f_model(queries)
        return (
            queries.reshape(*batch.shape, *queries.shape[1:]).transpose(0, 1),
            answers.reshape(*batch.shape, *answers.shape[1:]).transpose(0, 1),
        )

    return draw


def train_parity(
    parity_model: nn.Module | Sequence[nn.Module],
    f_model: nn.Module,
    train: Dataset,
    val: Dataset,
    cfg: TrainConfig,
    k: int,
    encoder: Encoder,
    decoder: Decoder,
    checkpoint: Path | None = None,
) -> TrainResult:
    """ParM training: parity model j regresses Fp_j(encoder(X1..Xk)[j]) onto sum_i W[j, i] F(X_i) with MSE (W: the
    encoder's ``target_weights``, all ones for ParM's sum and concatenation codes; the encoder's ``parity_targets``
    in general, e.g. every member's answer on its own head for the collage), F frozen, labels unused; ``cfg.loss``
    may be KL to F's softmax instead.

    ``parity_model`` is the one parity model (r = 1) or the list of r; they train together in one loop. Keeps the
    epoch whose rebuilt answers on ``val`` (every erasure pattern the code tolerates, decoded by ``decoder``) agree
    most with F's own answers; that needs no labels either. F may be any module, an onnxruntime wrapper included:
    it only answers queries, without gradients (once for the training split, or per minibatch with ``cfg.augment``).
    """
    check_k(k, encoder, decoder)
    stacked = as_parity(parity_model, encoder.r)
    x = torch.from_numpy(train.x)
    if cfg.augment is not None:
        cfg.augment.check(train.query_shape)
    members_of = _member_source(f_model, x, cfg.augment)
    groups = cfg.groups_per_epoch or len(x) // k
    slot_generator = torch.Generator().manual_seed(cfg.seed + 2)

    def loss_of(batch: object) -> torch.Tensor:
        queries, members = members_of(batch)  # [k, b, *q], [k, b, *o]
        parity_outputs = stacked(encoder(queries))  # [r, b, *p]
        loss = parity_loss(parity_outputs, encoder.parity_targets(members), cfg.loss)
        if cfg.distill_weight > 0:
            slot = int(torch.randint(k, (1,), generator=slot_generator))
            decoded = decoder(parity_outputs, members, availability(k, encoder.r, [slot]))[slot]
            loss = loss + cfg.distill_weight * nn.functional.kl_div(
                nn.functional.log_softmax(decoded, dim=-1),
                nn.functional.log_softmax(members[slot], dim=-1),
                log_target=True,
                reduction="batchmean",
            )
        return loss

    def validate() -> float:
        if cfg.select_by == "reconstruction":
            return -_reconstruction_error(stacked, f_model, val, encoder, cfg.seed)
        report = degraded_accuracy(f_model, stacked, val, k, encoder, decoder, seed=cfg.seed)
        return float(np.mean([e.agreement_with_f for e in report.by_erasures]))

    return _fit(
        stacked, cfg, _group_batches(len(x), groups, k, cfg.batch_size), loss_of, validate, "parity", checkpoint
    )


def parity_loss(outputs: torch.Tensor, targets: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """MSE between parity answers and their targets, or (``kl``) the mean KL from the targets' softmax to the
    answers' along the last axis (each answer a distribution over classes)."""
    if kind == "kl":
        return nn.functional.kl_div(
            nn.functional.log_softmax(outputs.flatten(0, -2), dim=-1),
            nn.functional.log_softmax(targets.flatten(0, -2), dim=-1),
            log_target=True,
            reduction="batchmean",
        )
    return nn.functional.mse_loss(outputs, targets)


def _reconstruction_error(stacked: nn.Module, f_model: nn.Module, val: Dataset, encoder: Encoder, seed: int) -> float:
    """Mean squared error of the parity answers against their targets on one seeded grouping of ``val`` (ParM's
    model selection)."""
    k = encoder.k
    x = torch.from_numpy(val.x)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: len(x) // k * k]
    groups = order.reshape(-1, k)
    stacked.eval()
    with torch.no_grad():
        members = predict(f_model, x)[groups].transpose(0, 1)
        outputs = stacked(encoder(x[groups].transpose(0, 1)))
    return float(nn.functional.mse_loss(outputs, encoder.parity_targets(members)))


def train_learned_code(
    encoder: Encoder,
    decoder: Decoder,
    f_model: nn.Module,
    train: Dataset,
    val: Dataset,
    cfg: TrainConfig,
    checkpoint: Path | None = None,
) -> TrainResult:
    """Learned code training (Kosaian et al. 2018): encoder and decoder networks end to end through the frozen F.

    Each minibatch of k-groups draws one loss pattern the decoder tolerates (1..r erased members; with r > 1 also
    lost parities, so the decoder learns to rebuild from the parities that arrived); the r parity queries go through
    F (its weights frozen, gradients flowing to the encoder), the decoder rebuilds the erased slots, and the loss is
    the MSE between rebuilt and F's own outputs on the erased slots only. Kept by validation agreement with F.
    F must be a differentiable torch module: a torch or TorchScript F, or an ONNX F's graph run by torch operations
    (``LoadedF.trainable_module``).
    """
    k, r = encoder.k, encoder.r
    check_k(k, decoder)
    if getattr(f_model, "differentiable", True) is False:
        raise ConfigError("a learned code trains through F: F must run as torch operations, not in onnxruntime")
    for parameter in f_model.parameters():
        parameter.requires_grad_(False)
    f_model.eval()
    x = torch.from_numpy(train.x)
    f_outputs = predict(f_model, x)
    patterns = tolerated_patterns(decoder)
    pattern_generator = torch.Generator().manual_seed(cfg.seed + 1)
    code = nn.ModuleDict({"encoder": encoder, "decoder": decoder})
    groups = cfg.groups_per_epoch or len(x) // k

    def loss_of(batch: object) -> torch.Tensor:
        parity_queries = encoder(x[batch].transpose(0, 1))  # [r, b, *q]
        parity_outputs = f_model(parity_queries.flatten(0, 1))
        parity_outputs = parity_outputs.reshape(r, -1, *parity_outputs.shape[1:])
        outputs = f_outputs[batch].transpose(0, 1)  # [k, b, *o]
        pattern = patterns[int(torch.randint(len(patterns), (1,), generator=pattern_generator))]
        decoded = decoder(parity_outputs, outputs, pattern.available(k, r))
        erased = list(pattern.erased)
        return nn.functional.mse_loss(decoded[erased], outputs[erased])

    def validate() -> float:
        f_model.eval()
        report = degraded_accuracy(f_model, f_model, val, k, encoder, decoder, seed=cfg.seed)
        return float(np.mean([e.agreement_with_f for e in report.by_erasures]))

    return _fit(
        code, cfg, _group_batches(len(x), groups, k, cfg.batch_size), loss_of, validate, "learned code", checkpoint
    )

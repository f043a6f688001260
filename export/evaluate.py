"""``parm eval``: F's accuracy with every answer available against the degraded-mode accuracy of codes and
baselines, on the test split, for a set of codes (trained here, or reloaded from their checkpoints) or for one
written model repository (its ONNX files, run by onnxruntime: exactly what is served).

Baselines, in the same report:
- the default answer: the most frequent class of the training split (labels, or F's own answers without labels);
- a cheap backup model (``models.BackupMLP``), trained on the same training split (labels, or distilled from F's
  answers without labels), answering in F's place: ParM's "approximate backup".

Cost column: F-sized evaluations spent on redundancy per query, counted in multiply-accumulates of the networks'
convolutions and linear layers (encoder, parity side, decoder for a code of k; the backup per query), relative to F;
an ONNX F is counted as r/k.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from parm.backend.orchestrator.contract import CODED_SUFFIX
from parm.backend.orchestrator.groups import rebuildable
from parm.errors import ConfigError
from parm.progress import Progress

from .code_registry import get_code
from .code_training import CodeConfig, TrainedCode, check_applies, code_shape
from .data import DataSplits
from .degraded import degraded_accuracy, paired_gap_stderr
from .fsource import FSource, LoadedF, OnnxCallable
from .models import BackupMLP, predict
from .pipeline import (
    DataSpec,
    FSpec,
    OfflinePipeline,
    data_description,
    f_key,
    fingerprint,
    load_splits,
    torch_threads,
)
from .report import Report, ReportRow
from .repository import parse_orchestrator_config, read_config
from .train import TrainConfig, train_classifier, train_distilled

logger = logging.getLogger(__name__)

DEFAULT_CODES = (
    "sum:2",
    "sum:3",
    "sum:4",
    "sum:4@w2",
    "concat:2",
    "concat:4",
    "linear:3:2",
    "linear:4:2",
    "learned:2",
    "learned:3",
    "learned:4",
    "learned-conv:2",
    "learned-conv:3",
    "learned-conv:4",
    "berrut:2",
    "berrut:3",
    "berrut:4",
    "learned-conv:3:2",
    "berrut:3:2",
    "letcc:2",
    "letcc:3",
    "letcc:4",
    "letcc:3:2",
    "collage:2@kl,e200",
    "collage:3@kl,e200",
    "collage:4@kl,e200",
    "sum:2@parm",
    "sum:3@parm",
    "sum:4@parm",
)
"""What ``parm eval`` compares by default: ParM (sum; at k = 4 also a parity model of twice F's width, 4x its
cost; concatenation; r = 2 at k = 3 and 4), learned codes (MLP and convolutional encoders), Berrut and LeTCC at
k = 2..4, and at k = 3 with r = 2 a learned code, Berrut and LeTCC beside ParM's, each also with one parity lost;
the collage at k = 2..4, trained by KL to F's softmax for 200 epochs (on Fashion-MNIST's validation split, base-MLP
F, k = 2, rebuilt answers agreeing with F's: 86.4% for MSE and 92.3% for KL after 60 epochs, 90.3% and 93.9% after
200; every k agrees likewise); and ParM's published recipe (``@parm``) at
k = 2..4 as the reference row. Codes that cannot apply to an F (image tiling on a flat F without an image shape,
widening an F that cannot widen) are skipped with the reason in the report."""
BACKUP_CONFIG = TrainConfig(epochs=60, batch_size=64, lr=3e-3)


def count_macs(module: nn.Module, *example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``module`` on ``example`` through its Conv2d and Linear layers."""
    total = 0

    def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            total += output.numel() * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
        else:
            total += inputs[0].numel() // layer.in_features * layer.in_features * layer.out_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            module.eval()(*example)
    finally:
        for handle in handles:
            handle.remove()
    return total


def extra_per_query(trained: TrainedCode, f: LoadedF) -> float:
    """Redundant work per query, in F evaluations: (encoder + parity side + decoder) / (k F), by MACs of one group
    with batch 1; r/k when F is ONNX-only (its MACs are not counted)."""
    k, r = trained.config.k, trained.config.r
    query = torch.zeros(1, *f.input.dims)
    f_macs = 0 if f.source is FSource.ONNX else count_macs(f.module, query)
    if f_macs == 0:
        return r / k
    parity = sum(count_macs(model, query) for model in trained.parity_side(f.module))
    encoder = count_macs(trained.encoder, torch.zeros(k, 1, *f.input.dims))
    parity_shape = trained.code.parity_output_shape(code_shape(trained.config, f))
    decoder = count_macs(
        trained.decoder, torch.zeros(r, 1, *parity_shape), torch.zeros(k, 1, *f.output.dims), torch.ones(k + r)
    )
    return (encoder + parity + decoder) / (k * f_macs)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _majority(labels: np.ndarray) -> int:
    return int(np.bincount(labels).argmax())


def baseline_rows(f: LoadedF, splits: DataSplits, seed: int, work_dir: Path, quick: bool) -> list[ReportRow]:
    """The default answer and the backup model, on the test split."""
    test_x = torch.from_numpy(splits.test.x)
    f_test = predict(f.module, test_x).argmax(dim=1).numpy()
    train_targets = splits.train.y
    if train_targets is None:
        train_targets = predict(f.module, torch.from_numpy(splits.train.x)).argmax(dim=1).numpy()
    default = _majority(train_targets)
    labels = splits.test.y
    rows = [
        _baseline_row("default answer", np.full_like(f_test, default), f_test, labels, 0.0, f"always class {default}")
    ]
    cfg = dataclasses.replace(BACKUP_CONFIG, seed=seed)
    if quick:
        cfg = cfg.quick()
    checkpoint = work_dir / "checkpoints" / f"backup-{fingerprint(cfg, splits.train.x, f_key(FSpec(), f))}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        backup = BackupMLP(tuple(f.input.dims), f.output_size)
        if splits.train.y is not None and splits.val.y is not None:
            result = train_classifier(backup, splits.train, splits.val, cfg, checkpoint=checkpoint)
        else:
            result = train_distilled(backup, f.module, splits.train, splits.val, cfg, checkpoint=checkpoint)
    predicted = predict(backup, test_x).argmax(dim=1).numpy()
    example = torch.zeros(1, *f.input.dims)
    f_macs = count_macs(f.module, example) if f.source is not FSource.ONNX else 0
    backup_macs = count_macs(backup, example)
    rows.append(
        _baseline_row(
            "backup model",
            predicted,
            f_test,
            labels,
            backup_macs / f_macs if f_macs else None,
            f"MLP 1x32, {sum(p.numel() for p in backup.parameters())} parameters",
            result.seconds,
        )
    )
    return rows


def _baseline_row(
    name: str,
    predicted: np.ndarray,
    f_test: np.ndarray,
    labels: np.ndarray | None,
    extra_per_query: float | None,
    note: str,
    train_seconds: float | None = None,
) -> ReportRow:
    """A baseline answering every test query in F's place with ``predicted``."""
    return ReportRow(
        name=name,
        kind="baseline",
        k=None,
        r=None,
        accuracy=None if labels is None else float(np.mean(predicted == labels)),
        agreement_with_f=float(np.mean(predicted == f_test)),
        extra_per_query=extra_per_query,
        train_seconds=train_seconds,
        note=note,
        gap_stderr=_gap_stderr(f_test, predicted, labels),
    )


def _gap_stderr(f_predicted: np.ndarray, predicted: np.ndarray, labels: np.ndarray | None) -> float | None:
    """The gap's standard error for a baseline answering every query once in F's place."""
    if labels is None:
        return None
    return paired_gap_stderr(torch.from_numpy(f_predicted == labels), torch.from_numpy(predicted == labels))


def evaluate_codes(
    codes: Sequence[CodeConfig],
    work_dir: Path,
    f_spec: FSpec | None = None,
    data: DataSpec | None = None,
    seed: int = 0,
    quick: bool = False,
    baselines: bool = True,
    skip_inapplicable: bool = False,
) -> Report:
    """Trains (or reloads from ``work_dir``'s checkpoints) F and every code, and reports on the test split.

    ``skip_inapplicable`` (the default set): a code that cannot apply to this F is listed in the report with the
    reason instead of failing the whole report; a code the user named fails clearly."""
    started = time.perf_counter()
    work_dir = Path(work_dir)
    pipeline = OfflinePipeline(work_dir, f_spec, data, seed, quick)
    f, splits, data = pipeline.f, pipeline.splits, pipeline.data
    rows: list[ReportRow] = []
    skipped: list[tuple[str, str]] = []
    if skip_inapplicable:
        codes, skipped = _applicable(codes, pipeline)
    with Progress("parm eval: codes", len(codes), logger, unit="code") as progress:
        for code in codes:
            trained, degraded = pipeline.train(code)
            row = ReportRow.for_code(
                get_code(code.code).title or code.code,
                code.k,
                code.r,
                degraded,
                trained.train_seconds,
                "; ".join(filter(None, (code.variant, trained.chosen))),
            )
            with torch_threads():
                rows.append(dataclasses.replace(row, extra_per_query=extra_per_query(trained, f)))
            progress.step(code.label, rebuilt=_percent(degraded.degraded_accuracy))
    with torch_threads():
        if baselines:
            rows += baseline_rows(f, splits, seed, work_dir, quick)
        f_accuracy = None
        if splits.test.y is not None:
            f_pred = predict(f.module, torch.from_numpy(splits.test.x)).argmax(dim=1).numpy()
            f_accuracy = float(np.mean(f_pred == splits.test.y))
    return dataclasses.replace(
        _test_report(f.description, data, splits, seed, f_accuracy, rows, started), skipped=tuple(skipped)
    )


def _applicable(
    codes: Sequence[CodeConfig], pipeline: OfflinePipeline
) -> tuple[list[CodeConfig], list[tuple[str, str]]]:
    """The codes that apply to the pipeline's F, and (code, why) for the others."""
    kept, skipped = [], []
    for code in codes:
        try:
            check_applies(pipeline.code_for_f(code), pipeline.f)
        except ConfigError as error:
            skipped.append((code.label, str(error)))
        else:
            kept.append(code)
    return kept, skipped


class _OnnxCode(OnnxCallable):
    """An exported encoder or decoder, with the k and r that ``degraded_accuracy`` checks."""

    def __init__(self, path: Path, k: int, r: int) -> None:
        super().__init__(path)
        self.k, self.r = k, r


class _OnnxDecoder(_OnnxCode):
    """An exported decoder, rebuilding what the served orchestrator would ask it to (``CodingGroup.can_decode``):
    what the arrived parities solve for a linear code (its ``code_weights``), else e erasures from any e parities."""

    def __init__(self, path: Path, k: int, r: int, weights: tuple[tuple[float, ...], ...]) -> None:
        super().__init__(path, k, r)
        self.weights = np.array(weights, dtype=np.float64) if weights else None

    def can_rebuild(self, erased: Sequence[int], parities: Sequence[int]) -> bool:
        return rebuildable(self.weights, parities, erased)


def evaluate_repository(repository: Path, data: DataSpec | None = None, seed: int = 0) -> Report:
    """Reports on a written repository's coded endpoint(s), running its ONNX files with onnxruntime."""
    repository = Path(repository)
    data = data or DataSpec()
    started = time.perf_counter()
    coded = sorted(p for p in repository.iterdir() if p.name.endswith(CODED_SUFFIX) and (p / "config.pbtxt").exists())
    if not coded:
        raise ConfigError(f"{repository}: no coded endpoint (a '*{CODED_SUFFIX}' model) found")
    splits = load_splits(data, seed)
    rows: list[ReportRow] = []
    f_accuracy, f_description = None, ""
    with torch_threads():
        for coded_dir in coded:
            config = parse_orchestrator_config(read_config(coded_dir / "config.pbtxt"))
            k, r, parity_names = config.k, config.r, list(config.parity_models)
            f_name = config.f_models[0]
            f_module = OnnxCallable(repository / f_name / "1" / "model.onnx")
            parity = [OnnxCallable(repository / name / "1" / "model.onnx") for name in parity_names]
            encoder = _OnnxCode(repository / config.encoder_model / "1" / "model.onnx", k, r)
            decoder = _OnnxDecoder(repository / config.decoder_model / "1" / "model.onnx", k, r, config.code_weights)
            degraded = degraded_accuracy(f_module, parity, splits.test, k, encoder, decoder, seed=seed)
            f_accuracy, f_description = degraded.f_accuracy, f"{f_name} (ONNX in {repository})"
            who = (
                "F answers the parities" if parity_names == [f_name] * r else f"parity models {', '.join(parity_names)}"
            )
            rows.append(ReportRow.for_code(coded_dir.name, k, r, degraded, None, who))
    return _test_report(f_description, data, splits, seed, f_accuracy, rows, started)


def _test_report(f_description, data, splits, seed, f_accuracy, rows, started) -> Report:
    """The report of rows measured on the test split of ``data``, ``started`` (``perf_counter``) ago."""
    return Report(
        f_description=f_description,
        data_description=data_description(data),
        split="test",
        queries=len(splits.test),
        seed=seed,
        f_accuracy=f_accuracy,
        rows=tuple(rows),
        wall_seconds=time.perf_counter() - started,
    )

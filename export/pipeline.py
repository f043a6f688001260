"""The default demo end to end: train F and a ParM parity model on digits, export and verify every network.

Writes ``onnx/{f,parity,encoder,decoder}.onnx``, ``torchscript/{f,parity,encoder,decoder}.pt`` and
``training.json`` (resolved configs, seed, test accuracies, git commit) under one output folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from parm.backend.orchestrator import TensorSpec, contract

from .codes import Decoder, Encoder, get_code
from .data import load_digits_splits
from .models import DIGITS_CLASSES, DIGITS_INPUT, DIGITS_OUTPUT, DIGITS_QUERY_SHAPE, DigitsCNN, build_parity_model
from .onnx_export import export_onnx, export_torchscript, verify_onnx, verify_torchscript
from .train import DegradedAccuracy, TrainConfig, TrainResult, degraded_accuracy, train_classifier, train_parity

logger = logging.getLogger(__name__)

CODE = "sum"
F_CONFIG = TrainConfig(epochs=30, batch_size=64, lr=2e-3)
# Many random groups per epoch: digits is tiny, so pairs are cheap and the parity model needs many of them.
PARITY_CONFIG = TrainConfig(epochs=30, batch_size=256, lr=3e-3, groups_per_epoch=20_000)
QUICK_STEPS = 5


@dataclass(frozen=True)
class ModelFiles:
    """One exported file per network of the coded deployment."""

    f: Path
    parity: Path
    encoder: Path
    decoder: Path


@dataclass(frozen=True)
class DigitsArtifacts:
    """What ``train_and_export_digits`` produced: files, test-split accuracies and F's tensor signature."""

    out_dir: Path
    onnx: ModelFiles
    torchscript: ModelFiles
    training_json: Path
    code: str
    k: int
    seed: int
    accuracy: DegradedAccuracy
    f_inputs: tuple[TensorSpec, ...]
    f_outputs: tuple[TensorSpec, ...]
    train_seconds: float


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Use ``n`` intra-op threads, then restore: torch's default counts the host's cores, not the process's share."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _git_state() -> dict[str, object]:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(dirty)}


def _quick(cfg: TrainConfig) -> TrainConfig:
    groups = None if cfg.groups_per_epoch is None else cfg.batch_size * QUICK_STEPS
    return dataclasses.replace(cfg, epochs=1, max_steps=QUICK_STEPS, groups_per_epoch=groups)


def _export_network(
    name: str,
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    fresh: list[tuple[torch.Tensor, ...]],
    names: tuple[tuple[str, ...], tuple[str, ...]],
    dynamic_axes: dict[str, dict[int, str]],
    out_dir: Path,
) -> tuple[Path, Path]:
    """Export one network to ONNX and TorchScript and check both against torch on ``fresh`` inputs."""
    onnx_path = export_onnx(module, example, names[0], names[1], dynamic_axes, out_dir / "onnx" / f"{name}.onnx")
    verify_onnx(onnx_path, module, fresh)
    ts_path = export_torchscript(module, example, out_dir / "torchscript" / f"{name}.pt")
    verify_torchscript(ts_path, module, fresh)
    return onnx_path, ts_path


def _export_all(
    out_dir: Path, f_model: nn.Module, parity: nn.Module, encoder: Encoder, decoder: Decoder, k: int, seed: int
) -> tuple[ModelFiles, ModelFiles]:
    g = torch.Generator().manual_seed(seed)

    def queries(*lead: int) -> torch.Tensor:
        return torch.rand(*lead, *DIGITS_QUERY_SHAPE, generator=g)

    def decoder_inputs(kk: int, batch: int, erased: int) -> tuple[torch.Tensor, ...]:
        outputs = torch.randn(kk, batch, DIGITS_CLASSES, generator=g)
        outputs[erased] = float("nan")  # an erased slot may hold anything; the decoder must not read it
        available = torch.ones(kk)
        available[erased] = 0.0
        return torch.randn(1, batch, DIGITS_CLASSES, generator=g), outputs, available

    model_axes = {DIGITS_INPUT: {0: "batch"}, DIGITS_OUTPUT: {0: "batch"}}
    model_names = ((DIGITS_INPUT,), (DIGITS_OUTPUT,))
    # Fresh inputs differ from the example in batch size (and in k for the code networks): dynamic axes must hold.
    paths = {
        "f": _export_network(
            "f", f_model, (queries(2),), [(queries(1),), (queries(5),)], model_names, model_axes, out_dir
        ),
        "parity": _export_network(
            "parity", parity, (queries(2),), [(queries(1),), (queries(5),)], model_names, model_axes, out_dir
        ),
        "encoder": _export_network(
            "encoder",
            encoder,
            (queries(k, 2),),
            [(queries(k, 1),), (queries(k + 1, 5),)],
            ((contract.ENCODER_INPUT,), (contract.ENCODER_OUTPUT,)),
            {contract.ENCODER_INPUT: {0: "k", 1: "batch"}, contract.ENCODER_OUTPUT: {1: "batch"}},
            out_dir,
        ),
        "decoder": _export_network(
            "decoder",
            decoder,
            decoder_inputs(k, 2, 0),
            [decoder_inputs(k, 1, k - 1), decoder_inputs(k + 1, 5, 1)],
            (Decoder.input_names, (contract.DECODER_OUTPUT,)),
            {
                contract.DECODER_PARITY_INPUT: {1: "batch"},
                contract.DECODER_OUTPUTS_INPUT: {0: "k", 1: "batch"},
                contract.DECODER_AVAILABLE_INPUT: {0: "k"},
                contract.DECODER_OUTPUT: {0: "k", 1: "batch"},
            },
            out_dir,
        ),
    }
    return (
        ModelFiles(**{role: onnx_path for role, (onnx_path, _) in paths.items()}),
        ModelFiles(**{role: ts_path for role, (_, ts_path) in paths.items()}),
    )


def _summary(result: TrainResult) -> dict[str, object]:
    return {"best_epoch": result.best_epoch, "best_val_metric": result.best_val_metric, "steps": result.steps}


def train_and_export_digits(out_dir: Path, seed: int = 0, k: int = 2, quick: bool = False) -> DigitsArtifacts:
    """Train F (DigitsCNN) and its ParM sum-code parity model on digits, export and verify all four networks.

    ``quick`` trains a few steps only (smoke tests): the files are complete, the accuracies meaningless. Results
    are reproducible for a seed on one machine (thread count and CPU kind can change the last bits of training).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    f_cfg = dataclasses.replace(F_CONFIG, seed=seed)
    parity_cfg = dataclasses.replace(PARITY_CONFIG, seed=seed)
    if quick:
        f_cfg, parity_cfg = _quick(f_cfg), _quick(parity_cfg)
    code = get_code(CODE)
    encoder, decoder = code.make_encoder(k), code.make_decoder(k)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with _torch_threads(threads), torch.random.fork_rng(devices=[]):
        splits = load_digits_splits(seed)
        started = time.perf_counter()
        torch.manual_seed(seed)
        f_model = DigitsCNN()
        f_result = train_classifier(f_model, splits.train, splits.val, f_cfg)
        torch.manual_seed(seed + 1)
        parity = build_parity_model(f_model)
        parity_result = train_parity(parity, f_model, splits.train, splits.val, parity_cfg, k, encoder, decoder)
        train_seconds = time.perf_counter() - started
        report = degraded_accuracy(f_model, parity, splits.test, k, encoder, decoder, seed=seed)
        onnx_files, ts_files = _export_all(out_dir, f_model, parity, encoder, decoder, k, seed)
    logger.info("digits k=%d: trained in %.1f s; test accuracy %s", k, train_seconds, report)
    training_json = out_dir / "training.json"
    record = {
        "code": CODE,
        "k": k,
        "seed": seed,
        "quick": quick,
        "model": {"f": "DigitsCNN(width=1)", "parity": "DigitsCNN(width=1), re-initialised (ParM: F's architecture)"},
        "data": {
            "source": "sklearn.datasets.load_digits",
            "train": len(splits.train),
            "val": len(splits.val),
            "test": len(splits.test),
        },
        "f_config": dataclasses.asdict(f_cfg),
        "parity_config": dataclasses.asdict(parity_cfg),
        "f_training": _summary(f_result),
        "parity_training": _summary(parity_result),
        "test_accuracy": dataclasses.asdict(report),
        "train_seconds": round(train_seconds, 2),
        "torch_threads": threads,
        "torch_version": torch.__version__,
        **_git_state(),
    }
    training_json.write_text(json.dumps(record, indent=2) + "\n")
    return DigitsArtifacts(
        out_dir=out_dir,
        onnx=onnx_files,
        torchscript=ts_files,
        training_json=training_json,
        code=CODE,
        k=k,
        seed=seed,
        accuracy=report,
        f_inputs=(TensorSpec(DIGITS_INPUT, np.dtype(np.float32), DIGITS_QUERY_SHAPE),),
        f_outputs=(TensorSpec(DIGITS_OUTPUT, np.dtype(np.float32), (DIGITS_CLASSES,)),),
        train_seconds=train_seconds,
    )

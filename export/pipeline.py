"""``parm export`` end to end: F (the default digits model, or the user's own) + queries -> a trained, exported and
verified code, and a record of the run.

Writes ``onnx/*.onnx`` and ``torchscript/*.pt`` (F unless it is the user's ONNX file, the parity models, encoder and
decoder), ``checkpoints/`` (resumable training state, named by a fingerprint of config, data and F, so a rerun with
the same inputs reloads instead of retraining) and ``training.json`` (resolved configs, seed, test-split
accuracies, git commit) under one work folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
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

from parm.backend.orchestrator import TensorSpec

from .coding import CodeConfig, TrainedCode, export_code, train_code
from .data import DataSplits, load_digits_splits, load_queries, split_dataset
from .fsource import LoadedF, load_f, torch_f
from .models import DIGITS_CLASSES, DIGITS_INPUT, DIGITS_OUTPUT, DIGITS_QUERY_SHAPE, DigitsCNN
from .train import DegradedAccuracy, TrainConfig, TrainResult, degraded_accuracy, train_classifier

logger = logging.getLogger(__name__)

F_CONFIG = TrainConfig(epochs=30, batch_size=64, lr=2e-3)
"""Training of the default F (DigitsCNN on scikit-learn digits)."""
QUICK_STEPS = 5
VAL_FRACTION, TEST_FRACTION = 0.1, 0.2
"""Splits of a user's queries (digits uses the same): validation chooses checkpoints, test is only reported."""


@dataclass(frozen=True)
class FSpec:
    """Where F comes from: ``None`` source trains the default DigitsCNN on digits; else an ``.onnx`` file, a
    TorchScript file or ``package.module:Class`` (with ``weights``). Names override what F itself says (torch F)."""

    source: str | None = None
    weights: Path | None = None
    input_name: str | None = None
    output_name: str | None = None


@dataclass(frozen=True)
class DataSpec:
    """Where the queries come from: ``None`` is scikit-learn digits; else .npy/.npz, an image folder or IDX."""

    path: Path | None = None
    labels: Path | None = None


@dataclass
class ExportArtifacts:
    """What ``run_export`` produced: files, the trained code, test-split accuracies and F's signature."""

    out_dir: Path
    onnx: dict[str, Path]
    torchscript: dict[str, Path]
    training_json: Path
    code: CodeConfig
    seed: int
    accuracy: DegradedAccuracy
    f: LoadedF
    trained: TrainedCode
    train_seconds: float

    @property
    def k(self) -> int:
        return self.code.k

    @property
    def f_inputs(self) -> tuple[TensorSpec, ...]:
        return (self.f.input,)

    @property
    def f_outputs(self) -> tuple[TensorSpec, ...]:
        return (self.f.output,)


@contextlib.contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """Use ``n`` intra-op threads (default: the CPUs this process may run on), then restore: torch's default counts
    the host's cores, not the process's share."""
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def git_state() -> dict[str, object]:
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


def fingerprint(*parts: object) -> str:
    """A short stable hash of configs, arrays and files: names a checkpoint by everything its training depends on."""
    digest = hashlib.sha1()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(part, Path) and part.is_file():
            digest.update(part.read_bytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()[:10]


def quick_config(cfg: TrainConfig, steps: int = QUICK_STEPS) -> TrainConfig:
    """A few steps of ``cfg`` (smoke runs): one epoch, ``steps`` optimizer steps."""
    groups = None if cfg.groups_per_epoch is None else cfg.batch_size * steps
    return dataclasses.replace(cfg, epochs=1, max_steps=steps, groups_per_epoch=groups)


def load_splits(data: DataSpec, seed: int) -> DataSplits:
    """Train/val/test splits of the queries (stratified by label where there are labels), reproducible by seed."""
    if data.path is None:
        return load_digits_splits(seed)
    return split_dataset(load_queries(data.path, data.labels), VAL_FRACTION, TEST_FRACTION, seed)


def train_default_f(
    splits: DataSplits, work_dir: Path, seed: int, quick: bool = False
) -> tuple[LoadedF, TrainResult, TrainConfig]:
    """The default F: a DigitsCNN trained on the digits train split (checkpointed under ``work_dir``)."""
    cfg = dataclasses.replace(F_CONFIG, seed=seed)
    if quick:
        cfg = quick_config(cfg)
    checkpoint = work_dir / "checkpoints" / f"f-{fingerprint(cfg, splits.train.x)}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN()
        result = train_classifier(model, splits.train, splits.val, cfg, checkpoint=checkpoint)
    f = torch_f(
        model,
        TensorSpec(DIGITS_INPUT, np.dtype(np.float32), DIGITS_QUERY_SHAPE),
        TensorSpec(DIGITS_OUTPUT, np.dtype(np.float32), (DIGITS_CLASSES,)),
        "DigitsCNN(width=1) trained on scikit-learn digits",
    )
    return f, result, cfg


def prepare_f(spec: FSpec, splits: DataSplits, work_dir: Path, seed: int, quick: bool) -> tuple[LoadedF, dict]:
    """F and a record of where it came from (and how it was trained, for the default F)."""
    if spec.source is None:
        f, result, cfg = train_default_f(splits, work_dir, seed, quick)
        return f, {"f": f.description, "f_config": dataclasses.asdict(cfg), "f_training": _summary(result)}
    f = load_f(spec.source, splits.train, spec.weights, spec.input_name, spec.output_name)
    return f, {"f": f.description}


def code_checkpoint(work_dir: Path, code: CodeConfig, f_key: str, splits: DataSplits, seed: int, quick: bool) -> Path:
    """Where a code's training state lives: named by the code, F, the data, the seed and the training config (the
    resolved one, so a changed default recipe trains afresh instead of meeting a checkpoint of the old one)."""
    key = fingerprint(code, code.training(), f_key, splits.train.x, seed, quick)
    return work_dir / "checkpoints" / f"{code.slug}-{key}.pt"


def f_key(spec: FSpec, f: LoadedF) -> str:
    """What identifies F's weights for checkpoint names: the user's files, or the default F's own weights."""
    if spec.source is not None:
        source = Path(spec.source)
        return fingerprint(spec, source if source.is_file() else spec.source, spec.weights or "")
    return fingerprint(*(p.detach().numpy() for p in f.module.state_dict().values()))


def run_export(
    out_dir: Path,
    code: CodeConfig | None = None,
    f_spec: FSpec | None = None,
    data: DataSpec | None = None,
    seed: int = 0,
    quick: bool = False,
) -> ExportArtifacts:
    """Trains (or reloads) F's code, exports and verifies every network, reports test-split accuracy.

    ``quick`` trains a few steps only (smoke tests): the files are complete, the accuracies meaningless. Results
    are reproducible for a seed on one machine (thread count and CPU kind can change the last bits of training).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    code = code or CodeConfig()
    f_spec, data = f_spec or FSpec(), data or DataSpec()
    with torch_threads():
        threads = torch.get_num_threads()
        splits = load_splits(data, seed)
        started = time.perf_counter()
        f, f_record = prepare_f(f_spec, splits, out_dir, seed, quick)
        checkpoint = code_checkpoint(out_dir, code, f_key(f_spec, f), splits, seed, quick)
        trained = train_code(
            code, f, splits.train, splits.val, seed, checkpoint, quick_steps=QUICK_STEPS if quick else None
        )
        train_seconds = time.perf_counter() - started
        report = degraded_accuracy(
            f.module, trained.parity_side(f.module), splits.test, code.k, trained.encoder, trained.decoder, seed=seed
        )
        exported = export_code(trained, f, out_dir, seed)
    logger.info("%s: trained in %.1f s; test accuracy %s", code.label, train_seconds, report)
    record = {
        "code": code.code,
        "k": code.k,
        "r": code.r,
        "seed": seed,
        "quick": quick,
        "code_config": dataclasses.asdict(code),
        **f_record,
        "parity_models": [type(m).__name__ for m in trained.parity_models] or "F answers the parities",
        "data": {
            "source": str(data.path) if data.path else "sklearn.datasets.load_digits",
            "train": len(splits.train),
            "val": len(splits.val),
            "test": len(splits.test),
        },
        "code_training_config": dataclasses.asdict(quick_config(code.training()) if quick else code.training()),
        "code_training": None if trained.result is None else _summary(trained.result),
        "test_accuracy": dataclasses.asdict(report),
        "train_seconds": round(train_seconds, 2),
        "torch_threads": threads,
        "torch_version": torch.__version__,
        **git_state(),
    }
    training_json = out_dir / "training.json"
    training_json.write_text(json.dumps(record, indent=2) + "\n")
    return ExportArtifacts(
        out_dir=out_dir,
        onnx=exported.onnx,
        torchscript=exported.torchscript,
        training_json=training_json,
        code=code,
        seed=seed,
        accuracy=report,
        f=f,
        trained=trained,
        train_seconds=train_seconds,
    )


def train_and_export_digits(out_dir: Path, seed: int = 0, k: int = 2, quick: bool = False) -> ExportArtifacts:
    """The default demo: F (DigitsCNN) and its ParM sum-code parity model on digits, exported and verified."""
    return run_export(out_dir, CodeConfig("sum", k), seed=seed, quick=quick)


def _summary(result: TrainResult) -> dict[str, object]:
    return {
        "best_epoch": result.best_epoch,
        "best_val_metric": result.best_val_metric,
        "steps": result.steps,
        "history": [dataclasses.asdict(h) for h in result.history],
    }

"""The offline pipeline, one place for every job that trains a code (``parm export``, ``parm train``, ``parm eval``,
the benchmark's repository builder): prepare F (train the built-in one, or load the user's) -> train the code ->
degraded-mode accuracy -> export and verify -> write the model repository, with one quick-run rule
(``TrainConfig.quick``).

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
import math
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from parm.backend.orchestrator import OrchestratorSettings, TensorSpec
from parm.errors import ConfigError

from . import models
from .code_training import CodeConfig, ExportedCode, TrainedCode, export_code, train_code
from .data import Dataset, DataSplits, load_digits_splits, load_queries, split_dataset
from .degraded import DegradedAccuracy, degraded_accuracy
from .fsource import LoadedF, load_f, torch_f
from .models import DIGITS_CLASSES, DIGITS_INPUT, DIGITS_OUTPUT, DIGITS_QUERY_SHAPE
from .repository import CodedDeployment, write_repository
from .train import TrainConfig, TrainResult, train_classifier

logger = logging.getLogger(__name__)

F_CONFIG = TrainConfig(epochs=30, batch_size=64, lr=2e-3)
"""Training of the default F (DigitsCNN on scikit-learn digits)."""
MLP_CONFIG = TrainConfig(epochs=30, batch_size=64, lr=1e-3)
"""ParM's training of its base-MLP: cross-entropy, Adam 1e-3, batch 64, 30 epochs, best by validation accuracy."""
CNN_CONFIG = TrainConfig(epochs=15, batch_size=128, lr=2e-3, weight_decay=1e-4)
"""Training of the small residual CNN on 28x28 images (about 40 s an epoch of Fashion-MNIST on 2 cores)."""
VAL_FRACTION, TEST_FRACTION = 0.1, 0.2
"""Splits of a user's queries (digits uses the same): validation chooses checkpoints, test is only reported."""


@dataclass(frozen=True)
class BuiltinF:
    """An F trained here: a network of ``models`` (by class name and options), the query shape it takes, its
    classes, its training, and the name it is served under."""

    architecture: str = "DigitsCNN"
    options: tuple[tuple[str, int], ...] = (("width", 1),)
    training: TrainConfig = F_CONFIG
    query_shape: tuple[int, ...] = DIGITS_QUERY_SHAPE
    """One query as F takes it: image [C, H, W] or flat [D]; image data of as many values is flattened for a flat
    F (``fit_queries``)."""
    classes: int = DIGITS_CLASSES
    model_name: str = "digits"

    def build(self) -> nn.Module:
        return getattr(models, self.architecture)(**dict(self.options))

    @property
    def name(self) -> str:
        """The network and its options, e.g. ``DigitsCNN(width=1)``."""
        return f"{self.architecture}({', '.join(f'{key}={value}' for key, value in self.options)})"

    @property
    def input_spec(self) -> TensorSpec:
        return TensorSpec(DIGITS_INPUT, np.dtype(np.float32), self.query_shape)

    @property
    def output_spec(self) -> TensorSpec:
        return TensorSpec(DIGITS_OUTPUT, np.dtype(np.float32), (self.classes,))


BUILTIN_FS: dict[str, BuiltinF] = {
    "digits-cnn": BuiltinF(),
    "mlp": BuiltinF("BaseMLP", (("in_features", 784), ("classes", 10)), MLP_CONFIG, (784,), 10, model_name="mlp"),
    "cnn": BuiltinF(
        "SmallResNet", (("channels", 1), ("classes", 10), ("width", 16)), CNN_CONFIG, (1, 28, 28), 10, "cnn"
    ),
}
"""The Fs ``--f NAME`` trains here: the default digits CNN (8x8 digits), ParM's base-MLP for 28x28 images given
flat (784 pixels) and a small residual CNN for 28x28 images (both 10 classes: Fashion-MNIST's shape)."""


def builtin_f(name: str) -> BuiltinF:
    """The built-in F called ``name``; the error lists the names."""
    try:
        return BUILTIN_FS[name]
    except KeyError:
        raise ConfigError(f"unknown built-in F {name!r}; known: {sorted(BUILTIN_FS)}") from None


def fit_queries(splits: DataSplits, query_shape: tuple[int, ...], what: str) -> DataSplits:
    """``splits`` with each query shaped as F takes it: unchanged, or flattened/reshaped when F takes the same
    number of values in another layout (28x28 images for a flat 784-pixel MLP); else a clear error."""
    have = splits.train.query_shape
    if have == tuple(query_shape):
        return splits
    if math.prod(have) != math.prod(query_shape):
        raise ConfigError(f"{what} takes queries of shape {list(query_shape)}, the data has {list(have)}")

    def shaped(data: Dataset) -> Dataset:
        return Dataset(data.x.reshape(len(data), *query_shape), data.y)

    return DataSplits(shaped(splits.train), shaped(splits.val), shaped(splits.test))


@dataclass(frozen=True)
class FSpec:
    """Where F comes from: ``None`` source trains ``builtin`` (the default DigitsCNN, or one of ``BUILTIN_FS``) on
    the data; else an ``.onnx`` file, a TorchScript file or ``package.module:Class`` (with ``weights``). Names
    override what F itself says (torch F)."""

    source: str | None = None
    weights: Path | None = None
    input_name: str | None = None
    output_name: str | None = None
    builtin: BuiltinF = BuiltinF()


@dataclass(frozen=True)
class DataSpec:
    """Where the queries come from: ``None`` is scikit-learn digits; else a named data set (``datasets.DATASETS``, by
    name, e.g. ``Path("fashion-mnist")``), .npy/.npz, a folder of IDX images and labels, an image folder or IDX
    (see ``load_queries``)."""

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
    f_training: TrainResult | None = None
    """How the built-in F trained (None for the user's F)."""
    deployment: CodedDeployment | None = None
    """What was written to the model repository, if one was."""

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


def data_description(data: DataSpec) -> str:
    """The data set in words, for F's description and reports."""
    return str(data.path) if data.path else "scikit-learn digits"


def load_splits(data: DataSpec, seed: int) -> DataSplits:
    """Train/val/test splits of the queries (stratified by label where there are labels), reproducible by seed."""
    if data.path is None:
        return load_digits_splits(seed)
    return split_dataset(load_queries(data.path, data.labels), VAL_FRACTION, TEST_FRACTION, seed)


def train_builtin_f(
    builtin: BuiltinF, splits: DataSplits, checkpoints: Path, seed: int, quick: bool = False, data: str = "digits"
) -> tuple[LoadedF, TrainResult, TrainConfig]:
    """A built-in F trained on the train split of ``splits`` (shaped for it, ``fit_queries``; checkpointed under
    ``checkpoints``); ``data`` names the data set in F's description."""
    cfg = dataclasses.replace(builtin.training, seed=seed)
    if quick:
        cfg = cfg.quick()
    checkpoint = checkpoints / f"f-{fingerprint(builtin, cfg, splits.train.x)}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builtin.build()
        result = train_classifier(model, splits.train, splits.val, cfg, checkpoint=checkpoint)
    description = f"{builtin.name} trained on {data}"
    return torch_f(model, builtin.input_spec, builtin.output_spec, description), result, cfg


def code_checkpoint(
    checkpoints: Path, code: CodeConfig, f_key: str, splits: DataSplits, seed: int, quick: bool
) -> Path:
    """Where a code's training state lives: named by the code, F, the data, the seed and the training config (the
    resolved one, so a changed default recipe trains afresh instead of meeting a checkpoint of the old one)."""
    key = fingerprint(code, code.training(), f_key, splits.train.x, seed, quick)
    return checkpoints / f"{code.slug}-{key}.pt"


def f_key(spec: FSpec, f: LoadedF) -> str:
    """What identifies F's weights for checkpoint names: the user's files, or the default F's own weights."""
    if spec.source is not None:
        source = Path(spec.source)
        return fingerprint(spec, source if source.is_file() else spec.source, spec.weights or "")
    return fingerprint(*(p.detach().numpy() for p in f.module.state_dict().values()))


class OfflinePipeline:
    """The steps every offline job chains, on one F and one data set: ``f`` is prepared once (the built-in F trained,
    or the user's loaded), then ``train`` (code -> trained networks and their degraded-mode accuracy on the test
    split), ``export`` (ONNX and TorchScript, verified) and ``write_repository``.

    Checkpoints go under ``checkpoints`` (default ``work_dir/checkpoints``), named by everything their training
    depends on, so a rerun reloads instead of retraining. ``quick`` cuts every training to a few steps.
    """

    def __init__(
        self,
        work_dir: Path,
        f_spec: FSpec | None = None,
        data: DataSpec | None = None,
        seed: int = 0,
        quick: bool = False,
        checkpoints: Path | None = None,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.f_spec, self.data = f_spec or FSpec(), data or DataSpec()
        self.seed, self.quick = seed, quick
        self.checkpoints = Path(checkpoints) if checkpoints is not None else self.work_dir / "checkpoints"
        self.splits = load_splits(self.data, seed)
        # the images' shape [C, H, W] as the data holds them: image codes on an F that takes them flat need it
        self.image_shape = self.splits.train.query_shape if len(self.splits.train.query_shape) == 3 else None
        self.f_training: TrainResult | None = None
        with torch_threads():
            if self.f_spec.source is None:
                builtin = self.f_spec.builtin
                self.splits = fit_queries(self.splits, builtin.query_shape, builtin.name)
                self.f, self.f_training, cfg = train_builtin_f(
                    builtin, self.splits, self.checkpoints, seed, quick, data_description(self.data)
                )
                self.f_record = {
                    "f": self.f.description,
                    "f_config": dataclasses.asdict(cfg),
                    "f_training": _summary(self.f_training),
                }
            else:
                spec = self.f_spec
                self.f = load_f(spec.source, self.splits.train, spec.weights, spec.input_name, spec.output_name)
                self.f_record = {"f": self.f.description}
        self.f_key = f_key(self.f_spec, self.f)

    def code_for_f(self, code: CodeConfig) -> CodeConfig:
        """``code`` with the image shape of the data when F takes the images flat and the code says none."""
        if code.image_shape is None and self.image_shape and len(self.f.input.dims) != 3:
            return dataclasses.replace(code, image_shape=self.image_shape)
        return code

    def train(self, code: CodeConfig) -> tuple[TrainedCode, DegradedAccuracy]:
        """Trains (or reloads) ``code`` on the training split and measures its degraded-mode accuracy on the test
        split."""
        code = self.code_for_f(code)
        f, splits = self.f, self.splits
        with torch_threads():
            checkpoint = code_checkpoint(self.checkpoints, code, self.f_key, splits, self.seed, self.quick)
            trained = train_code(code, f, splits.train, splits.val, self.seed, checkpoint, quick=self.quick)
            degraded = degraded_accuracy(
                f.module,
                trained.parity_side(f.module),
                splits.test,
                code.k,
                trained.encoder,
                trained.decoder,
                seed=self.seed,
            )
        logger.info("%s: test accuracy %s", code.label, degraded.summary())
        return trained, degraded

    def export(self, trained: TrainedCode, out_dir: Path) -> ExportedCode:
        """Every network of the code (and F, unless it is the user's ONNX file) to ONNX and TorchScript under
        ``out_dir``, each checked against torch on fresh inputs."""
        with torch_threads():
            return export_code(trained, self.f, Path(out_dir), self.seed)

    def deployment(
        self,
        code: CodeConfig,
        name: str,
        max_batch_size: int,
        settings: OrchestratorSettings | None = None,
        **instances: int,
    ) -> CodedDeployment:
        """The coded deployment of F and ``code`` (``instances``: ``f_instances``, ``parity_instances``)."""
        return CodedDeployment(
            name=name,
            inputs=(self.f.input,),
            outputs=(self.f.output,),
            max_batch_size=max_batch_size,
            k=code.k,
            code=code.code,
            r=code.r,
            settings=settings or OrchestratorSettings(),
            **instances,
        )


@dataclass(frozen=True)
class RepositoryTarget:
    """Where ``run_export`` writes the model repository, and what it serves F as."""

    out: Path
    name: str
    max_batch_size: int
    settings: OrchestratorSettings = field(default_factory=OrchestratorSettings)


def run_export(
    out_dir: Path,
    code: CodeConfig | None = None,
    f_spec: FSpec | None = None,
    data: DataSpec | None = None,
    seed: int = 0,
    quick: bool = False,
    repository: RepositoryTarget | None = None,
) -> ExportArtifacts:
    """``parm export`` (and ``parm train``, without ``repository``): trains (or reloads) F's code, reports its
    test-split accuracy, exports and verifies every network, records the run in ``training.json``, and writes the
    model repository.

    ``quick`` trains a few steps only (smoke tests): the files are complete, the accuracies meaningless. Results
    are reproducible for a seed on one machine (thread count and CPU kind can change the last bits of training).
    """
    out_dir = Path(out_dir)
    code = code or CodeConfig()
    started = time.perf_counter()
    pipeline = OfflinePipeline(out_dir, f_spec, data, seed, quick)
    code = pipeline.code_for_f(code)
    trained, report = pipeline.train(code)
    train_seconds = time.perf_counter() - started
    exported = pipeline.export(trained, out_dir)
    splits, f, data = pipeline.splits, pipeline.f, pipeline.data
    logger.info("%s: trained in %.1f s", code.label, train_seconds)
    record = {
        "code": code.code,
        "k": code.k,
        "r": code.r,
        "seed": seed,
        "quick": quick,
        "code_config": dataclasses.asdict(code),
        **pipeline.f_record,
        "parity_models": [type(m).__name__ for m in trained.parity_models] or "F answers the parities",
        "data": {
            "source": str(data.path) if data.path else "sklearn.datasets.load_digits",
            "train": len(splits.train),
            "val": len(splits.val),
            "test": len(splits.test),
        },
        "code_training_config": dataclasses.asdict(code.training(quick)),
        "code_training": None if trained.result is None else _summary(trained.result),
        "test_accuracy": dataclasses.asdict(report),
        "train_seconds": round(train_seconds, 2),
        "torch_threads": _threads(),
        "torch_version": torch.__version__,
        **git_state(),
    }
    training_json = out_dir / "training.json"
    training_json.write_text(json.dumps(record, indent=2) + "\n")
    deployment = None
    if repository is not None:
        deployment = pipeline.deployment(code, repository.name, repository.max_batch_size, repository.settings)
        write_repository(repository.out, deployment, exported.onnx)
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
        f_training=pipeline.f_training,
        deployment=deployment,
    )


def _threads() -> int:
    with torch_threads():
        return torch.get_num_threads()


def _summary(result: TrainResult) -> dict[str, object]:
    return {
        "best_epoch": result.best_epoch,
        "best_val_metric": result.best_val_metric,
        "steps": result.steps,
        "history": [dataclasses.asdict(h) for h in result.history],
    }

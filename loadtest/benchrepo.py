"""The benchmark's model repository: a heavier F, its ParM parity model(s), and the models the baselines call.

The default F (``DigitsCNN``) answers in well under a millisecond, less than the orchestration around it, which would
make any tail-latency comparison about overheads rather than about stragglers. The benchmark therefore serves
``DeepDigitsCNN`` (a residual CNN on the same digits, about 4 ms per query on one CPU thread), trained here with the
export package's own training loops and exporters, and writes, next to the usual coded deployment:

- ``deep``, ``deep_parity``, ``deep_encoder``, ``deep_decoder``, ``deep_coded``: ParM with k = 2 (F with
  ``f_instances`` instances, the parity model with ``parity_instances``);
- ``deep_k3_coded`` etc. for each further k asked for (their own F and parity models, same instance counts);
- ``deep_equal``: F alone with ``f_instances + parity_instances`` instances ("equal resources", also the target of
  hedged requests). F alone with fewer instances (no redundancy) is ``deep`` itself.
- ``deep_coded_eager``: the k = 2 coded endpoint with ParM's eager parity policy, side by side with the default.
- ``deep_coded_hedged``: the k = 2 coded endpoint that also hedges a late member on F while a free F instance is
  likely (``hedge_below_load`` = F's instance count), side by side with the default (which never hedges on one
  server).
- ``deep_relay``: a Python-backend model that only relays each request to ``deep`` over BLS (``relay_model.py``):
  the floor of any orchestrator inside the Python backend.

Everything lands under one folder (gitignored ``runs/bench/models`` by default) with a ``manifest.json`` that
records the spec, the model names, F's measured inference time and the parity models' degraded-mode accuracy; a later
build with the same spec reuses it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

from parm.backend.orchestrator import ParityPolicy
from parm.errors import ConfigError
from parm.export.code_training import CodeConfig, onnx_file, parity_roles
from parm.export.models import DIGITS_INPUT, DIGITS_INPUT_SPEC, DIGITS_OUTPUT, DIGITS_OUTPUT_SPEC, DIGITS_QUERY_SHAPE
from parm.export.pipeline import BuiltinF, FSpec, OfflinePipeline
from parm.export.repository import CodedDeployment, install_orchestrator, model_configs, write_repository
from parm.export.train import TrainConfig

from .configs import BenchModelSpec

logger = logging.getLogger(__name__)

F_NAME = "deep"
EQUAL_SUFFIX = "_equal"
EAGER_SUFFIX = "_eager"
HEDGED_SUFFIX = "_hedged"
RELAY_SUFFIX = "_relay"
RELAY_INSTANCES = 4
"""Enough relay processes that requests never queue for one at the benchmark's rates."""
RELAY_SOURCE = Path(__file__).with_name("relay_model.py")
MAX_BATCH_SIZE = 32
MANIFEST = "manifest.json"
CODE = "sum"


@dataclass(frozen=True)
class BenchRepository:
    """A built benchmark repository: where it is and which model each scheme calls."""

    root: Path
    f_name: str
    equal_model: str
    coded: dict[int, str]
    """k -> the coded endpoint of that k."""
    f_models: dict[int, str]
    """k -> the F model its coded endpoint calls (k = 2's is also the "F alone, fewer instances" baseline)."""
    input_name: str
    output_name: str
    f_instances: int
    parity_instances: int
    f_inference_ms: float
    """F's median inference time, one query, one onnxruntime thread, measured at build time outside Triton."""
    coded_eager: str | None = None
    """The first k's coded endpoint with ``parity_policy=eager`` (ParM's own policy), beside the default one."""
    coded_hedged: str | None = None
    """The first k's coded endpoint that hedges late members while F has spare instances, beside the default one."""
    relay_model: str | None = None
    manifest: dict[str, object] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The Triton model repository."""
        return self.root / "repository"

    @property
    def f_onnx(self) -> Path:
        return self.path / self.f_name / "1" / "model.onnx"

    @property
    def total_instances(self) -> int:
        return self.f_instances + self.parity_instances


def f_train_config(spec: BenchModelSpec) -> TrainConfig:
    """F's training, with a budget cut to what a deeper F allows on a small CPU (the pipeline applies ``quick``)."""
    return TrainConfig(epochs=spec.f_epochs, batch_size=64, lr=2e-3, seed=spec.seed)


def parity_train_config(spec: BenchModelSpec) -> TrainConfig:
    """ParM's parity training, with a budget cut to what a deeper F allows on a small CPU."""
    return TrainConfig(
        epochs=spec.parity_epochs,
        batch_size=128,
        lr=2e-3,
        seed=spec.seed,
        groups_per_epoch=spec.parity_groups_per_epoch,
    )


def f_predictions(repo: BenchRepository, queries: np.ndarray) -> np.ndarray:
    """F's own predicted class for each query (onnxruntime on F's ONNX file), to judge rebuilt answers."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(repo.f_onnx), providers=["CPUExecutionProvider"])
    out = np.concatenate(
        [session.run(None, {repo.input_name: queries[i : i + 64]})[0] for i in range(0, len(queries), 64)]
    )
    return out.argmax(axis=1)


def _names(k: int) -> str:
    return F_NAME if k == 2 else f"{F_NAME}_k{k}"


def measure_inference_ms(onnx_file: Path, repeats: int = 200) -> float:
    """Median time of one query through the ONNX file with one onnxruntime thread (as the CPU backend runs it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, *DIGITS_QUERY_SHAPE), dtype=np.float32)
    for _ in range(20):
        session.run(None, {DIGITS_INPUT: x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {DIGITS_INPUT: x})
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def load_bench_repository(root: Path) -> BenchRepository:
    """Reads a built repository's manifest; ``ConfigError`` if there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{root} holds no benchmark repository (no {MANIFEST}); build it with `parm bench --build`")
    manifest = json.loads(path.read_text())
    return BenchRepository(
        root=Path(root),
        f_name=manifest["f_name"],
        equal_model=manifest["equal_model"],
        coded={int(k): name for k, name in manifest["coded"].items()},
        f_models={int(k): name for k, name in manifest["f_models"].items()},
        input_name=manifest["input_name"],
        output_name=manifest["output_name"],
        f_instances=manifest["spec"]["f_instances"],
        parity_instances=manifest["spec"]["parity_instances"],
        f_inference_ms=manifest["f_inference_ms"],
        coded_eager=manifest.get("coded_eager"),
        coded_hedged=manifest.get("coded_hedged"),
        relay_model=manifest.get("relay_model"),
        manifest=manifest,
    )


def ensure_bench_repository(root: Path, spec: BenchModelSpec, rebuild: bool = False) -> BenchRepository:
    """The repository under ``root``: reused when its manifest records the same spec, else (re)built."""
    root = Path(root)
    if not rebuild and (root / MANIFEST).is_file():
        existing = load_bench_repository(root)
        if existing.manifest.get("spec") == spec.as_json() and _exports_exist(root, spec):
            logger.info("reusing the trained benchmark models in %s", root)
            write_bench_repository(root, spec)
            return load_bench_repository(root)
        logger.info("the benchmark repository in %s was built from another spec: rebuilding", root)
    return build_bench_repository(root, spec)


def write_coded_variant(repository: Path, deployment: CodedDeployment, name: str) -> Path:
    """``deployment``'s coded endpoint under another name (same F, parity and code models): the same code run
    with other orchestrator parameters, side by side with the original."""
    config = model_configs(deployment)[deployment.names.coded]
    config.name = name
    model_dir = repository / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    install_orchestrator(model_dir / "1")
    return model_dir


def write_f_only_model(repository: Path, deployment: CodedDeployment, name: str, instances: int, onnx: Path) -> Path:
    """F's own config (as the repository writer generates it) under another name and instance count: the model the
    equal-resources and hedging baselines call."""
    config = model_configs(deployment)[deployment.names.f]
    config.name = name
    if len(config.instance_group) != 1:
        raise ConfigError(f"F's config has {len(config.instance_group)} instance groups; expected one")
    config.instance_group[0].count = instances
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    shutil.copyfile(onnx, model_dir / "1" / "model.onnx")
    return model_dir


def write_relay_model(repository: Path, deployment: CodedDeployment, name: str) -> Path:
    """A Python-backend model with F's signature that relays every request to F over BLS (``relay_model.py``)."""
    config = model_configs(deployment)[deployment.names.f]
    config.name = name
    config.backend = "python"
    kind = config.instance_group[0].kind
    del config.instance_group[:]
    config.instance_group.add(kind=kind, count=RELAY_INSTANCES)
    config.parameters.clear()
    config.parameters["f_model"].string_value = deployment.names.f
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    shutil.copyfile(RELAY_SOURCE, model_dir / "1" / "model.py")
    return model_dir


def build_bench_repository(root: Path, spec: BenchModelSpec) -> BenchRepository:
    """Trains F (``DeepDigitsCNN``) and one ParM parity model per k, exports and verifies them, writes the repository.

    Runs the export package's offline pipeline (``OfflinePipeline``: F trained once, then for each k the code trained
    and measured, exported and verified), with its checkpoints under ``root/training``.
    """
    root = Path(root)
    builtin = BuiltinF(
        "DeepDigitsCNN",
        (("width", spec.width), ("blocks", spec.blocks), ("upsample", spec.upsample)),
        f_train_config(spec),
    )
    started = time.perf_counter()
    accuracies: dict[str, object] = {}
    logger.info("training F = %s", builtin.name)
    pipeline = OfflinePipeline(root / "training", FSpec(builtin=builtin), seed=spec.seed, quick=spec.quick)
    for k in spec.ks:
        logger.info("training the ParM parity model for k=%d", k)
        trained, report = pipeline.train(CodeConfig(CODE, k, train=parity_train_config(spec)))
        pipeline.export(trained, _export_dir(root, k))
        accuracies[str(k)] = {
            "f_test_accuracy": report.f_accuracy,
            "degraded_test_accuracy": report.degraded_accuracy,
            "degraded_agreement_with_f": report.degraded_agreement_with_f,
            "parity_best_epoch": None if trained.result is None else trained.result.best_epoch,
        }
    f_ms = measure_inference_ms(onnx_file(_export_dir(root, spec.ks[0]), "f"))
    manifest = {
        "spec": spec.as_json(),
        "f_name": F_NAME,
        "f_architecture": builtin.name,
        "f_parameters": sum(p.numel() for p in pipeline.f.module.parameters()),
        "f_inference_ms": round(f_ms, 3),
        "f_best_epoch": None if pipeline.f_training is None else pipeline.f_training.best_epoch,
        "accuracy": accuracies,
        "build_seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    write_bench_repository(root, spec)
    logger.info("benchmark repository written to %s (F %.2f ms per query)", root / "repository", f_ms)
    return load_bench_repository(root)


def _export_dir(root: Path, k: int) -> Path:
    return Path(root) / "training" / f"k{k}"


ROLES = ("f", *parity_roles(1), "encoder", "decoder")
"""The exported networks of a ParM code with one parity model (``export_code``'s roles)."""


def _exports_exist(root: Path, spec: BenchModelSpec) -> bool:
    return all(onnx_file(_export_dir(root, k), role).is_file() for k in spec.ks for role in ROLES)


def write_bench_repository(root: Path, spec: BenchModelSpec) -> Path:
    """(Re)writes the Triton repository from the exported networks: every config, and a fresh copy of the
    orchestrator, so a benchmark always serves the orchestrator of the working tree. Cheap: no training."""
    root = Path(root)
    repository = root / "repository"
    repository.mkdir(parents=True, exist_ok=True)
    coded, f_models = {}, {}
    for k in spec.ks:
        export_dir = _export_dir(root, k)
        deployment = CodedDeployment(
            name=_names(k),
            inputs=(DIGITS_INPUT_SPEC,),
            outputs=(DIGITS_OUTPUT_SPEC,),
            max_batch_size=MAX_BATCH_SIZE,
            k=k,
            f_instances=spec.f_instances,
            parity_instances=spec.parity_instances,
        )
        write_repository(repository, deployment, {role: onnx_file(export_dir, role) for role in ROLES})
        coded[str(k)], f_models[str(k)] = deployment.names.coded, deployment.names.f
        if k == spec.ks[0]:
            total = spec.f_instances + spec.parity_instances
            write_f_only_model(repository, deployment, F_NAME + EQUAL_SUFFIX, total, onnx_file(export_dir, "f"))
            coded_eager = deployment.names.coded + EAGER_SUFFIX
            eager = dataclasses.replace(deployment.settings, parity_policy=ParityPolicy.EAGER)
            write_coded_variant(repository, dataclasses.replace(deployment, settings=eager), coded_eager)
            coded_hedged = deployment.names.coded + HEDGED_SUFFIX
            hedging = dataclasses.replace(deployment.settings, hedge_below_load=float(spec.f_instances))
            write_coded_variant(repository, dataclasses.replace(deployment, settings=hedging), coded_hedged)
            write_relay_model(repository, deployment, F_NAME + RELAY_SUFFIX)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest.update(
        equal_model=F_NAME + EQUAL_SUFFIX,
        coded=coded,
        coded_eager=coded_eager,
        coded_hedged=coded_hedged,
        relay_model=F_NAME + RELAY_SUFFIX,
        f_models=f_models,
        input_name=DIGITS_INPUT,
        output_name=DIGITS_OUTPUT,
    )
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return repository

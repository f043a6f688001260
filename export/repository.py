"""Writes a deployable Triton model repository for one F and its code: configs generated from one typed spec.

Layout for F named ``digits``: ``digits`` (F), ``digits_parity`` (parity model), ``digits_encoder``,
``digits_decoder`` (all ``backend: "onnxruntime"``, ``KIND_AUTO``) and ``digits_coded`` (the Python-backend
orchestrator, with its core copied in, so the repository is self-contained and deploys unchanged to a stock Triton
container or to the embedded CPU server).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from parm.backend.orchestrator import OrchestratorConfig, TensorSpec
from parm.backend.orchestrator.contract import (
    CODED_SUFFIX,
    DECODER_AVAILABLE_INPUT,
    DECODER_OUTPUT,
    DECODER_OUTPUTS_INPUT,
    DECODER_PARITY_INPUT,
    DECODER_SUFFIX,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    ENCODER_SUFFIX,
    PARITY_SUFFIX,
    RECONSTRUCTED_OUTPUT,
)
from parm.backend.orchestrator.tensors import triton_type

BACKEND_SOURCE = Path(__file__).resolve().parents[1] / "python_backend"
ORCHESTRATOR_PACKAGE = "parm_orchestrator"
"""Name under which the orchestrator core is copied beside the coded model's ``model.py``."""


@dataclass(frozen=True)
class ModelNames:
    """The Triton model names of one coded deployment, all derived from F's name."""

    f: str

    @property
    def parity(self) -> str:
        return self.f + PARITY_SUFFIX

    @property
    def encoder(self) -> str:
        return self.f + ENCODER_SUFFIX

    @property
    def decoder(self) -> str:
        return self.f + DECODER_SUFFIX

    @property
    def coded(self) -> str:
        return self.f + CODED_SUFFIX


@dataclass(frozen=True)
class CodedDeployment:
    """One F, its ParM code and the orchestrator's settings: the single spec every config is generated from.

    F is served without a dynamic batcher on purpose: batching two members of one coding group into a single F
    execution would put them in one failure domain, and one paused instance would erase both.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    k: int = 2
    f_instances: int = 2
    parity_instances: int = 1
    decode_after_ms: float = 0.0
    request_timeout_ms: float = 1000.0
    fill_timeout_ms: float = 5.0
    filler_cache_size: int = 64
    max_in_flight: int = 1024
    max_parity_in_flight: int = 8
    parity_cooldown_ms: float = 5000.0

    def __post_init__(self) -> None:
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise ValueError(
                f"F '{self.name}' has {len(self.inputs)} inputs and {len(self.outputs)} outputs; the code networks "
                "written here take exactly one of each"
            )

    @property
    def names(self) -> ModelNames:
        return ModelNames(self.name)

    def orchestrator_parameters(self) -> dict[str, str]:
        names = self.names
        return {
            "scheme": "parm",
            "k": str(self.k),
            "f_models": names.f,
            "parity_models": names.parity,
            "encoder_model": names.encoder,
            "decoder_model": names.decoder,
            "decode_after_ms": f"{self.decode_after_ms:g}",
            "request_timeout_ms": f"{self.request_timeout_ms:g}",
            "fill_timeout_ms": f"{self.fill_timeout_ms:g}",
            "filler_cache_size": str(self.filler_cache_size),
            "max_in_flight": str(self.max_in_flight),
            "max_parity_in_flight": str(self.max_parity_in_flight),
            "parity_cooldown_ms": f"{self.parity_cooldown_ms:g}",
        }


def model_configs(deployment: CodedDeployment) -> dict[str, mc.ModelConfig]:
    """Every model's config, keyed by model name."""
    names = deployment.names
    f_config = _onnx_config(
        names.f, deployment.inputs, deployment.outputs, deployment.max_batch_size, deployment.f_instances
    )
    parity_config = _onnx_config(
        names.parity, deployment.inputs, deployment.outputs, deployment.max_batch_size, deployment.parity_instances
    )
    encoder_config = _onnx_config(
        names.encoder,
        tuple(_stacked(ENCODER_INPUT, spec) for spec in deployment.inputs[:1]),
        tuple(_stacked(ENCODER_OUTPUT, spec, lead=1) for spec in deployment.inputs[:1]),
        max_batch_size=0,
        instances=1,
    )
    out = deployment.outputs[0]
    decoder_config = _onnx_config(
        names.decoder,
        (
            _stacked(DECODER_PARITY_INPUT, out, lead=1),
            _stacked(DECODER_OUTPUTS_INPUT, out),
            TensorSpec(DECODER_AVAILABLE_INPUT, np.dtype(np.float32), (-1,)),
        ),
        (_stacked(DECODER_OUTPUT, out),),
        max_batch_size=0,
        instances=1,
    )
    coded_config = mc.ModelConfig(name=names.coded, backend="python", max_batch_size=deployment.max_batch_size)
    _add_tensors(coded_config.input, deployment.inputs)
    _add_tensors(coded_config.output, deployment.outputs)
    coded_config.output.add(name=RECONSTRUCTED_OUTPUT, data_type=mc.DataType.Value("TYPE_BOOL"), dims=[1])
    coded_config.instance_group.add(kind=mc.ModelInstanceGroup.Kind.KIND_AUTO, count=1)
    for key, value in deployment.orchestrator_parameters().items():
        coded_config.parameters[key].string_value = value
    configs = [f_config, parity_config, encoder_config, decoder_config, coded_config]
    return {config.name: config for config in configs}


def orchestrator_config(config: mc.ModelConfig) -> OrchestratorConfig:
    """Parses a coded model's config the way Triton hands it to ``initialize`` (JSON), validating it."""
    as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return OrchestratorConfig.from_model_config(as_json)


def write_repository(out_dir: Path, deployment: CodedDeployment, onnx_files: dict[str, Path]) -> Path:
    """Writes (or rewrites) the repository; ``onnx_files`` maps "f", "parity", "encoder", "decoder" to files."""
    missing = {"f", "parity", "encoder", "decoder"} - onnx_files.keys()
    if missing:
        raise ValueError(f"write_repository needs ONNX files for {sorted(missing)}")
    configs = model_configs(deployment)
    orchestrator_config(configs[deployment.names.coded])
    names = deployment.names
    roles = {names.f: "f", names.parity: "parity", names.encoder: "encoder", names.decoder: "decoder"}
    out_dir.mkdir(parents=True, exist_ok=True)
    for model_name, config in configs.items():
        model_dir = out_dir / model_name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        version_dir = model_dir / "1"
        version_dir.mkdir(parents=True)
        (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
        if model_name in roles:
            shutil.copyfile(onnx_files[roles[model_name]], version_dir / "model.onnx")
        else:
            install_orchestrator(version_dir)
    return out_dir


def f_model_config(deployment: CodedDeployment, name: str, instances: int) -> mc.ModelConfig:
    """F's own config under another model name and instance count, without the code: the models baselines call
    (e.g. ``<f>_equal``, F alone with as many instances as the coded deployment uses in total)."""
    if instances < 1:
        raise ValueError(f"model '{name}' needs at least one instance, got {instances}")
    return _onnx_config(name, deployment.inputs, deployment.outputs, deployment.max_batch_size, instances)


def write_f_model(out_dir: Path, deployment: CodedDeployment, name: str, instances: int, onnx_file: Path) -> Path:
    """Writes (or rewrites) one F-only model (``f_model_config``) into the repository ``out_dir``."""
    config = f_model_config(deployment, name, instances)
    model_dir = out_dir / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    shutil.copyfile(onnx_file, model_dir / "1" / "model.onnx")
    return model_dir


def install_orchestrator(version_dir: Path) -> None:
    """Copies the adapter (as ``model.py``) and the orchestrator core into a coded model's version folder."""
    shutil.copyfile(BACKEND_SOURCE / "triton_model.py", version_dir / "model.py")
    target = version_dir / ORCHESTRATOR_PACKAGE
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(BACKEND_SOURCE / "orchestrator", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def read_config(path: Path) -> mc.ModelConfig:
    """Parses a ``config.pbtxt``."""
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def _onnx_config(
    name: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], max_batch_size: int, instances: int
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend="onnxruntime", max_batch_size=max_batch_size)
    _add_tensors(config.input, inputs)
    _add_tensors(config.output, outputs)
    config.instance_group.add(kind=mc.ModelInstanceGroup.Kind.KIND_AUTO, count=instances)
    return config


def _add_tensors(field, specs: tuple[TensorSpec, ...]) -> None:
    for spec in specs:
        field.add(name=spec.name, data_type=mc.DataType.Value(triton_type(spec.dtype)), dims=list(spec.dims))


def _stacked(name: str, spec: TensorSpec, lead: int = -1) -> TensorSpec:
    """A code network's tensor: a leading stack axis (k members, any; or r = 1 parity) and a batch axis."""
    return TensorSpec(name, spec.dtype, (lead, -1, *spec.dims))

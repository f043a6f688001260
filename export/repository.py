"""Writes a deployable Triton model repository for one F and its code: configs generated from one typed spec.

Layout for F named ``digits``: ``digits`` (F), the parity models (``digits_parity`` for ParM's one, or
``digits_parity_0`` .. ``digits_parity_{r-1}``; none for codes whose parities F answers: learned codes, Berrut),
``digits_encoder``, ``digits_decoder`` (all ``backend: "onnxruntime"``, ``KIND_AUTO``) and ``digits_coded`` (the
Python-backend orchestrator, with its core copied in, so the repository is self-contained and deploys unchanged to a
stock Triton container or to the embedded CPU server). Every code is served by the same orchestrator: only its
``parity_models`` (r of them, F's name for F-answered parities), ``k`` and the code networks change.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from parm.backend.orchestrator import OrchestratorConfig, OrchestratorSettings, TensorSpec
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
from parm.errors import ConfigError, ExportError

from .code_registry import CodeShape, ParityKind, get_code
from .code_training import parity_roles

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

    def parities(self, r: int) -> tuple[str, ...]:
        """The names of r trained parity models: ``<f>_parity`` for one, ``<f>_parity_0``.. for more (``<f>_`` and
        the role of their exported file, ``parity_roles``)."""
        return tuple(f"{self.f}_{role}" for role in parity_roles(r))

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
    """One F, its code, the instance counts and the orchestrator's settings: the single spec every config is
    generated from.

    F is served without a dynamic batcher on purpose: batching two members of one coding group into a single F
    execution would put them in one failure domain, and one paused instance would erase both.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    k: int = 2
    code: str = "sum"
    r: int = 1
    f_instances: int = 2
    parity_instances: int = 1
    settings: OrchestratorSettings = field(default_factory=OrchestratorSettings)
    """The orchestrator's tunables (policies, time limits, bounds, workers), written to ``<F>_coded``'s parameters
    as they are; a variant is ``dataclasses.replace(deployment.settings, ...)``."""

    def __post_init__(self) -> None:
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise ConfigError(
                f"F '{self.name}' has {len(self.inputs)} inputs and {len(self.outputs)} outputs; the code networks "
                "written here take exactly one of each"
            )
        get_code(self.code).check(self.k, self.r)

    @property
    def names(self) -> ModelNames:
        return ModelNames(self.name)

    @property
    def trained_parities(self) -> tuple[str, ...]:
        """The parity models this deployment serves (none when F answers the parities)."""
        if get_code(self.code).parity is ParityKind.F:
            return ()
        return self.names.parities(self.r)

    @property
    def parity_targets(self) -> tuple[str, ...]:
        """The model each of the r parity queries goes to, in order."""
        return self.trained_parities or (self.names.f,) * self.r

    @property
    def parity_output(self) -> TensorSpec:
        """One parity answer as a served tensor: F's output, shaped as the code's parity answers are
        (``Code.parity_output_shape``: F's own shape, or the collage's [k, *o], one head per member)."""
        out = self.outputs[0]
        shape = CodeShape(self.k, self.r, tuple(self.inputs[0].dims), tuple(out.dims))
        return dataclasses.replace(out, dims=get_code(self.code).parity_output_shape(shape))

    def orchestrator_config(self) -> OrchestratorConfig:
        """The coded endpoint's whole configuration: F's signature, the code's wiring and the settings."""
        names = self.names
        weights = get_code(self.code).linear_weights
        return OrchestratorConfig(
            **{f.name: getattr(self.settings, f.name) for f in dataclasses.fields(OrchestratorSettings)},
            inputs=self.inputs,
            outputs=self.outputs,
            max_batch_size=self.max_batch_size,
            f_models=(names.f,),
            parity_models=self.parity_targets,
            encoder_model=names.encoder,
            decoder_model=names.decoder,
            k=self.k,
            code_weights=()
            if weights is None
            else tuple(tuple(float(w) for w in row) for row in np.asarray(weights(self.k, self.r))),
        )


def model_configs(deployment: CodedDeployment) -> dict[str, mc.ModelConfig]:
    """Every model's config, keyed by model name."""
    names = deployment.names
    k_lead = -1 if get_code(deployment.code).k_is_dynamic else deployment.k
    r = deployment.r
    f_config = _onnx_config(
        names.f, deployment.inputs, deployment.outputs, deployment.max_batch_size, deployment.f_instances
    )
    parity_out = deployment.parity_output
    parity_configs = [
        _onnx_config(name, deployment.inputs, (parity_out,), deployment.max_batch_size, deployment.parity_instances)
        for name in deployment.trained_parities
    ]
    encoder_config = _onnx_config(
        names.encoder,
        tuple(_stacked(ENCODER_INPUT, spec, lead=k_lead) for spec in deployment.inputs[:1]),
        tuple(_stacked(ENCODER_OUTPUT, spec, lead=r) for spec in deployment.inputs[:1]),
        max_batch_size=0,
        instances=1,
    )
    out = deployment.outputs[0]
    decoder_config = _onnx_config(
        names.decoder,
        (
            _stacked(DECODER_PARITY_INPUT, parity_out, lead=r),
            _stacked(DECODER_OUTPUTS_INPUT, out, lead=k_lead),
            TensorSpec(DECODER_AVAILABLE_INPUT, np.dtype(np.float32), (-1 if k_lead == -1 else k_lead + r,)),
        ),
        (_stacked(DECODER_OUTPUT, out, lead=k_lead),),
        max_batch_size=0,
        instances=1,
    )
    coded_config = mc.ModelConfig(name=names.coded, backend="python", max_batch_size=deployment.max_batch_size)
    _add_tensors(coded_config.input, deployment.inputs)
    _add_tensors(coded_config.output, deployment.outputs)
    coded_config.output.add(name=RECONSTRUCTED_OUTPUT, data_type=mc.DataType.Value("TYPE_BOOL"), dims=[1])
    coded_config.instance_group.add(kind=mc.ModelInstanceGroup.Kind.KIND_AUTO, count=1)
    for key, value in deployment.orchestrator_config().parameters().items():
        coded_config.parameters[key].string_value = value
    configs = [f_config, *parity_configs, encoder_config, decoder_config, coded_config]
    return {config.name: config for config in configs}


def parse_orchestrator_config(config: mc.ModelConfig) -> OrchestratorConfig:
    """Parses a coded model's config the way Triton hands it to ``initialize`` (JSON), validating it."""
    as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return OrchestratorConfig.from_model_config(as_json)


def model_roles(deployment: CodedDeployment) -> dict[str, str]:
    """Each ONNX-served model's name -> its role, the key of its file in ``write_repository``'s ``onnx_files``:
    ``f``, ``encoder``, ``decoder``, and ``parity`` (r = 1) or ``parity_0``.. (r > 1) for trained parity models."""
    names = deployment.names
    roles = {names.f: "f", names.encoder: "encoder", names.decoder: "decoder"}
    for name in deployment.trained_parities:
        roles[name] = name[len(names.f) + 1 :]
    return roles


def write_repository(out_dir: Path, deployment: CodedDeployment, onnx_files: dict[str, Path]) -> Path:
    """Writes (or rewrites) the repository; ``onnx_files`` maps each role of ``model_roles`` to its ONNX file.

    Model folders of this F that the deployment no longer has (e.g. ``digits_parity`` after switching to Berrut)
    are removed, so the repository holds exactly the deployment.
    """
    roles = model_roles(deployment)
    missing = set(roles.values()) - onnx_files.keys()
    if missing:
        raise ExportError(f"write_repository needs ONNX files for {sorted(missing)}")
    configs = model_configs(deployment)
    parse_orchestrator_config(configs[deployment.names.coded])
    out_dir.mkdir(parents=True, exist_ok=True)
    parity_prefix = deployment.names.parity
    for stale in out_dir.glob(parity_prefix + "*"):
        if stale.is_dir() and stale.name not in configs:
            shutil.rmtree(stale)
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
    """A code network's tensor: a leading stack axis (k members, -1 when the code takes any k; or r parities) and a
    batch axis."""
    return TensorSpec(name, spec.dtype, (lead, -1, *spec.dims))

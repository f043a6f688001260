"""Bring your own F: load it from an ONNX file, a TorchScript file, or an importable torch module plus weights.

Every loader returns a ``LoadedF``: F as a torch-callable module (an ONNX F runs in onnxruntime behind a module
wrapper, without gradients), its one input and one output as ``TensorSpec``s taken from F itself (ONNX graph; for
torch, the forward argument's name, the sample's query shape and F's answer to it), and how to build a parity
model for it, by this documented rule:

- a torch module F: F's own architecture, re-initialised (ParM's rule; ``models.build_parity_model``), trained with
  its dropout off (``models.without_dropout``);
- a TorchScript F: the same, on a deep copy of the scripted module with every parameter re-initialised (a scripted
  module's dropout rates are compiled in, so any dropout it has stays);
- an ONNX-only F: no torch architecture exists, so a configurable family: ``cnn`` (``models.FamilyCNN``) for image
  queries [C, H, W], ``mlp`` (``models.FamilyMLP``) otherwise, widened by ``width``.

A learned code trains through F: a torch or TorchScript F as it is, an ONNX F as its graph run by torch operations
(``onnx_graph``: common CNN and MLP operators, checked against onnxruntime on the sample; any other graph is refused
for learned codes, with the operators named). Serving always runs F's own file.

F's answers on the training sample are computed once (``models.predict``) and cached for all of ParM's training, as
ParM does, so an ONNX F costs one onnxruntime pass over the sample.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from parm.backend.orchestrator import TensorSpec

from .data import Dataset
from .errors import ExportError
from .models import build_family_model, build_parity_model
from .onnx_graph import UnsupportedOnnxError, convert_checked

DEFAULT_OUTPUT_NAME = "output"
GRAPH_CHECK_QUERIES = 64
"""Sample queries on which an ONNX F's torch version must answer as onnxruntime does before it is trained through."""


class FSourceError(ExportError, ValueError):
    """F could not be loaded or does not fit the project's needs (one float input, one float output)."""


class FSource(Enum):
    TORCH = "torch"
    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"


class OnnxCallable(nn.Module):
    """An ONNX model run by onnxruntime, called like a torch module with its inputs in graph order; returns its first
    output. No gradients: for evaluation, and for F's answers that training caches once."""

    differentiable = False

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if len(tensors) != len(self.input_names):
            raise FSourceError(f"{self.path.name}: takes inputs {self.input_names}, got {len(tensors)} tensors")
        feed = {
            name: t.detach().cpu().numpy().astype(np.float32, copy=False)
            for name, t in zip(self.input_names, tensors, strict=True)
        }
        return torch.from_numpy(self._session.run(self.output_names[:1], feed)[0])


class OnnxModule(OnnxCallable):
    """An ONNX F: exactly one input and one output."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        if len(self.input_names) != 1 or len(self.output_names) != 1:
            raise FSourceError(
                f"{self.path}: F must have one input and one output, it has inputs {self.input_names} "
                f"and outputs {self.output_names}"
            )
        self.input_name, self.output_name = self.input_names[0], self.output_names[0]


@dataclass(frozen=True)
class LoadedF:
    """F ready for training, evaluation and export."""

    module: nn.Module
    input: TensorSpec
    output: TensorSpec
    source: FSource
    description: str
    onnx_file: Path | None = None
    """The user's own ONNX file, served as it is (torch and TorchScript F are exported to ONNX instead)."""
    graph_module: nn.Module | None = None
    """An ONNX F's graph as torch operations (``onnx_graph``), checked against onnxruntime: what a learned code
    trains through. None for other sources, or when the graph could not be converted (``graph_error`` says why)."""
    graph_error: str = ""

    @property
    def differentiable(self) -> bool:
        return self.source is not FSource.ONNX or self.graph_module is not None

    @property
    def trainable_module(self) -> nn.Module:
        """F as a differentiable torch module, for training through it (learned codes); F's weights stay frozen."""
        if self.source is not FSource.ONNX:
            return self.module
        if self.graph_module is None:
            raise FSourceError(f"{self.description} cannot run as torch operations: {self.graph_error}")
        return self.graph_module

    @property
    def output_size(self) -> int:
        return math.prod(self.output.dims)

    def parity_architecture(self, family: str | None = None, width: int = 1) -> Callable[[], nn.Module]:
        """A builder of fresh parity models by the module docstring's rule; ``family`` overrides it."""
        query_shape = tuple(self.input.dims)
        if family is not None or self.source is FSource.ONNX:
            kind = family or ("cnn" if len(query_shape) == 3 else "mlp")
            return lambda: build_family_model(kind, query_shape, self.output_size, width)
        if self.source is FSource.TORCHSCRIPT:
            if width != 1:
                raise FSourceError("a wider parity model needs a parity family (--parity-arch cnn|mlp) for this F")
            return lambda: _reinitialised_copy(self.module)
        return lambda: build_parity_model(self.module, width=width)


def _reinitialised_copy(module: nn.Module) -> nn.Module:
    """A deep copy of a (scripted) module with fresh weights: Kaiming-uniform matrices and kernels, zero vectors
    (biases), ones for normalisation scales named ``weight`` of 1-D. Seed torch's global RNG first."""
    if isinstance(module, torch.jit.ScriptModule):
        # deepcopy of a scripted module yields non-leaf parameters, which no optimizer takes: save and load instead
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what the user gave us
            torch.jit.save(module, buffer)
            buffer.seek(0)
            fresh = torch.jit.load(buffer, map_location="cpu")
    else:
        fresh = copy.deepcopy(module)
    with torch.no_grad():
        for name, parameter in fresh.named_parameters():
            if parameter.dim() >= 2:
                nn.init.kaiming_uniform_(parameter, a=math.sqrt(5))
            elif name.endswith("weight"):
                nn.init.ones_(parameter)
            else:
                nn.init.zeros_(parameter)
            parameter.requires_grad_(True)
    return fresh.train()


def _check_sample(what: str, query_shape: tuple[int, ...], sample: Dataset) -> None:
    if sample.query_shape != query_shape:
        raise FSourceError(
            f"{what} takes queries of shape {list(query_shape)}, the sample's are {list(sample.query_shape)}"
        )


def _output_spec(module: nn.Module, name: str, sample: Dataset, what: str) -> TensorSpec:
    module.eval()
    with torch.no_grad():
        answer = module(torch.from_numpy(sample.x[:2]))
    if not isinstance(answer, torch.Tensor) or answer.dim() < 2 or not answer.is_floating_point():
        raise FSourceError(f"{what} must return one float tensor [B, *o]; it returned {type(answer).__name__}")
    return TensorSpec(name, np.dtype(np.float32), tuple(answer.shape[1:]))


def _graph_tensor(path: Path, tensor: onnx.ValueInfoProto) -> tuple[str, list[int]]:
    """(name, dims without the batch dim, -1 where symbolic) of a graph input or output, which must be FP32."""
    elem = tensor.type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(elem)
        raise FSourceError(f"{path}: tensor '{tensor.name}' is {kind}; F's input and output must be FP32")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.type.tensor_type.shape.dim]
    return tensor.name, dims[1:]


def load_onnx_f(path: Path, sample: Dataset) -> LoadedF:
    """An ONNX F: names, datatypes and shapes come from its graph (symbolic non-batch dims from the sample)."""
    path = Path(path)
    model = onnx.load(str(path))
    graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(graph_inputs) != 1 or len(model.graph.output) != 1:
        raise FSourceError(f"{path}: F must have one input and one output")
    in_name, in_dims = _graph_tensor(path, graph_inputs[0])
    out_name, out_dims = _graph_tensor(path, model.graph.output[0])
    hint = sample.query_shape
    if len(in_dims) != len(hint) or any(d not in (-1, h) for d, h in zip(in_dims, hint, strict=True)):
        raise FSourceError(f"{path}: F takes queries of shape {in_dims}, the sample's are {list(hint)}")
    query_shape = tuple(hint)
    module = OnnxModule(path)
    output = _output_spec(module, out_name, sample, str(path))
    if any(d not in (-1, o) for d, o in zip(out_dims, output.dims, strict=False)) or len(out_dims) != len(output.dims):
        raise FSourceError(f"{path}: graph output {out_dims} disagrees with F's answer {list(output.dims)}")
    try:
        graph_module, graph_error = convert_checked(path, module, sample.x[:GRAPH_CHECK_QUERIES]), ""
    except UnsupportedOnnxError as error:
        graph_module, graph_error = None, str(error)
    return LoadedF(
        module=module,
        input=TensorSpec(in_name, np.dtype(np.float32), query_shape),
        output=output,
        source=FSource.ONNX,
        description=f"ONNX file {path.name}",
        onnx_file=path,
        graph_module=graph_module,
        graph_error=graph_error,
    )


def _forward_argument(module: nn.Module) -> str | None:
    try:
        parameters = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        parameters = []
    if parameters:
        return parameters[0]
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None and len(schema.arguments) > 1:
        return schema.arguments[1].name  # arguments[0] is self
    return None


def load_torchscript_f(
    path: Path, sample: Dataset, input_name: str | None = None, output_name: str | None = None
) -> LoadedF:
    """A TorchScript F; its input is named after its forward argument (or ``input_name``)."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as err:
            raise FSourceError(f"{path}: not a TorchScript file ({err})") from err
    module.eval()
    name = input_name or _forward_argument(module) or "input"
    return LoadedF(
        module=module,
        input=TensorSpec(name, np.dtype(np.float32), sample.query_shape),
        output=_output_spec(module, output_name or DEFAULT_OUTPUT_NAME, sample, str(path)),
        source=FSource.TORCHSCRIPT,
        description=f"TorchScript file {path.name}",
    )


def load_module_f(
    target: str,
    sample: Dataset,
    weights: Path | None = None,
    input_name: str | None = None,
    output_name: str | None = None,
) -> LoadedF:
    """An importable torch module ``package.module:Class`` (built with no arguments) and its state dict."""
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise FSourceError(f"expected F as 'package.module:Class', got {target!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise FSourceError(f"cannot import F {target!r}: {err}") from err
    module = factory()
    if not isinstance(module, nn.Module):
        raise FSourceError(f"{target} built a {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    module.eval()
    name = input_name or _forward_argument(module) or "input"
    return LoadedF(
        module=module,
        input=TensorSpec(name, np.dtype(np.float32), sample.query_shape),
        output=_output_spec(module, output_name or DEFAULT_OUTPUT_NAME, sample, target),
        source=FSource.TORCH,
        description=f"torch module {target}" + (f" with weights {Path(weights).name}" if weights else ""),
    )


def load_f(
    spec: str,
    sample: Dataset,
    weights: Path | None = None,
    input_name: str | None = None,
    output_name: str | None = None,
) -> LoadedF:
    """F from ``spec``: a ``.onnx`` file, a TorchScript file (``.pt``/``.pth``/``.ts``), or ``package.module:Class``."""
    path = Path(spec)
    if path.suffix == ".onnx":
        if not path.exists():
            raise FSourceError(f"{path}: no such ONNX file")
        return load_onnx_f(path, sample)
    if path.exists():
        return load_torchscript_f(path, sample, input_name, output_name)
    if ":" in spec:
        return load_module_f(spec, sample, weights, input_name, output_name)
    raise FSourceError(f"F {spec!r}: expected an .onnx file, a TorchScript file or 'package.module:Class'")


def torch_f(module: nn.Module, input_spec: TensorSpec, output_spec: TensorSpec, description: str) -> LoadedF:
    """A LoadedF for an F built and trained here (the default digits model)."""
    return LoadedF(module, input_spec, output_spec, FSource.TORCH, description)

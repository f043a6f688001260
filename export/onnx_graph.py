"""An ONNX F as torch operations, so that a learned code can train through it (gradients to F's input).

An ONNX-only F runs in onnxruntime, which gives no gradients; a learned code's encoder is trained through F
(``train.train_learned_code``). ``OnnxGraphModule`` interprets the graph node by node with torch functions, F's
weights frozen as buffers. It covers the operators of common CNN and MLP classifiers (the table ``_OPS``); a graph
with any other operator is refused with their names (``UnsupportedOnnxError``), and ``fsource`` only uses the
module after checking its answers against onnxruntime's on the user's queries. Serving still runs the user's
ONNX file unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional

from .errors import ExportError

Attrs = dict[str, Any]
OPSET = "__opset__"
"""Key under which each node's attributes carry the graph's opset version (some operators changed meaning)."""
Op = Callable[[list[torch.Tensor | None], Attrs], torch.Tensor]
"""One operator: its inputs (None where the node leaves an optional input out) and attributes -> its first output
(the only one the graphs here consume: Dropout's optional mask is never read in inference graphs)."""


class UnsupportedOnnxError(ExportError, ValueError):
    """The graph uses operators (or operator settings) that ``OnnxGraphModule`` does not implement."""


def _pads(attrs: Attrs, spatial: int) -> list[int]:
    """ONNX pads (begin..., end...) as torch's ``F.pad`` order (last dim first, begin then end)."""
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise UnsupportedOnnxError(f"auto_pad={attrs['auto_pad']!r}")
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    begin, end = pads[:spatial], pads[spatial:]
    return [p for axis in reversed(range(spatial)) for p in (begin[axis], end[axis])]


def _conv(inputs: list[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, weight, bias = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
    spatial = weight.dim() - 2
    conv = {1: functional.conv1d, 2: functional.conv2d, 3: functional.conv3d}[spatial]
    x = functional.pad(x, _pads(attrs, spatial))
    return conv(
        x,
        weight,
        bias,
        stride=list(attrs.get("strides", [1] * spatial)),
        dilation=list(attrs.get("dilations", [1] * spatial)),
        groups=int(attrs.get("group", 1)),
    )


def _pool(kind: str) -> Op:
    def run(inputs: list[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
        x = inputs[0]
        kernel = list(attrs["kernel_shape"])
        spatial = len(kernel)
        if attrs.get("dilations", [1] * spatial) != [1] * spatial:
            raise UnsupportedOnnxError(f"{kind} with dilations")
        stride = list(attrs.get("strides", [1] * spatial))
        ceil = bool(attrs.get("ceil_mode", 0))
        pads = _pads(attrs, spatial)
        if kind == "MaxPool":
            x = functional.pad(x, pads, value=float("-inf"))
            pool = {1: functional.max_pool1d, 2: functional.max_pool2d, 3: functional.max_pool3d}[spatial]
            return pool(x, kernel, stride, ceil_mode=ceil)
        if any(pads) and not attrs.get("count_include_pad", 0):
            raise UnsupportedOnnxError("AveragePool with padding that excludes pads from the count")
        x = functional.pad(x, pads)
        pool = {1: functional.avg_pool1d, 2: functional.avg_pool2d, 3: functional.avg_pool3d}[spatial]
        return pool(x, kernel, stride, ceil_mode=ceil)

    return run


def _gemm(inputs: list[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    a, b = inputs[0], inputs[1]
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    out = attrs.get("alpha", 1.0) * (a @ b)
    if len(inputs) > 2 and inputs[2] is not None:
        out = out + attrs.get("beta", 1.0) * inputs[2]
    return out


def _batch_norm(inputs: list[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, scale, bias, mean, var = inputs[:5]
    return functional.batch_norm(x, mean, var, scale, bias, training=False, eps=attrs.get("epsilon", 1e-5))


def _reshape(inputs: list[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, shape = inputs[0], [int(d) for d in inputs[1].tolist()]
    if attrs.get("allowzero", 0):
        raise UnsupportedOnnxError("Reshape with allowzero")
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(shape)])


def _flatten(inputs: list[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x = inputs[0]
    axis = int(attrs.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis  # axis == rank is valid: [N, 1]
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


def _axes(inputs: list[torch.Tensor | None], attrs: Attrs) -> list[int]:
    """Axes from the attribute (opset < 13) or the second input (opset >= 13)."""
    if len(inputs) > 1 and inputs[1] is not None:
        return [int(a) for a in inputs[1].tolist()]
    return list(attrs.get("axes", []))


def _unsqueeze(inputs: list[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x = inputs[0]
    rank = x.dim() + len(_axes(inputs, attrs))
    for axis in sorted(a % rank for a in _axes(inputs, attrs)):
        x = x.unsqueeze(axis)
    return x


def _squeeze(inputs: list[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x = inputs[0]
    axes = _axes(inputs, attrs)
    if not axes:
        return x.squeeze()
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _softmax(log: bool) -> Op:
    """Softmax over ``axis`` (opset >= 13); before opset 13, over every axis from ``axis`` on, as one (default 1)."""

    def run(inputs: list[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
        x, softmax = inputs[0], functional.log_softmax if log else functional.softmax
        if attrs[OPSET] >= 13:
            return softmax(x, dim=int(attrs.get("axis", -1)))
        flat = _flatten([x], {"axis": int(attrs.get("axis", 1))})
        return softmax(flat, dim=1).reshape(x.shape)

    return run


def _gather(inputs: list[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, index = inputs[0], inputs[1]
    axis = int(attrs.get("axis", 0)) % x.dim()
    index = torch.where(index < 0, index + x.shape[axis], index)
    picked = torch.index_select(x, axis, index.reshape(-1))
    return picked.reshape(list(x.shape[:axis]) + list(index.shape) + list(x.shape[axis + 1 :]))


_ONNX_TO_TORCH_DTYPE = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.BOOL: torch.bool,
}


def _cast(inputs: list[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    to = int(attrs["to"])
    if to not in _ONNX_TO_TORCH_DTYPE:
        raise UnsupportedOnnxError(f"Cast to {onnx.TensorProto.DataType.Name(to)}")
    return inputs[0].to(_ONNX_TO_TORCH_DTYPE[to])


_OPS: dict[str, Op] = {
    "Conv": _conv,
    "MaxPool": _pool("MaxPool"),
    "AveragePool": _pool("AveragePool"),
    "GlobalAveragePool": lambda i, a: i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda i, a: i[0].amax(dim=tuple(range(2, i[0].dim())), keepdim=True),
    "Gemm": _gemm,
    "MatMul": lambda i, a: i[0] @ i[1],
    "Add": lambda i, a: i[0] + i[1],
    "Sub": lambda i, a: i[0] - i[1],
    "Mul": lambda i, a: i[0] * i[1],
    "Div": lambda i, a: i[0] / i[1],
    "Relu": lambda i, a: functional.relu(i[0]),
    "LeakyRelu": lambda i, a: functional.leaky_relu(i[0], a.get("alpha", 0.01)),
    "Sigmoid": lambda i, a: torch.sigmoid(i[0]),
    "Tanh": lambda i, a: torch.tanh(i[0]),
    "Softmax": _softmax(log=False),
    "LogSoftmax": _softmax(log=True),
    "BatchNormalization": _batch_norm,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda i, a: i[0].permute(list(a.get("perm", reversed(range(i[0].dim()))))),
    "Concat": lambda i, a: torch.cat([t for t in i if t is not None], dim=int(a["axis"])),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Shape": lambda i, a: torch.tensor(i[0].shape, dtype=torch.int64),
    "Gather": _gather,
    "Cast": _cast,
    "Identity": lambda i, a: i[0],
    "Dropout": lambda i, a: i[0],
}


class OnnxGraphModule(nn.Module):
    """The graph of an ONNX model with one input and one output, run as torch operations (eval semantics: dropout
    off, batch norm with running statistics); its initializers are buffers, so F stays frozen."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        model = onnx.load(str(path))
        graph = model.graph
        unsupported = sorted(
            {node.op_type for node in graph.node if node.op_type not in _OPS and node.op_type != "Constant"}
        )
        if unsupported:
            raise UnsupportedOnnxError(f"{Path(path).name}: operators {unsupported} are not implemented in torch here")
        if any(node.domain not in ("", "ai.onnx") for node in graph.node):
            raise UnsupportedOnnxError(f"{Path(path).name}: custom-domain operators")
        self._constants: dict[str, str] = {}
        for index, tensor in enumerate(graph.initializer):
            self._register(f"init_{index}", tensor.name, numpy_helper.to_array(tensor))
        for index, node in enumerate(graph.node):
            if node.op_type == "Constant":
                value = next((a for a in node.attribute if a.name == "value"), None)
                if value is None:
                    raise UnsupportedOnnxError(f"{Path(path).name}: a Constant without a tensor 'value'")
                self._register(f"const_{index}", node.output[0], numpy_helper.to_array(value.t))
        initializers = {t.name for t in graph.initializer}
        inputs = [i.name for i in graph.input if i.name not in initializers]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise UnsupportedOnnxError(f"{Path(path).name}: needs one input and one output")
        self.input_name, self.output_name = inputs[0], graph.output[0].name
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self._nodes = [
            (
                node.op_type,
                list(node.input),
                node.output[0],
                {OPSET: opset, **{a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}},
            )
            for node in graph.node
            if node.op_type != "Constant"
        ]

    def _register(self, buffer: str, name: str, value: np.ndarray) -> None:
        self.register_buffer(buffer, torch.from_numpy(np.array(value)), persistent=False)
        self._constants[name] = buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {self.input_name: x}
        values.update({name: getattr(self, buffer) for name, buffer in self._constants.items()})
        for op_type, inputs, output, attrs in self._nodes:
            values[output] = _OPS[op_type]([values[name] if name else None for name in inputs], attrs)
        return values[self.output_name]


def convert_checked(
    path: Path, reference: Callable[[torch.Tensor], torch.Tensor], queries: Sequence[np.ndarray]
) -> nn.Module:
    """``OnnxGraphModule`` for ``path``, after checking that it answers ``queries`` as ``reference`` (onnxruntime)
    does, to float tolerance; raises ``UnsupportedOnnxError`` otherwise, whatever went wrong (an ONNX F that cannot
    be converted still serves, and trains every code but the learned ones)."""
    x = torch.from_numpy(np.asarray(queries, dtype=np.float32))
    try:
        module = OnnxGraphModule(path).eval()
        with torch.no_grad():
            mine, theirs = module(x), reference(x)
    except UnsupportedOnnxError:
        raise
    except Exception as error:  # an operator setting the interpreter does not handle: refuse, do not crash the load
        raise UnsupportedOnnxError(
            f"{Path(path).name}: its torch version failed ({type(error).__name__}: {error})"
        ) from error
    if mine.shape != theirs.shape or not torch.allclose(mine, theirs, rtol=1e-3, atol=1e-4):
        raise UnsupportedOnnxError(f"{Path(path).name}: its torch version does not answer as onnxruntime does")
    return module

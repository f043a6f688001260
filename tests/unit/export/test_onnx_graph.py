"""An ONNX F run as torch operations: the same answers as onnxruntime, the same input gradients as the torch module
it was exported from, and a clear refusal for operators it does not implement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from parm.export.fsource import OnnxModule
from parm.export.onnx_export import export_onnx
from parm.export.onnx_graph import OnnxGraphModule, UnsupportedOnnxError, convert_checked


class ManyOps(nn.Module):
    """A CNN touching the operators torch's exporter emits for common classifiers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=2)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 3 * 3 + 8, 10)
        self.mix = nn.Parameter(torch.randn(10, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.leaky_relu(self.norm(self.conv(x)), 0.1)
        y = nn.functional.max_pool2d(y, 2, padding=1)  # 8x8 -> 5x5
        y = torch.tanh(self.strided(y))  # 5x5 -> 3x3 (stride 2, dilation 2, padding 2)
        pooled = nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)
        flat = y.reshape(y.shape[0], -1)  # Shape, Gather, Unsqueeze, Concat, Reshape in the graph
        z = self.head(torch.cat([flat, pooled], dim=1))
        z = torch.sigmoid(z) @ self.mix.t() - nn.functional.avg_pool1d(z.unsqueeze(1), 1).squeeze(1) / 2
        return torch.log_softmax(z, dim=-1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    module = ManyOps()
    module.norm.running_mean.uniform_(-0.5, 0.5)
    module.norm.running_var.uniform_(0.5, 2.0)
    module.eval()
    path = export_onnx(
        module,
        (torch.rand(2, 1, 8, 8),),
        ["x"],
        ["y"],
        {"x": {0: "batch"}, "y": {0: "batch"}},
        tmp_path_factory.mktemp("graph") / "many.onnx",
    )
    return module, path


def test_the_torch_graph_answers_as_onnxruntime_and_the_module(exported) -> None:
    module, path = exported
    graph = OnnxGraphModule(path).eval()
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), OnnxModule(path)(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(graph(x), module(x), rtol=1e-4, atol=1e-5)
    assert not list(graph.parameters()), "F's weights are buffers: training through F leaves it frozen"


def test_gradients_reach_the_input_as_through_the_torch_module(exported) -> None:
    module, path = exported
    graph = OnnxGraphModule(path).eval()
    x = torch.rand(3, 1, 8, 8, requires_grad=True)
    (grad_graph,) = torch.autograd.grad(graph(x).square().sum(), x)
    (grad_module,) = torch.autograd.grad(module(x).square().sum(), x)
    torch.testing.assert_close(grad_graph, grad_module, rtol=1e-4, atol=1e-5)


def _graph_with(op_type: str, tmp_path: Path) -> Path:
    node = helper.make_node(op_type, ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
    )
    path = tmp_path / f"{op_type}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_an_unimplemented_operator_is_refused_by_name(tmp_path: Path) -> None:
    path = _graph_with("Erf", tmp_path)
    with pytest.raises(UnsupportedOnnxError, match=r"operators \['Erf'\] are not implemented"):
        OnnxGraphModule(path)


def test_a_conversion_that_disagrees_with_onnxruntime_is_refused(tmp_path: Path) -> None:
    path = _graph_with("Relu", tmp_path)
    queries = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    convert_checked(path, OnnxModule(path), queries)  # agrees
    with pytest.raises(UnsupportedOnnxError, match="does not answer as onnxruntime does"):
        convert_checked(path, lambda x: x, queries)  # a reference that is not this graph


def _single_node(
    op_type: str,
    extra: dict[str, np.ndarray],
    attrs: dict,
    shape: list[int],
    out_shape: list[int],
    tmp_path: Path,
    opset: int = 17,
) -> Path:
    node = helper.make_node(op_type, ["x", *extra], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", *out_shape])],
        initializer=[onnx.numpy_helper.from_array(value, name) for name, value in extra.items()],
    )
    path = tmp_path / f"{op_type}-{opset}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


RNG = np.random.default_rng(1)
SINGLE_NODES = {
    "BatchNormalization": (
        {
            "scale": RNG.random(3, dtype=np.float32),
            "bias": RNG.random(3, dtype=np.float32),
            "mean": RNG.random(3, dtype=np.float32),
            "var": RNG.random(3, dtype=np.float32) + 0.5,
        },
        {"epsilon": 1e-3},
        [3, 4, 4],
        [3, 4, 4],
    ),
    "Transpose": ({}, {"perm": [0, 2, 1]}, [3, 4], [4, 3]),
    "Softmax": ({}, {"axis": 1}, [3, 5], [3, 5]),
    "Flatten": ({}, {"axis": 3}, [2, 3], [6]),  # axis == rank: [N, 1 * ...]
    "Relu": ({}, {}, [5], [5]),
    "Mul": ({"w": RNG.random(5, dtype=np.float32)}, {}, [5], [5]),
    "Add": ({"w": RNG.random(5, dtype=np.float32)}, {}, [5], [5]),
    "AveragePool": ({}, {"kernel_shape": [2, 2], "strides": [2, 2]}, [2, 4, 4], [2, 2, 2]),
    "GlobalMaxPool": ({}, {}, [2, 4, 4], [2, 1, 1]),
    "Dropout": ({}, {}, [5], [5]),
    "Identity": ({}, {}, [5], [5]),
}


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("op_type", sorted(SINGLE_NODES))
def test_single_operators_answer_as_onnxruntime(op_type: str, opset: int, tmp_path: Path) -> None:
    """At opset 11 too, where Softmax normalised over every axis from ``axis`` on."""
    extra, attrs, shape, out_shape = SINGLE_NODES[op_type]
    path = _single_node(op_type, extra, attrs, shape, out_shape, tmp_path, opset)
    queries = np.random.default_rng(2).normal(size=(4, *shape)).astype(np.float32)
    convert_checked(path, OnnxModule(path), queries)


def test_a_graph_the_interpreter_fails_on_is_refused_not_crashed(tmp_path: Path) -> None:
    """Dropout's mask output, read by a later node: the interpreter keeps first outputs only."""
    nodes = [
        helper.make_node("Dropout", ["x"], ["y0", "mask"]),
        helper.make_node("Cast", ["mask"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
    )
    path = tmp_path / "mask.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    queries = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(UnsupportedOnnxError, match="its torch version failed \\(KeyError"):
        convert_checked(path, OnnxModule(path), queries)

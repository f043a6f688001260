"""Bring your own F: ONNX, TorchScript and importable-module F, their signatures, and the parity-architecture rule."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from parm.export.data import Dataset
from parm.export.fsource import FSource, FSourceError, OnnxModule, load_f
from parm.export.models import DigitsCNN, FamilyCNN, FamilyMLP
from parm.export.onnx_export import export_onnx

SAMPLE = Dataset(np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32))


@pytest.fixture(scope="module")
def digits_f() -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN().eval()


def test_onnx_f_signature_comes_from_the_graph(digits_f: DigitsCNN, tmp_path: Path) -> None:
    path = export_onnx(
        digits_f,
        (torch.rand(2, 1, 8, 8),),
        ["pixels"],
        ["scores"],
        {"pixels": {0: "b"}, "scores": {0: "b"}},
        tmp_path / "mine.onnx",
    )
    f = load_f(str(path), SAMPLE)
    assert f.source is FSource.ONNX and f.onnx_file == path
    assert f.differentiable and f.trainable_module is f.graph_module  # its graph, run by torch, checked against ORT
    assert (f.input.name, f.input.dims, f.output.name, f.output.dims) == ("pixels", (1, 8, 8), "scores", (10,))
    assert isinstance(f.module, OnnxModule)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(f.module(x), digits_f(x), atol=1e-4, rtol=1e-4)
    parity = f.parity_architecture()()  # an ONNX-only F gets the CNN family for image queries
    assert isinstance(parity, FamilyCNN) and parity(x).shape == (5, 10)
    assert isinstance(f.parity_architecture("mlp", width=2)(), FamilyMLP)
    with pytest.raises(FSourceError, match="shape"):
        load_f(str(path), Dataset(np.zeros((2, 1, 7, 7), np.float32)))


def test_torchscript_f_is_named_after_its_forward_argument(digits_f: DigitsCNN, tmp_path: Path) -> None:
    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = digits_f

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.inner(image)

    path = tmp_path / "mine.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Named()).save(str(path))
    f = load_f(str(path), SAMPLE, output_name="logits")
    assert f.source is FSource.TORCHSCRIPT and f.differentiable
    assert (f.input.name, f.output.name, f.output.dims) == ("image", "logits", (10,))
    torch.manual_seed(1)
    parity = f.parity_architecture()()  # F's own (scripted) architecture, fresh weights
    assert [p.shape for p in parity.parameters()] == [p.shape for p in digits_f.parameters()]
    assert not torch.equal(next(parity.parameters()), next(digits_f.parameters()))
    assert parity.training and all(p.requires_grad and p.is_leaf for p in parity.parameters())


def test_module_f_with_weights(digits_f: DigitsCNN, tmp_path: Path) -> None:
    weights = tmp_path / "weights.pt"
    torch.save(digits_f.state_dict(), weights)
    f = load_f("parm.export.models:DigitsCNN", SAMPLE, weights=weights)
    assert f.source is FSource.TORCH and f.input.name == "x" and f.output.name == "output"
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(f.module(x), digits_f(x))
    assert isinstance(f.parity_architecture()(), DigitsCNN)
    with pytest.raises(FSourceError, match="cannot import"):
        load_f("parm.export.models:Nope", SAMPLE)
    with pytest.raises(FSourceError, match=r"expected an \.onnx file"):
        load_f("nothing-here", SAMPLE)

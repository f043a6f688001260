"""The built-in Fs for 28x28 images (ParM's base-MLP taking them flat, the small residual CNN) through the offline
pipeline on a small synthetic IDX folder shaped like Fashion-MNIST: quick training, the image codes on a flat F,
export round trips of every new network, and the default set skipping what cannot apply."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from parm.cli import main
from parm.export.code_training import CodeConfig
from parm.export.datasets import idx_bytes
from parm.export.evaluate import evaluate_codes
from parm.export.models import BaseMLP, MultiHead, SmallResNet, TileHeads
from parm.export.onnx_export import export_onnx, export_torchscript, verify_onnx, verify_torchscript
from parm.export.pipeline import DataSpec, FSpec, RepositoryTarget, builtin_f, run_export


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 random 28x28 images of 10 classes, each class brighter in its own band of rows (learnable)."""
    folder = tmp_path_factory.mktemp("tiny-fashion")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10, dtype=np.uint8), 30)
    images = rng.integers(0, 100, size=(300, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 * label : 2 * label + 4] += 150
    (folder / "images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (folder / "labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return folder


def test_a_flat_f_serves_the_collage_with_the_datas_image_shape(idx_folder: Path, tmp_path: Path) -> None:
    target = RepositoryTarget(tmp_path / "repo", "mlp", max_batch_size=8)
    artifacts = run_export(
        tmp_path / "out",
        CodeConfig("collage", 2),
        FSpec(builtin=builtin_f("mlp")),
        DataSpec(idx_folder),
        quick=True,
        repository=target,
    )
    assert artifacts.f.input.dims == (784,) and artifacts.code.image_shape == (1, 28, 28)
    parity = onnx.load(str(artifacts.onnx["parity"]))
    dims = [d.dim_value or d.dim_param for d in parity.graph.output[0].type.tensor_type.shape.dim]
    assert dims[1:] == [2, 10]  # one head per member
    assert (target.out / "mlp_parity" / "config.pbtxt").exists()


def test_the_default_set_skips_what_cannot_apply_with_the_reason(idx_folder: Path, tmp_path: Path) -> None:
    codes = [CodeConfig.parse(text) for text in ("sum:4@w2", "collage:3", "letcc:2", "sum:2@parm")]
    report = evaluate_codes(
        codes,
        tmp_path,
        FSpec(builtin=builtin_f("cnn")),
        DataSpec(idx_folder),
        quick=True,
        baselines=False,
        skip_inapplicable=True,
    )
    assert [row.name for row in report.rows] == ["Collage", "LeTCC (smoothing splines)", "ParM sum"]
    ((skipped, why),) = report.skipped
    assert "sum" in skipped and "wider parity model" in why
    assert "Skipped, since they cannot apply to this F" in report.to_markdown()
    assert "ParM's published recipe" in report.rows[2].note
    assert "smoothing" in report.rows[1].note


@pytest.mark.parametrize(
    "model",
    [
        BaseMLP(),
        SmallResNet(),
        TileHeads(SmallResNet(), (1, 28, 28), (2, 2), (3, 10)),
        TileHeads(SmallResNet(), (1, 28, 28), (1, 2), (2, 10)),
        MultiHead(BaseMLP(), (4, 10)),
    ],
    ids=["base-mlp", "small-resnet", "resnet-3-tile-heads", "resnet-2-tile-heads", "mlp-4-heads"],
)
def test_new_networks_round_trip_to_onnx_and_torchscript(model: torch.nn.Module, tmp_path: Path) -> None:
    model.eval()
    shape = (784,) if isinstance(model, BaseMLP) or isinstance(getattr(model, "net", None), BaseMLP) else (1, 28, 28)
    example, fresh = (torch.rand(2, *shape),), [(torch.rand(1, *shape),), (torch.rand(5, *shape),)]
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    verify_onnx(export_onnx(model, example, ["input"], ["logits"], axes, tmp_path / "m.onnx"), model, fresh)
    verify_torchscript(export_torchscript(model, example, tmp_path / "m.pt"), model, fresh)


def test_parm_eval_names_a_built_in_f_and_the_image_shape(idx_folder: Path, tmp_path: Path, capsys) -> None:
    argv = ["eval", "--f", "mlp", "--data", str(idx_folder), "--codes", "collage:2", "concat:2", "--quick"]
    argv += ["--no-baselines", "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")]
    assert main([*argv, "--image-shape", "1,28,28"]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "BaseMLP(in_features=784, classes=10) trained on" in report and "| Collage |" in report
    with pytest.raises(SystemExit):
        main([*argv, "--image-shape", "28x28"])
    assert "expected C,H,W" in capsys.readouterr().err

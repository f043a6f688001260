"""``parm export`` for a user's own F (ONNX-only, on .npz queries): every code kind writes a complete repository
whose configs name the right parity targets, and ``parm eval`` reports on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from parm.cli import main
from parm.errors import ConfigError
from parm.export.code_training import CodeConfig
from parm.export.evaluate import evaluate_repository
from parm.export.models import DigitsCNN
from parm.export.onnx_export import export_onnx
from parm.export.pipeline import DataSpec, FSpec
from parm.export.repository import parse_orchestrator_config, read_config
from parm.jobs import export_repository


@pytest.fixture(scope="module")
def user_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("user")
    torch.manual_seed(0)
    f = DigitsCNN().eval()
    onnx_file = export_onnx(
        f, (torch.rand(2, 1, 8, 8),), ["x"], ["y"], {"x": {0: "b"}, "y": {0: "b"}}, root / "my_model.onnx"
    )
    rng = np.random.default_rng(0)
    queries = root / "queries.npz"
    np.savez(queries, x=rng.random((120, 1, 8, 8), dtype=np.float32), y=rng.integers(0, 10, 120))
    return onnx_file, queries


@pytest.mark.parametrize(
    ("code", "parity_models", "encoder_dims"),
    [
        (CodeConfig("concat", 2), "my_model_parity", [2, -1, 1, 8, 8]),
        (CodeConfig("linear", 3, 2), "my_model_parity_0,my_model_parity_1", [3, -1, 1, 8, 8]),
        (CodeConfig("berrut", 3, 1), "my_model", [3, -1, 1, 8, 8]),
        (CodeConfig("learned", 2, 1), "my_model", [2, -1, 1, 8, 8]),  # trained through F's graph run by torch
    ],
)
def test_onnx_only_f_exports_a_complete_repository(
    user_files: tuple[Path, Path], tmp_path: Path, code: CodeConfig, parity_models: str, encoder_dims: list[int]
) -> None:
    onnx_file, queries = user_files
    repository = tmp_path / "repo"
    artifacts, _ = export_repository(
        repository, tmp_path / "work", quick=True, code=code, f_spec=FSpec(str(onnx_file)), data=DataSpec(queries)
    )
    coded = parse_orchestrator_config(read_config(repository / "my_model_coded" / "config.pbtxt"))
    assert ",".join(coded.parity_models) == parity_models and coded.k == code.k
    expected = {"my_model", "my_model_encoder", "my_model_decoder", "my_model_coded", *parity_models.split(",")}
    assert {p.name for p in repository.iterdir()} == expected
    assert (repository / "my_model" / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    assert list(read_config(repository / "my_model_encoder" / "config.pbtxt").input[0].dims) == encoder_dims
    decoder = onnx.load(str(repository / "my_model_decoder" / "1" / "model.onnx"))
    assert [i.name for i in decoder.graph.input] == ["parity_outputs", "outputs", "available"]
    record = json.loads(artifacts.training_json.read_text())
    assert record["f"] == "ONNX file my_model.onnx" and record["data"]["train"] == 84
    report = evaluate_repository(repository, DataSpec(queries))
    (row,) = report.rows
    assert (row.k, row.r) == (code.k, code.r) and 0.0 <= row.agreement_with_f <= 1.0
    assert report.queries == 24
    # what the served decoder rebuilds, lost parities included when r = 2 (its code_weights say which)
    patterns = [(erased, lost) for erased, lost, _, _ in row.by_erasures]
    assert patterns == ([(1, 0), (2, 0), (1, 1)] if code.r == 2 else [(1, 0)])


class ErfF(torch.nn.Module):
    """An F whose graph has an operator ``onnx_graph`` does not implement (Erf)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(self.linear(x.flatten(1)))


def test_learned_code_refuses_an_onnx_f_it_cannot_train_through(
    user_files: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    _, queries = user_files
    onnx_file = export_onnx(
        ErfF().eval(), (torch.rand(2, 1, 8, 8),), ["x"], ["y"], {"x": {0: "b"}, "y": {0: "b"}}, tmp_path / "erf.onnx"
    )
    argv = ["export", "--f", str(onnx_file), "--data", str(queries), "--code", "learned", "--quick"]
    argv += ["--out", str(tmp_path / "repo"), "--work-dir", str(tmp_path / "work")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("parm export: ")
    assert "F (ONNX file erf.onnx) cannot run as torch operations (erf.onnx: operators ['Erf']" in error
    argv[argv.index("learned")] = "concat"
    argv += ["--k", "5"]
    assert main(argv) == 2
    assert "defined for k in [2, 3, 4]" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="defined for k in"):
        main(["-v", *argv])

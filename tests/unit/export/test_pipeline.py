"""The end-to-end digits pipeline in quick mode: every file written, verified, described."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from parm.export.code_training import CodeConfig
from parm.export.pipeline import RepositoryTarget, run_export


def test_quick_pipeline_writes_every_file(tmp_path: Path) -> None:
    target = RepositoryTarget(tmp_path / "repo", "digits", max_batch_size=8)
    artifacts = run_export(tmp_path / "out", CodeConfig("sum", 2), seed=3, quick=True, repository=target)
    out = tmp_path / "out"
    assert artifacts.deployment is not None and artifacts.deployment.names.coded == "digits_coded"
    assert sorted(p.name for p in target.out.iterdir()) == [
        "digits",
        "digits_coded",
        "digits_decoder",
        "digits_encoder",
        "digits_parity",
    ]
    assert sorted(p.name for p in (out / "onnx").iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "f.onnx",
        "parity.onnx",
    ]
    assert sorted(p.name for p in (out / "torchscript").iterdir()) == ["decoder.pt", "encoder.pt", "f.pt", "parity.pt"]
    assert artifacts.onnx["parity"] == out / "onnx" / "parity.onnx"
    assert artifacts.torchscript["decoder"] == out / "torchscript" / "decoder.pt"
    assert [i.name for i in onnx.load(str(artifacts.onnx["parity"])).graph.input] == ["input"]

    record = json.loads(artifacts.training_json.read_text())
    assert record["seed"] == 3 and record["k"] == 2 and record["quick"] is True and record["code"] == "sum"
    assert record["f_config"]["max_steps"] == 5 and record["code_training"]["steps"] == 5
    assert record["test_accuracy"]["erasures"] % 360 == 0  # every test query erased once per grouping
    assert "git_commit" in record

    (spec_in,), (spec_out,) = artifacts.f_inputs, artifacts.f_outputs
    assert (spec_in.name, spec_in.dtype, spec_in.dims) == ("input", np.dtype(np.float32), (1, 8, 8))
    assert (spec_out.name, spec_out.dtype, spec_out.dims) == ("logits", np.dtype(np.float32), (10,))
    assert 0.0 <= artifacts.accuracy.degraded_agreement_with_f <= 1.0

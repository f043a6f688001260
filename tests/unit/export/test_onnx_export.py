"""Exports against eager torch on fresh inputs: F-shaped models and the code networks, ONNX and TorchScript."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from parm.backend.orchestrator import contract
from parm.export.code_registry import SubtractionDecoder, SumEncoder, availability
from parm.export.errors import ExportMismatchError
from parm.export.models import DigitsCNN
from parm.export.onnx_export import export_onnx, export_torchscript, verify_onnx, verify_torchscript

BATCH_AXES = {"input": {0: "batch"}, "logits": {0: "batch"}}


@pytest.fixture
def model() -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN().eval()


def _fresh(*batches: int) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(42)
    return [(torch.rand(b, 1, 8, 8, generator=g),) for b in batches]


def test_onnx_round_trip_is_one_file_with_a_dynamic_batch(model: DigitsCNN, tmp_path: Path) -> None:
    path = export_onnx(model, _fresh(2)[0], ["input"], ["logits"], BATCH_AXES, tmp_path / "f.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.onnx"]  # no external-data side file
    loaded = onnx.load(str(path))
    assert [i.name for i in loaded.graph.input] == ["input"] and [o.name for o in loaded.graph.output] == ["logits"]
    assert loaded.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert path.stat().st_size > 4 * sum(p.numel() for p in model.parameters())  # the weights are inside
    verify_onnx(path, model, _fresh(1, 5))


def test_torchscript_round_trip(model: DigitsCNN, tmp_path: Path) -> None:
    path = export_torchscript(model, _fresh(2)[0], tmp_path / "f.pt")
    verify_torchscript(path, model, _fresh(1, 5))


def test_verify_names_the_model_on_mismatch(model: DigitsCNN, tmp_path: Path) -> None:
    onnx_path = export_onnx(model, _fresh(2)[0], ["input"], ["logits"], BATCH_AXES, tmp_path / "digits.onnx")
    ts_path = export_torchscript(model, _fresh(2)[0], tmp_path / "digits.pt")
    torch.manual_seed(1)
    other = DigitsCNN().eval()
    with pytest.raises(ExportMismatchError, match=r"digits\.onnx: onnxruntime output 0 differs"):
        verify_onnx(onnx_path, other, _fresh(3))
    with pytest.raises(ExportMismatchError, match=r"digits\.pt: TorchScript output 0 differs"):
        verify_torchscript(ts_path, other, _fresh(3))


def test_verify_catches_a_fixed_batch_axis(model: DigitsCNN, tmp_path: Path) -> None:
    path = export_onnx(model, _fresh(2)[0], ["input"], ["logits"], {}, tmp_path / "fixed.onnx")
    verify_onnx(path, model, _fresh(2))
    with pytest.raises(ExportMismatchError, match=r"fixed\.onnx: onnxruntime failed on inputs \[5, 1, 8, 8\]"):
        verify_onnx(path, model, _fresh(5))


def test_code_networks_round_trip_with_dynamic_k_and_batch(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    encoder, decoder = SumEncoder(2), SubtractionDecoder(2)

    def decoder_inputs(k: int, batch: int, erased: int) -> tuple[torch.Tensor, ...]:
        outputs = torch.randn(k, batch, 10, generator=g)
        outputs[erased] = float("nan")
        return torch.randn(1, batch, 10, generator=g), outputs, availability(k, 1, [erased])

    enc_example = (torch.rand(2, 3, 1, 8, 8, generator=g),)
    enc_fresh = [(torch.rand(2, 1, 1, 8, 8, generator=g),), (torch.rand(4, 5, 1, 8, 8, generator=g),)]
    enc_axes = {contract.ENCODER_INPUT: {0: "k", 1: "batch"}, contract.ENCODER_OUTPUT: {1: "batch"}}
    enc_path = export_onnx(
        encoder, enc_example, [encoder.input_name], [encoder.output_name], enc_axes, tmp_path / "encoder.onnx"
    )
    verify_onnx(enc_path, encoder, enc_fresh)
    verify_torchscript(export_torchscript(encoder, enc_example, tmp_path / "encoder.pt"), encoder, enc_fresh)

    dec_fresh = [decoder_inputs(2, 1, 1), decoder_inputs(3, 5, 0)]
    dec_axes = {
        contract.DECODER_PARITY_INPUT: {1: "batch"},
        contract.DECODER_OUTPUTS_INPUT: {0: "k", 1: "batch"},
        contract.DECODER_AVAILABLE_INPUT: {0: "k_plus_r"},
        contract.DECODER_OUTPUT: {0: "k", 1: "batch"},
    }
    example = decoder_inputs(2, 3, 0)
    dec_path = export_onnx(
        decoder, example, decoder.input_names, [decoder.output_name], dec_axes, tmp_path / "decoder.onnx"
    )
    verify_onnx(dec_path, decoder, dec_fresh)
    verify_torchscript(export_torchscript(decoder, example, tmp_path / "decoder.pt"), decoder, dec_fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.onnx", "decoder.pt", "encoder.onnx", "encoder.pt"]

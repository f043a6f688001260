"""Every registered code against the contract: exactness where the code is exact, and ONNX/TorchScript exports that
match torch on fresh inputs (other batch sizes, NaN in erased slots)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from parm.backend.orchestrator import contract
from parm.errors import ConfigError
from parm.export.berrut import berrut_basis, berrut_points
from parm.export.code_registry import CodeShape, ParityKind, availability, code_names, get_code
from parm.export.concat import ConcatEncoder
from parm.export.degraded import LossPattern, erasure_patterns, tolerated_patterns
from parm.export.linear_codes import chebyshev_weights
from parm.export.onnx_export import export_onnx, export_torchscript, verify_onnx, verify_torchscript

QUERY = (1, 8, 8)
OUTPUT = (10,)


def _available(k: int, erased: tuple[int, ...], r: int = 1, lost: tuple[int, ...] = ()) -> torch.Tensor:
    return availability(k, r, erased, lost)


def _with_losses(parity_outputs: torch.Tensor, pattern: LossPattern) -> torch.Tensor:
    """The parity outputs with the pattern's lost parities' rows NaN: a decoder must not read them."""
    missing = parity_outputs.clone()
    missing[list(pattern.lost)] = float("nan")
    return missing


@pytest.mark.parametrize(("k", "r"), [(2, 1), (3, 1), (4, 1), (2, 2), (3, 2), (4, 2), (4, 3), (4, 4)])
def test_linear_code_rebuilds_any_r_erasures_of_a_linear_f_exactly(k: int, r: int) -> None:
    torch.manual_seed(k * 10 + r)
    f = nn.Linear(64, 10, bias=False)  # linear F: F itself is the exact parity model of every weighted sum
    code = get_code("linear")
    shape = CodeShape(k, r, (64,), OUTPUT)
    encoder, decoder = code.encoder(shape), code.decoder(shape)
    queries = torch.randn(k, 5, 64)
    with torch.no_grad():
        outputs, parity_outputs = f(queries), f(encoder(queries))
        patterns = tolerated_patterns(decoder)
        assert {p.erased for p in patterns if not p.lost} == set(erasure_patterns(k, r))  # any r erasures
        for pattern in patterns:  # and any e erasures from any e parities (their rows span e columns here)
            garbage = outputs.clone()
            garbage[list(pattern.erased)] = float("nan")
            decoded = decoder(_with_losses(parity_outputs, pattern), garbage, pattern.available(k, r))
            torch.testing.assert_close(decoded, outputs, atol=1e-4, rtol=1e-4)


def test_linear_code_with_r_1_is_parm_sum() -> None:
    np.testing.assert_array_equal(chebyshev_weights(3, 1), np.ones((1, 3), dtype=np.float32))
    queries = torch.rand(3, 2, *QUERY)
    torch.testing.assert_close(get_code("linear").encoder(CodeShape(3))(queries), queries.sum(0, keepdim=True))
    with pytest.raises(ConfigError, match="at most r = k"):
        chebyshev_weights(2, 3)


def test_concat_tiles_downsampled_members_and_decodes_by_subtraction() -> None:
    queries = torch.rand(4, 3, *QUERY)
    tiled = ConcatEncoder(4, QUERY)(queries)[0]  # [B, 1, 8, 8]
    pooled = nn.functional.avg_pool2d(queries.flatten(0, 1), 2).reshape(4, 3, 1, 4, 4)
    for slot, (row, col) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        torch.testing.assert_close(tiled[:, :, row : row + 4, col : col + 4], pooled[slot])
    halves = ConcatEncoder(2, QUERY)(queries[:2])[0]
    torch.testing.assert_close(halves[..., :4], nn.functional.avg_pool2d(queries[0], (1, 2)))
    torch.testing.assert_close(halves[..., 4:], nn.functional.avg_pool2d(queries[1], (1, 2)))
    with pytest.raises(ConfigError, match="W even"):
        ConcatEncoder(2, (1, 8, 7))
    # An exact parity model of a linear F for the k=2 tiling: undo the tiling, apply F to each half, sum.
    torch.manual_seed(0)
    f = nn.Sequential(nn.Flatten(), nn.Linear(64, 10, bias=False))
    half = torch.zeros(64, 32)  # a W/2-wide half, upsampled back by repeating columns
    for row, col in itertools.product(range(8), range(4)):
        half[row * 8 + 2 * col, row * 4 + col] = half[row * 8 + 2 * col + 1, row * 4 + col] = 1.0
    pooled_images = torch.rand(2, 3, 1, 8, 4)
    members = pooled_images.repeat_interleave(2, dim=-1)  # images that the pooling maps back to themselves
    parity_query = ConcatEncoder(2, QUERY)(members)[0]

    def parity_model(p: torch.Tensor) -> torch.Tensor:
        flat_halves = [p[..., :4].flatten(1), p[..., 4:].flatten(1)]
        return sum(f[1](h @ half.t()) for h in flat_halves)

    code = get_code("concat")
    decoder = code.decoder(CodeShape(2, 1, QUERY, OUTPUT))
    with torch.no_grad():
        outputs = f(members.flatten(0, 1)).reshape(2, 3, 10)
        decoded = decoder(parity_model(parity_query).unsqueeze(0), outputs, _available(2, (1,)))
    torch.testing.assert_close(decoded, outputs, atol=1e-5, rtol=1e-5)


def test_berrut_points_interleave_and_the_encoder_interpolates() -> None:
    alpha, z = berrut_points(4, 1)
    assert len(alpha) == 4 and len(z) == 1 and alpha[1] < z[0] < alpha[2]
    weights = berrut_basis(alpha, z)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    # at a node, Berrut's interpolant is that node's value (the systematic part)
    near = berrut_basis(alpha, alpha + 1e-9)
    np.testing.assert_allclose(near, np.eye(4), atol=1e-6)


@pytest.mark.parametrize(("k", "s"), [(2, 1), (3, 1), (4, 1), (3, 2), (4, 2)])
def test_berrut_is_exact_for_a_constant_f_and_passes_available_slots_through(k: int, s: int) -> None:
    code = get_code("berrut")
    assert code.parity is ParityKind.F
    decoder = code.decoder(CodeShape(k, s))
    constant = torch.randn(1, 5, 10).expand(k, 5, 10).clone()
    patterns = tolerated_patterns(decoder)
    lost_some = [p for p in patterns if p.lost]
    assert len(lost_some) == (0 if s == 1 else k * s)  # S = 2: one member rebuilt from either parity alone
    for pattern in patterns:  # ApproxIFER: any S missing answers among the N = K + S
        outputs = constant.clone()
        outputs[list(pattern.erased)] = float("nan")
        decoded = decoder(_with_losses(constant[:s], pattern), outputs, pattern.available(k, s))
        torch.testing.assert_close(decoded, constant, atol=1e-5, rtol=1e-5)


def test_berrut_with_k_2_is_exact_for_an_affine_f() -> None:
    torch.manual_seed(0)
    f = nn.Linear(64, 10)  # k=2, s=1: the parity point is the midpoint, decoding is 2 F((X1+X2)/2) - F(X2)
    code = get_code("berrut")
    encoder, decoder = code.encoder(CodeShape(2)), code.decoder(CodeShape(2))
    queries = torch.randn(2, 5, 64)
    with torch.no_grad():
        outputs, parity = f(queries), f(encoder(queries))
        for slot in range(2):
            torch.testing.assert_close(decoder(parity, outputs, _available(2, (slot,))), outputs, atol=1e-5, rtol=0)


def test_berrut_rebuilds_a_smooth_f_approximately() -> None:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(16, 8), nn.Tanh())
    code = get_code("berrut")
    encoder, decoder = code.encoder(CodeShape(3)), code.decoder(CodeShape(3))
    queries = 0.1 * torch.randn(3, 64, 16)  # a small neighbourhood: F nearly linear there
    with torch.no_grad():
        outputs, parity = f(queries), f(encoder(queries))
        decoded = decoder(parity, outputs, _available(3, (1,)))
    error = (decoded[1] - outputs[1]).abs().mean() / outputs[1].abs().mean()
    assert error < 0.6


def _code_inputs(name: str, k: int, r: int, batch: int, erased: tuple[int, ...], g: torch.Generator):
    outputs = torch.randn(k, batch, *OUTPUT, generator=g)
    outputs[list(erased)] = float("nan")
    parity = torch.randn(r, batch, *get_code(name).parity_output_shape(CodeShape(k, r, QUERY, OUTPUT)), generator=g)
    lost = tuple(range(r - len(erased)))[:1]  # one parity lost when the others can still rebuild
    parity[list(lost)] = float("nan")
    return (
        (torch.rand(k, batch, *QUERY, generator=g),),
        (parity, outputs, _available(k, erased, r, lost)),
    )


CASES = [
    ("sum", 3, 1),
    ("concat", 2, 1),
    ("concat", 4, 1),
    ("collage", 3, 1),
    ("linear", 4, 2),
    ("linear", 3, 3),
    ("berrut", 4, 2),
    ("letcc", 4, 2),
    ("learned", 2, 1),
    ("learned-conv", 3, 2),
]


def test_every_registered_code_is_covered() -> None:
    assert sorted({name for name, _, _ in CASES}) == code_names()


@pytest.mark.parametrize(("name", "k", "r"), CASES)
def test_code_networks_export_and_match_torch(name: str, k: int, r: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    code = get_code(name)
    shape = CodeShape(k, r, QUERY, OUTPUT)
    encoder, decoder = code.encoder(shape).eval(), code.decoder(shape).eval()
    g = torch.Generator().manual_seed(1)
    example_enc, example_dec = _code_inputs(name, k, r, 2, (0,), g)
    fresh = [_code_inputs(name, k, r, b, p, g) for b, p in [(1, (k - 1,)), (5, tuple(range(r)))]]
    enc_axes = {contract.ENCODER_INPUT: {1: "batch"}, contract.ENCODER_OUTPUT: {1: "batch"}}
    path = export_onnx(encoder, example_enc, [encoder.input_name], [encoder.output_name], enc_axes, tmp_path / "e.onnx")
    verify_onnx(path, encoder, [f[0] for f in fresh])
    verify_torchscript(export_torchscript(encoder, example_enc, tmp_path / "e.pt"), encoder, [f[0] for f in fresh])
    dec_axes = {
        contract.DECODER_PARITY_INPUT: {1: "batch"},
        contract.DECODER_OUTPUTS_INPUT: {1: "batch"},
        contract.DECODER_OUTPUT: {1: "batch"},
    }
    names = list(decoder.input_names)
    path = export_onnx(decoder, example_dec, names, [decoder.output_name], dec_axes, tmp_path / "d.onnx")
    verify_onnx(path, decoder, [f[1] for f in fresh])
    verify_torchscript(export_torchscript(decoder, example_dec, tmp_path / "d.pt"), decoder, [f[1] for f in fresh])


def test_code_config_parses_the_cli_syntax() -> None:
    from parm.export.code_training import CodeConfig

    assert CodeConfig.parse("linear:3:2") == CodeConfig("linear", 3, 2)
    variant = CodeConfig.parse("sum:4@finit,distill,w2")
    assert (variant.parity_init, variant.distill, variant.width) == ("f", 1.0, 2)
    assert variant.training().distill_weight == 1.0 and variant.slug == "sum-k4-r1-w2-finit-d1"
    assert "parity starts from F's weights" in variant.label
    augmented = CodeConfig.parse("sum:3@aug")
    assert augmented.training().augment == augmented.augment is not None and augmented.slug == "sum-k3-r1-aug"
    with pytest.raises(ConfigError, match="augmentation applies to parity training"):
        CodeConfig.parse("berrut:2@aug")
    with pytest.raises(ConfigError, match="name:k"):
        CodeConfig.parse("sum")
    with pytest.raises(ConfigError, match="unknown code option 'x'"):
        CodeConfig.parse("sum:2@x")
    with pytest.raises(ConfigError, match="at most r=1"):
        CodeConfig.parse("sum:2:2")

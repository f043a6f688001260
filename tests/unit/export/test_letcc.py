"""LeTCC against the contract: the spline maps against scipy's, exactness where the code is exact (interpolation,
affine F, polynomials of the point), masking, ONNX/TorchScript export, the choice of smoothing, and Berrut."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.interpolate import CubicSpline
from torch import nn

from parm.backend.orchestrator import contract
from parm.errors import ConfigError
from parm.export.berrut import BerrutDecoder, BerrutEncoder
from parm.export.code_registry import CodeShape, Decoder, Encoder, ParityKind, get_code
from parm.export.data import Dataset
from parm.export.degraded import degraded_accuracy, tolerated_patterns
from parm.export.letcc import (
    SELECT_ANSWERS,
    LeTCCDecoder,
    LeTCCEncoder,
    agreement,
    decoding_matrices,
    letcc_points,
    select,
    smoothing_spline,
)
from parm.export.onnx_export import export_onnx, export_torchscript, verify_onnx, verify_torchscript

SHAPES = [(2, 1), (3, 1), (4, 1), (3, 2), (4, 2), (4, 3)]


def _scipy_smoothing_spline(nodes: np.ndarray, at: np.ndarray, smoothing: float) -> np.ndarray:
    """The reference: scipy's not-a-knot spline through each unit vector, its roughness integrated by Gauss-Legendre
    quadrature (exact: f''^2 is a quadratic on each piece), and the penalised least-squares fit solved directly."""
    n = len(nodes)
    splines = [CubicSpline(nodes, np.eye(n)[i], bc_type="not-a-knot") for i in range(n)]
    x, w = np.polynomial.legendre.leggauss(3)
    penalty = np.zeros((n, n))
    for lo, hi in itertools.pairwise(nodes):
        second = np.stack([s.derivative(2)((lo + hi) / 2 + (hi - lo) / 2 * x) for s in splines])
        penalty += (second * w * (hi - lo) / 2) @ second.T
    fitted = np.linalg.inv(np.eye(n) + smoothing * penalty)
    return np.stack([s(at) for s in splines], axis=1) @ fitted


@pytest.mark.parametrize("smoothing", [0.0, 1e-3, 0.1])
def test_every_decoding_matrix_is_the_smoothing_spline_through_the_arrived_points(smoothing: float) -> None:
    k, r = 4, 2
    alpha, z = letcc_points(k, r)
    points = np.concatenate([alpha, z])
    matrices = decoding_matrices(k, r, smoothing)
    for index in range(1, 2 ** (k + r)):
        arrived = [i for i in range(k + r) if index >> i & 1]
        assert not matrices[index][:, [i for i in range(k + r) if i not in arrived]].any()
        if len(arrived) >= 2:  # scipy's CubicSpline needs two points; one point gives the constant
            order = np.argsort(points[arrived])
            expected = np.zeros((k, len(arrived)))
            expected[:, order] = _scipy_smoothing_spline(points[arrived][order], alpha, smoothing)
            np.testing.assert_allclose(matrices[index][:, arrived], expected, atol=1e-9)
        else:
            np.testing.assert_allclose(matrices[index][:, arrived], 1.0)
    assert not matrices[0].any()


def test_the_encoder_is_the_smoothing_spline_through_the_queries_and_interpolates_at_lambda_0() -> None:
    alpha, z = letcc_points(4, 2)
    np.testing.assert_allclose(LeTCCEncoder(4, 2, 0.01).weights.numpy(), _scipy_smoothing_spline(alpha, z, 0.01), 1e-6)
    np.testing.assert_allclose(smoothing_spline(alpha, alpha, 0.0), np.eye(4), atol=1e-12)
    assert np.abs(smoothing_spline(alpha, alpha, 0.01) - np.eye(4)).max() > 1e-3  # smoothing leaves the nodes


def test_large_smoothing_tends_to_the_least_squares_line() -> None:
    rng = np.random.default_rng(0)
    nodes, at, values = np.sort(rng.uniform(-1, 1, 7)), np.linspace(-1, 1, 5), rng.normal(size=7)
    line = np.polyval(np.polyfit(nodes, values, 1), at)
    np.testing.assert_allclose(smoothing_spline(nodes, at, 1e6) @ values, line, atol=1e-5)  # 1/lambda away


@pytest.mark.parametrize(("k", "r"), SHAPES)
def test_lambda_0_returns_the_answers_through_which_it_interpolates(k: int, r: int) -> None:
    """Rebuilt from every other point, an erased point's value is exact when the data are the spline's own."""
    alpha, z = letcc_points(k, r)
    points = np.concatenate([alpha, z])
    matrices = decoding_matrices(k, r, 0.0)
    full = 2 ** (k + r) - 1
    for j in range(k):  # the spline through all N points, read at alpha_j, gives back the answer at alpha_j
        np.testing.assert_allclose(matrices[full][j], np.eye(k + r)[j], atol=1e-9)
    rng = np.random.default_rng(k * 10 + r)
    values = rng.normal(size=k + r)
    for slot in range(k):  # and with alpha_j erased, the data of a spline through the other points come back
        others = [i for i in range(k + r) if i != slot]
        values[slot] = (smoothing_spline(points[others], points[[slot]], 0.0) @ values[others])[0]
        np.testing.assert_allclose(matrices[full - (1 << slot)][slot] @ values, values[slot], atol=1e-9)


@pytest.mark.parametrize(("k", "r"), SHAPES)
def test_polynomials_of_the_point_come_back_up_to_degree_3(k: int, r: int) -> None:
    """Not-a-knot ends: answers on a polynomial of degree < min(4, points arrived) are rebuilt exactly at lambda 0,
    lines at any lambda (a natural spline, the Sobolev minimiser, would reproduce lines only)."""
    alpha, z = letcc_points(k, r)
    points = np.concatenate([alpha, z])
    rng = np.random.default_rng(0)
    for smoothing, top in [(0.0, 3), (0.1, 1)]:
        matrices = decoding_matrices(k, r, smoothing)
        for index in range(1, 2 ** (k + r)):
            arrived = bin(index).count("1")
            coefficients = rng.normal(size=min(top, arrived - 1) + 1)
            np.testing.assert_allclose(
                matrices[index] @ np.polyval(coefficients, points), np.polyval(coefficients, alpha), atol=1e-9
            )


def test_the_natural_spline_would_not_rebuild_a_cubic() -> None:
    """Why the ends are not-a-knot (module docstring): the Sobolev minimiser's natural ends miss a cubic."""
    alpha, z = letcc_points(4, 2)
    points = np.sort(np.concatenate([alpha[1:], z]))  # the first member erased, 5 points arrived
    cubic = np.polynomial.Polynomial([0.5, -1.0, 0.3, 2.0])
    natural = CubicSpline(points, cubic(points), bc_type="natural")(alpha[0])
    assert abs(natural - cubic(alpha[0])) > 0.05
    assert (smoothing_spline(points, alpha[:1], 0.0) @ cubic(points))[0] == pytest.approx(cubic(alpha[0]), abs=1e-9)


def _rebuild_all(encoder: Encoder, decoder: Decoder, f: nn.Module, queries: torch.Tensor):
    """(pattern, erased slot, rebuilt answers, F's answers) for every loss pattern the decoder tolerates, with NaN
    in the erased and lost slots."""
    k, r = decoder.k, decoder.r
    with torch.no_grad():
        outputs, parity = f(queries), f(encoder(queries))
        for pattern in tolerated_patterns(decoder):
            garbage, missing = outputs.clone(), parity.clone()
            garbage[list(pattern.erased)] = float("nan")
            missing[list(pattern.lost)] = float("nan")
            decoded = decoder(missing, garbage, pattern.available(k, r))
            assert torch.isfinite(decoded).all()
            arrived = [i for i in range(k) if i not in pattern.erased]
            assert torch.equal(decoded[arrived], outputs[arrived])  # systematic: arrived answers pass through
            for slot in pattern.erased:
                yield pattern, slot, decoded[slot], outputs[slot]


@pytest.mark.parametrize(("k", "r"), SHAPES)
def test_an_affine_f_is_rebuilt_exactly_for_every_tolerated_pattern(k: int, r: int) -> None:
    """Exact up to float32 rounding (the networks' precision); Berrut is exact only at k = 2."""
    torch.manual_seed(k * 10 + r)
    f, queries = nn.Linear(16, 10), torch.randn(k, 5, 16)
    for _, _, rebuilt, expected in _rebuild_all(LeTCCEncoder(k, r), LeTCCDecoder(k, r), f, queries):
        torch.testing.assert_close(rebuilt, expected, atol=1e-4, rtol=1e-4)


class _Cubic(nn.Module):
    """An F that is a cubic polynomial in its input (elementwise powers, then a linear map)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([x, x**2, x**3], dim=-1))


@pytest.mark.parametrize(("k", "r"), [(4, 1), (3, 2), (4, 2), (4, 3)])  # N >= 5: 4 points left after a loss
@pytest.mark.parametrize("enc_smoothing", [0.0, 0.1])
def test_an_f_cubic_along_the_encoding_curve_is_rebuilt_from_any_4_points(k: int, r: int, enc_smoothing: float) -> None:
    """Queries on a line X_j = a + b alpha_j: the encoder (any lambda) puts the parity queries on that line, so
    F(u(z)) is a cubic in z, and the decoder at lambda 0 rebuilds it exactly wherever 4 answers or more arrived."""
    torch.manual_seed(0)
    alpha, _ = letcc_points(k, r)
    a, b = torch.randn(5, 16), torch.randn(5, 16)
    queries = a + b * torch.as_tensor(alpha, dtype=torch.float32).reshape(k, 1, 1)
    encoder, decoder = LeTCCEncoder(k, r, enc_smoothing), LeTCCDecoder(k, r)
    checked = 0
    for pattern, _, rebuilt, expected in _rebuild_all(encoder, decoder, _Cubic(), queries):
        if k + r - len(pattern.erased) - len(pattern.lost) >= 4:
            torch.testing.assert_close(rebuilt, expected, atol=1e-3, rtol=1e-4)  # answers up to ~100: float32
            checked += 1
    assert checked >= k


def _relative_error(encoder: Encoder, decoder: Decoder, f: nn.Module, queries: torch.Tensor) -> float:
    errors = [
        float(((rebuilt - expected) ** 2).mean() / (expected**2).mean())
        for _, _, rebuilt, expected in _rebuild_all(encoder, decoder, f, queries)
    ]
    return float(np.mean(errors))


@pytest.mark.parametrize(("k", "r"), SHAPES)
def test_letcc_rebuilds_a_smooth_f_better_than_berrut(k: int, r: int) -> None:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 10))
    queries = 0.3 * torch.randn(k, 64, 16)  # a small neighbourhood: F smooth, nearly affine there
    letcc = _relative_error(LeTCCEncoder(k, r), LeTCCDecoder(k, r), f, queries)
    berrut = _relative_error(BerrutEncoder(k, r), BerrutDecoder(k, r), f, queries)
    if k == 2:  # two points: both interpolate along the line through them, the same code
        assert letcc == pytest.approx(berrut, rel=1e-4)
    else:
        assert letcc < 0.2 * berrut


@pytest.mark.parametrize(("k", "r"), [(3, 1), (4, 2)])
def test_networks_export_and_match_torch(k: int, r: int, tmp_path: Path) -> None:
    """As ``export_code`` checks them: other batch sizes than the example's, NaN in erased and lost slots."""
    encoder, decoder = LeTCCEncoder(k, r, 1e-3).eval(), LeTCCDecoder(k, r, 1e-2).eval()
    g = torch.Generator().manual_seed(0)

    def decoder_inputs(batch: int, erased: list[int], lost: list[int]) -> tuple[torch.Tensor, ...]:
        outputs, parity = torch.randn(k, batch, 10, generator=g), torch.randn(r, batch, 10, generator=g)
        outputs[erased], parity[lost] = float("nan"), float("nan")
        available = torch.ones(k + r)
        available[erased + [k + j for j in lost]] = 0.0
        return parity, outputs, available

    enc_axes = {contract.ENCODER_INPUT: {1: "batch"}, contract.ENCODER_OUTPUT: {1: "batch"}}
    example = (torch.rand(k, 2, 1, 8, 8, generator=g),)
    fresh = [(torch.rand(k, b, 1, 8, 8, generator=g),) for b in (1, 5)]
    path = export_onnx(encoder, example, [encoder.input_name], [encoder.output_name], enc_axes, tmp_path / "e.onnx")
    verify_onnx(path, encoder, fresh)
    verify_torchscript(export_torchscript(encoder, example, tmp_path / "e.pt"), encoder, fresh)
    dec_axes = {name: {1: "batch"} for name in (*decoder.input_names[:2], decoder.output_name)}
    example = decoder_inputs(2, [0], [])
    fresh = [decoder_inputs(1, [k - 1], []), decoder_inputs(5, list(range(r)), [])]
    fresh += [decoder_inputs(3, [1], [r - 1])] if r > 1 else []
    names = list(decoder.input_names)
    path = export_onnx(decoder, example, names, [decoder.output_name], dec_axes, tmp_path / "d.onnx")
    verify_onnx(path, decoder, fresh)
    verify_torchscript(export_torchscript(decoder, example, tmp_path / "d.pt"), decoder, fresh)


class _Counting(nn.Module):
    """F, counting the queries it answers."""

    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f, self.answered = f, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.answered += len(x)
        return self.f(x)


def test_select_does_at_least_as_well_as_no_smoothing_and_says_what_it_chose() -> None:
    torch.manual_seed(0)
    k, r = 4, 2
    f = _Counting(nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 10)))
    val_x = 3.0 * torch.randn(600, 16).numpy()  # far-apart queries: the splines overshoot, smoothing can help
    selection = select(CodeShape(k, r, (16,), (10,)), f, val_x, seed=0)
    assert f.answered <= 600 + 6 * r * 600 // k  # every query and parity query asked once, for 36 pairs of lambdas
    match = re.fullmatch(r"smoothing enc=(\S+), dec=(\S+)", selection.chosen)
    assert match is not None
    assert selection.encoder.smoothing == float(match[1]) and selection.decoder.smoothing == float(match[2])

    def score(encoder: Encoder, decoder: Decoder) -> float:
        return agreement(degraded_accuracy(f, f, Dataset(val_x), k, encoder, decoder, 0, groupings=1))

    assert score(selection.encoder, selection.decoder) >= score(LeTCCEncoder(k, r), LeTCCDecoder(k, r))


def test_select_asks_f_for_a_bounded_number_of_answers() -> None:
    f = _Counting(nn.Linear(4, 3))
    select(CodeShape(2, 1, (4,), (3,)), f, np.random.default_rng(0).normal(size=(20_000, 4)).astype(np.float32), 0)
    assert f.answered <= SELECT_ANSWERS


def test_registry() -> None:
    code = get_code("letcc")
    shape = CodeShape(3, 2, (16,), (10,))
    assert code.parity is ParityKind.F and code.select is select and code.max_r is None
    assert code.title == "LeTCC (smoothing splines)"
    assert isinstance(code.encoder(shape), LeTCCEncoder) and code.decoder(shape).smoothing == 0.0
    with pytest.raises(ConfigError, match="k \\+ r <= 12"):
        LeTCCDecoder(4, 9)

"""The in-process linear code against the exported encoder and decoder modules it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from parm.backend.orchestrator import ConfigError
from parm.backend.orchestrator.linear import decode, encode, parse_weights, solvable
from parm.export.code_registry import SubtractionDecoder, SumEncoder, availability
from parm.export.linear_codes import LinearEncoder, LinearSystemDecoder, chebyshev_weights


@st.composite
def coded_groups(draw):
    k = draw(st.integers(2, 4))
    r = draw(st.integers(1, k))
    batch = draw(st.integers(1, 3))
    erased = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=r, unique=True))
    seed = draw(st.integers(0, 2**16))
    return k, r, batch, sorted(erased), np.random.default_rng(seed)


@settings(max_examples=60, deadline=None)
@given(coded_groups())
def test_inline_code_matches_the_exported_modules_and_rebuilds_exactly(case) -> None:
    k, r, batch, erased, rng = case
    weights = chebyshev_weights(k, r)
    queries = rng.normal(size=(k, batch, 1, 3, 3)).astype(np.float32)
    expected_parity = LinearEncoder(weights)(torch.from_numpy(queries)).numpy()
    np.testing.assert_allclose(encode(weights.astype(np.float64), queries), expected_parity, rtol=1e-5, atol=1e-5)

    outputs = rng.normal(size=(k, batch, 10)).astype(np.float32)
    parity = np.tensordot(weights, outputs, axes=1).astype(np.float32)  # a perfect parity model: linear F
    arrived = [None if i in erased else outputs[i] for i in range(k)]
    rebuilt = decode(weights.astype(np.float64), parity, arrived)
    assert sorted(rebuilt) == erased
    available = availability(k, r, erased)
    module = LinearSystemDecoder(weights)(torch.from_numpy(parity), torch.from_numpy(outputs), available).numpy()
    for i in erased:
        assert rebuilt[i].dtype == np.float32 and rebuilt[i].shape == (batch, 10)
        np.testing.assert_allclose(rebuilt[i], outputs[i], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(rebuilt[i], module[i], rtol=1e-3, atol=1e-3)


def test_sum_code_is_parm_subtraction() -> None:
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(3, 2, 8)).astype(np.float32)
    ones = np.ones((1, 3))
    np.testing.assert_allclose(encode(ones, queries), SumEncoder(3)(torch.from_numpy(queries)).numpy(), rtol=1e-6)
    outputs = rng.normal(size=(3, 2, 5)).astype(np.float32)
    parity = rng.normal(size=(1, 2, 5)).astype(np.float32)  # any parity output, e.g. a trained model's
    available = availability(3, 1, [1])
    module = SubtractionDecoder(3)(torch.from_numpy(parity), torch.from_numpy(outputs), available)
    rebuilt = decode(ones, parity, [outputs[0], None, outputs[2]])
    np.testing.assert_allclose(rebuilt[1], module.numpy()[1], rtol=1e-5, atol=1e-5)
    assert decode(ones, parity, list(outputs)) == {}


def test_more_erasures_than_parities_are_refused() -> None:
    with pytest.raises(ValueError, match=r"1 parities cannot rebuild the erased slots \[0, 1\]"):
        decode(np.ones((1, 3)), np.zeros((1, 1, 2), np.float32), [None, None, np.zeros((1, 2), np.float32)])


def test_solvable_asks_whether_the_given_parities_determine_the_erased_slots() -> None:
    weights = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert solvable(weights, [0], [0]) and solvable(weights, [0, 1], [0, 2]) and solvable(weights, [], [])
    assert not solvable(weights, [1], [0])  # the second parity does not see slot 0
    assert not solvable(weights, [0, 1], [0, 1])  # slots 0 and 1 only ever appear summed
    assert not solvable(weights, [0], [0, 2])


@settings(max_examples=60, deadline=None)
@given(coded_groups(), st.data())
def test_any_subset_of_parities_that_solves_the_erasures_rebuilds_them_exactly(case, data) -> None:
    """In process and through the exported decoder module alike, whose ``available`` flags the arrived parities."""
    k, r, batch, erased, rng = case
    weights = chebyshev_weights(k, r).astype(np.float64)
    rows = sorted(data.draw(st.lists(st.integers(0, r - 1), min_size=1, max_size=r, unique=True)))
    outputs = rng.normal(size=(k, batch, 4)).astype(np.float32)
    parity = np.tensordot(weights[rows], outputs, axes=1).astype(np.float32)
    arrived = [None if i in erased else outputs[i] for i in range(k)]
    module = LinearSystemDecoder(weights.astype(np.float32))
    assert module.can_rebuild(erased, rows) == solvable(weights, rows, erased)
    if not solvable(weights, rows, erased):
        with pytest.raises(ValueError, match="cannot rebuild"):
            decode(weights[rows], parity, arrived)
        return
    rebuilt = decode(weights[rows], parity, arrived)
    every_parity = np.full((r, batch, 4), np.nan, dtype=np.float32)  # a lost parity's rows must not be read
    every_parity[rows] = parity
    masked_outputs = outputs.copy()
    masked_outputs[erased] = np.nan
    lost = [j for j in range(r) if j not in rows]
    exported = module(
        torch.from_numpy(every_parity), torch.from_numpy(masked_outputs), availability(k, r, erased, lost)
    ).numpy()
    for i in erased:
        np.testing.assert_allclose(rebuilt[i], outputs[i], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(exported[i], outputs[i], rtol=1e-3, atol=1e-3)


def test_weights_parse_row_by_row() -> None:
    assert parse_weights("1,1") == ((1.0, 1.0),)
    assert parse_weights(" 1, 1, 1 ; 0.5,0,-0.5 ") == ((1.0, 1.0, 1.0), (0.5, 0.0, -0.5))
    assert parse_weights("") == ()
    with pytest.raises(ConfigError, match="rows must all have k values"):
        parse_weights("1,1;1")

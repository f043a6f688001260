"""Config parsing and query validation of the orchestrator core."""

from __future__ import annotations

import numpy as np
import pytest

from parm.backend.orchestrator import (
    RELOAD_PARAMETER,
    ConfigError,
    InvalidQueryError,
    OrchestratorConfig,
    ParityPolicy,
    TensorSpec,
    validate_query,
)
from parm.backend.orchestrator.groups import FillerCache
from parm.backend.orchestrator.tensors import all_finite, group_key, triton_type


def _model_config(**parameters: str) -> dict:
    base = {
        "f_models": "digits",
        "parity_models": "digits_parity",
        "encoder_model": "digits_encoder",
        "decoder_model": "digits_decoder",
    }
    base.update(parameters)
    return {
        "max_batch_size": 8,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": ["1", "8", "8"]}],
        "output": [
            {"name": "logits", "data_type": "TYPE_FP32", "dims": ["10"]},
            {"name": "parm_reconstructed", "data_type": "TYPE_BOOL", "dims": ["1"]},
        ],
        "parameters": {key: {"string_value": value} for key, value in base.items()},
    }


def test_config_parses_triton_json_with_defaults():
    config = OrchestratorConfig.from_model_config(_model_config(k="3", f_models="a, b"))
    assert config.k == 3 and config.r == 1
    assert config.f_models == ("a", "b")
    assert config.inputs == (TensorSpec("input", np.dtype(np.float32), (1, 8, 8)),)
    assert config.output_names == ("logits",)
    assert config.decode_after_ms == 0.0


def test_config_refuses_unknown_keys_by_name():
    with pytest.raises(ConfigError, match="decode_afterms"):
        OrchestratorConfig.from_model_config(_model_config(decode_afterms="3"))


def test_parity_policy_defaults_to_on_demand_and_parses_eager():
    assert OrchestratorConfig.from_model_config(_model_config()).parity_policy is ParityPolicy.ON_DEMAND
    eager = OrchestratorConfig.from_model_config(_model_config(parity_policy="Eager"))
    assert eager.parity_policy is ParityPolicy.EAGER
    with pytest.raises(ConfigError, match="parity_policy"):
        OrchestratorConfig.from_model_config(_model_config(parity_policy="lazy"))


def test_config_skips_the_reload_marker():
    """``TritonServer.reload_model`` adds ``parm_reload`` to force fresh instances; it is not a setting."""
    marked = OrchestratorConfig.from_model_config(_model_config(k="3", **{RELOAD_PARAMETER: "1796000000"}))
    assert marked == OrchestratorConfig.from_model_config(_model_config(k="3"))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("k", "1", "k must be >= 2"),
        ("k", "two", "cannot parse"),
        ("fill_timeout_ms", "-1", "fill_timeout_ms"),
        ("request_timeout_ms", "5", "must exceed decode_after_ms"),
        ("parity_models", " ", "parity_models"),
        ("scheme", "parm", "unknown parameter"),
        ("parity_burst", "0.5", "parity_burst must be >= 1"),
        ("max_parity_in_flight", "40", "at most half of bls_threads"),
        ("decode_after_ms", "nan", "finite"),
    ],
)
def test_config_refuses_bad_values_with_a_clear_message(key, value, message):
    overrides = {key: value}
    if key == "request_timeout_ms":
        overrides["decode_after_ms"] = "10"
    with pytest.raises(ConfigError, match=message):
        OrchestratorConfig.from_model_config(_model_config(**overrides))


def test_config_requires_the_flag_output():
    config = _model_config()
    config["output"] = config["output"][:1]
    with pytest.raises(ConfigError, match="parm_reconstructed"):
        OrchestratorConfig.from_model_config(config)


SPECS = (TensorSpec("x", np.dtype(np.float32), (-1, 3)),)


def test_validate_query_accepts_variable_dims_and_returns_the_batch():
    assert validate_query({"x": np.zeros((4, 7, 3), np.float32)}, SPECS, max_batch_size=8) == 4


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "missing input"),
        ({"x": np.zeros((1, 2, 3), np.float32), "z": np.zeros(1)}, "unknown input"),
        ({"x": np.zeros((1, 2, 3), np.float64)}, "expected datatype float32"),
        ({"x": np.zeros((1, 2, 4), np.float32)}, "expected shape"),
        ({"x": np.zeros((9, 2, 3), np.float32)}, "max_batch_size=8"),
        ({"x": np.zeros((0, 2, 3), np.float32)}, "batch size 0"),
    ],
)
def test_validate_query_names_the_problem(inputs, message):
    with pytest.raises(InvalidQueryError, match=message):
        validate_query(inputs, SPECS, max_batch_size=8)


def test_only_same_shaped_queries_share_a_group_key():
    a = {"x": np.zeros((2, 5, 3), np.float32)}
    assert group_key(a) == group_key({"x": np.ones((2, 5, 3), np.float32)})
    assert group_key(a) != group_key({"x": np.zeros((3, 5, 3), np.float32)})
    assert group_key(a) != group_key({"x": np.zeros((2, 4, 3), np.float32)})


def test_non_finite_queries_are_detected():
    assert all_finite({"x": np.zeros((1, 2), np.float32), "i": np.zeros(2, np.int64)})
    assert not all_finite({"x": np.array([[np.inf]], np.float32)})


def test_triton_type_round_trip():
    assert triton_type(np.dtype(np.float32)) == "TYPE_FP32"
    assert triton_type(np.dtype(np.bool_)) == "TYPE_BOOL"
    with pytest.raises(ConfigError, match="no Triton equivalent"):  # a model's config, not a request, is wrong
        triton_type(np.dtype(np.complex64))


def test_filler_cache_builds_batches_of_known_rows_and_forgets_old_ones():
    cache = FillerCache(size=3)
    assert cache.take({"x": np.zeros((2, 3), np.float32)}) is None
    for value in range(4):
        x = np.full((1, 3), value, np.float32)
        cache.add({"x": x}, {"y": x * 10})
    assert len(cache) == 3
    inputs, outputs = cache.take({"x": np.zeros((5, 3), np.float32)})
    assert inputs["x"].shape == (5, 3)
    assert set(inputs["x"][:, 0]) <= {1.0, 2.0, 3.0}
    np.testing.assert_array_equal(outputs["y"], inputs["x"] * 10)
    assert cache.take({"x": np.zeros((1, 4), np.float32)}) is None


def test_config_takes_inline_code_weights_instead_of_code_models():
    config = OrchestratorConfig.from_model_config(
        _model_config(k="3", code_weights="1,1,1", encoder_model="", decoder_model="")
    )
    assert config.code_weights == ((1.0, 1.0, 1.0),)
    with pytest.raises(ConfigError, match=r"code_weights must be \[r, k\] = \[1, 3\], got \[1, 2\]"):
        OrchestratorConfig.from_model_config(_model_config(k="3", code_weights="1,1"))
    with pytest.raises(ConfigError, match="encoder_model and decoder_model must be set"):
        OrchestratorConfig.from_model_config(_model_config(encoder_model=""))
    with pytest.raises(ConfigError, match="encoder_model and decoder_model must be set"):
        OrchestratorConfig.from_model_config(
            _model_config(k="3", code_weights="1,1,1", inline_code="false", decoder_model="")
        )
    models = OrchestratorConfig.from_model_config(_model_config(k="3", code_weights="1,1,1", inline_code="False"))
    assert models.code_weights == ((1.0, 1.0, 1.0),) and models.inline_code is False
    with pytest.raises(ConfigError, match=r"inline_code.*cannot parse 'maybe'"):
        OrchestratorConfig.from_model_config(_model_config(inline_code="maybe"))
    with pytest.raises(ConfigError, match=r"code_weights.*cannot parse"):
        OrchestratorConfig.from_model_config(_model_config(code_weights="1,one"))


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "x", "data_type": "TYPE_STRING", "dims": [2]}, "cannot be coded"),
        ({"name": "x", "data_type": "TYPE_FP32", "dims": [4], "reshape": {"shape": [2, 2]}}, "reshape"),
    ],
)
def test_a_model_config_the_endpoint_cannot_code_is_a_config_error_not_a_bad_request(entry, message):
    with pytest.raises(ConfigError, match=message):
        TensorSpec.from_config(entry)

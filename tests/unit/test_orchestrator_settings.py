"""The orchestrator's settings spec: generated both ways from its fields' types, and what a deployment sets is what
the endpoint reads (settings -> config.pbtxt text -> Triton's JSON -> settings is the identity)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2 as mc

from parm.backend.orchestrator import ConfigError, OrchestratorConfig, OrchestratorSettings, TensorSpec
from parm.backend.orchestrator.config import parameter_codecs
from parm.export.repository import model_configs, parse_orchestrator_config, read_config
from tests.unit.test_model_repository import DEPLOYMENT, REPOSITORY

SLOW_BOX = hypothesis_settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""The machine is shared: a draw's time says nothing about the code."""

NAME = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
PORT = st.integers(1, 65535)
ADDRESS = st.one_of(
    st.builds("{}:{}".format, st.sampled_from(["127.0.0.1", "10.1.2.3", "worker-0.example"]), PORT),
    st.builds("dns:{}:{}".format, NAME, PORT),
)
LOCAL_ADDRESS = st.builds("127.0.0.1:{}".format, PORT)
"""Addresses a real server's orchestrator can be configured with without resolving any name."""


def _number(spec: dataclasses.Field, hint: type) -> st.SearchStrategy:
    low, above, below = (spec.metadata.get(key) for key in ("low", "above", "below"))
    if hint is int:
        return st.integers(min_value=int(low if low is not None else 0), max_value=5000)
    lower = low if low is not None else above if above is not None else 0.0
    upper = below if below is not None else 1e7
    return st.floats(
        min_value=lower, max_value=upper, exclude_min=above is not None, exclude_max=below is not None, width=64
    )


@st.composite
def settings(draw: st.DrawFn, address: st.SearchStrategy = ADDRESS) -> OrchestratorSettings:
    """Any valid settings, drawn field by field from each field's type and bounds."""
    hints = typing.get_type_hints(OrchestratorSettings)
    values: dict[str, object] = {}
    for spec in dataclasses.fields(OrchestratorSettings):
        hint = hints[spec.name]
        if hint in (int, float):
            values[spec.name] = draw(_number(spec, hint))
        elif hint is bool:
            values[spec.name] = draw(st.booleans())
        elif isinstance(hint, type) and issubclass(hint, Enum):
            values[spec.name] = draw(st.sampled_from(list(hint)))
        elif hint == tuple[str, ...]:
            values[spec.name] = tuple(draw(st.lists(address, max_size=3, unique=True)))
        else:
            raise AssertionError(f"no strategy for {spec.name}: {hint}")
    if not values["f_workers"]:
        values["parity_workers"] = ()
    values["bls_threads"] = max(values["bls_threads"], 2 * values["max_parity_in_flight"])
    assume(values["request_timeout_ms"] > values["decode_after_ms"])
    return OrchestratorSettings(**values)


@st.composite
def configs(draw: st.DrawFn) -> OrchestratorConfig:
    """Any valid config: settings plus a code's wiring (k, r target models, weights or code models)."""
    base = draw(settings())
    k, r = draw(st.integers(2, 6)), draw(st.integers(1, 3))
    weights = draw(
        st.one_of(
            st.just(()),
            st.lists(
                st.lists(st.floats(-10, 10, allow_nan=False), min_size=k, max_size=k).map(tuple), min_size=r, max_size=r
            ).map(tuple),
        )
    )
    models = draw(st.booleans()) or not (weights and base.inline_code)
    return OrchestratorConfig(
        **dataclasses.asdict(base),
        inputs=(TensorSpec("input", np.dtype(np.float32), (1, 8, 8)),),
        outputs=(TensorSpec("logits", np.dtype(np.float32), (10,)),),
        max_batch_size=draw(st.integers(1, 64)),
        f_models=tuple(draw(st.lists(NAME, min_size=1, max_size=3, unique=True))),
        parity_models=tuple(draw(st.lists(NAME, min_size=r, max_size=r))),
        encoder_model=draw(NAME) if models else "",
        decoder_model=draw(NAME) if models else "",
        k=k,
        code_weights=weights,
    )


def coded_model_config(config: OrchestratorConfig, name: str = "m_coded") -> mc.ModelConfig:
    """A coded model's config carrying ``config``, as the repository writer lays it out."""
    model = mc.ModelConfig(name=name, backend="python", max_batch_size=config.max_batch_size)
    for field, specs in ((model.input, config.inputs), (model.output, config.outputs)):
        for spec in specs:
            field.add(name=spec.name, data_type=mc.TYPE_FP32, dims=list(spec.dims))
    model.output.add(name="parm_reconstructed", data_type=mc.TYPE_BOOL, dims=[1])
    for key, value in config.parameters().items():
        model.parameters[key].string_value = value
    return model


@SLOW_BOX
@given(configs())
def test_config_to_pbtxt_text_to_triton_json_and_back_is_the_identity(config):
    text = text_format.MessageToString(coded_model_config(config))
    as_json = json_format.MessageToDict(text_format.Parse(text, mc.ModelConfig()), preserving_proto_field_name=True)
    assert OrchestratorConfig.from_model_config(as_json) == config


@SLOW_BOX
@given(settings())
def test_a_deployments_settings_reach_its_coded_config_unchanged(chosen):
    deployment = dataclasses.replace(DEPLOYMENT, settings=chosen)
    text = text_format.MessageToString(model_configs(deployment)[deployment.names.coded])
    assert parse_orchestrator_config(text_format.Parse(text, mc.ModelConfig())).settings == chosen


def test_empty_parameters_are_left_out_and_read_back_as_defaults():
    parameters = dataclasses.replace(
        parse_orchestrator_config(read_config(_committed_coded_config())), f_workers=()
    ).parameters()
    assert "f_workers" not in parameters and "parity_workers" not in parameters
    assert "scheme" not in parameters


def _committed_coded_config():
    return REPOSITORY / DEPLOYMENT.names.coded / "config.pbtxt"


def test_a_field_of_a_type_no_parameter_can_carry_is_refused_where_the_spec_is_defined():
    @dataclass(frozen=True)
    class Spec:
        k: int = 2
        limits: dict[str, int] | None = None

    with pytest.raises(TypeError, match=r"Spec.limits: no parameter text for type"):
        parameter_codecs(Spec)
    assert list(parameter_codecs(Spec, exclude=("limits",))) == ["k"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"worker_probe_ms": 0.0}, "worker_probe_ms must be > 0"),
        ({"fill_timeout_quantile": 1.0}, "fill_timeout_quantile must be < 1"),
        ({"parity_cooldown_ms": float("inf")}, "finite"),
        ({"f_workers": ("a:1, b:2",)}, "no commas or spaces"),
        ({"parity_workers": ("h:1",)}, "parity_workers needs f_workers"),
        ({"f_workers": ("nowhere",)}, "expected host:port"),
    ],
)
def test_settings_validate_themselves(overrides, message):
    with pytest.raises(ConfigError, match=message):
        OrchestratorSettings(**overrides)

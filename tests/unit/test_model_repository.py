"""The committed model repository is exactly what the typed spec generates, and deployable as it stands."""

from __future__ import annotations

import dataclasses
import filecmp
from pathlib import Path

import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from parm.backend.orchestrator import OrchestratorSettings, ParityPolicy
from parm.export.models import DIGITS_INPUT, DIGITS_INPUT_SPEC, DIGITS_OUTPUT_SPEC
from parm.export.repository import (
    BACKEND_SOURCE,
    ORCHESTRATOR_PACKAGE,
    CodedDeployment,
    model_configs,
    parse_orchestrator_config,
    read_config,
)
from parm.jobs import F_NAME, MAX_BATCH_SIZE

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"

DEPLOYMENT = CodedDeployment(
    name=F_NAME,
    inputs=(DIGITS_INPUT_SPEC,),
    outputs=(DIGITS_OUTPUT_SPEC,),
    max_batch_size=MAX_BATCH_SIZE,
)
EXPECTED = model_configs(DEPLOYMENT)

_ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.BOOL: "TYPE_BOOL"}


def test_the_repository_holds_exactly_the_specified_models():
    committed = sorted(p.name for p in REPOSITORY.iterdir() if p.is_dir())
    assert committed == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_committed_config_is_what_the_spec_generates(name):
    assert read_config(REPOSITORY / name / "config.pbtxt") == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_model_runs_on_any_device_kind(name):
    config = read_config(REPOSITORY / name / "config.pbtxt")
    assert [group.kind for group in config.instance_group] == [mc.ModelInstanceGroup.Kind.KIND_AUTO]


def test_f_is_never_dynamically_batched_so_group_members_keep_separate_failure_domains():
    assert not read_config(REPOSITORY / F_NAME / "config.pbtxt").HasField("dynamic_batching")


def test_coded_config_is_a_valid_orchestrator_config():
    config = parse_orchestrator_config(read_config(REPOSITORY / DEPLOYMENT.names.coded / "config.pbtxt"))
    assert config.f_models == (F_NAME,)
    assert config.parity_models == (DEPLOYMENT.names.parity,)
    assert [spec.name for spec in config.inputs] == [DIGITS_INPUT]


@pytest.mark.parametrize("name", [n for n, c in EXPECTED.items() if c.backend == "onnxruntime"])
def test_onnx_models_are_self_contained_and_match_their_configs(name):
    path = REPOSITORY / name / "1" / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model)
    assert not any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in model.graph.initializer), (
        f"{path} refers to an external data file"
    )
    config = EXPECTED[name]
    batch = [-1] if config.max_batch_size > 0 else []
    for declared, graph in ((config.input, model.graph.input), (config.output, model.graph.output)):
        graph_tensors = {t.name: t.type.tensor_type for t in graph}
        assert sorted(graph_tensors) == sorted(t.name for t in declared)
        for tensor in declared:
            graph_type = graph_tensors[tensor.name]
            assert _ONNX_TO_TRITON[graph_type.elem_type] == mc.DataType.Name(tensor.data_type)
            assert len(graph_type.shape.dim) == len(batch) + len(tensor.dims)


def test_the_repository_carries_the_current_orchestrator_code():
    version_dir = REPOSITORY / DEPLOYMENT.names.coded / "1"
    assert filecmp.cmp(version_dir / "model.py", BACKEND_SOURCE / "triton_model.py", shallow=False)
    source = BACKEND_SOURCE / "orchestrator"
    copied = version_dir / ORCHESTRATOR_PACKAGE
    source_files = sorted(p.name for p in source.glob("*.py"))
    assert sorted(p.name for p in copied.glob("*.py")) == source_files
    _, mismatch, errors = filecmp.cmpfiles(source, copied, source_files, shallow=False)
    assert not mismatch and not errors, f"stale copies {mismatch}: run `parm export` to rewrite the repository"


@pytest.mark.parametrize(
    ("code", "k", "r", "weights"),
    [("sum", 3, 1, "1,1,1"), ("linear", 2, 2, "1,1;0.7071067690849304,-0.7071067690849304"), ("berrut", 2, 1, "")],
)
def test_linear_codes_are_encoded_and_decoded_in_the_orchestrator(code, k, r, weights):
    deployment = dataclasses.replace(DEPLOYMENT, code=code, k=k, r=r)
    assert deployment.orchestrator_config().parameters().get("code_weights", "") == weights
    config = parse_orchestrator_config(model_configs(deployment)[deployment.names.coded])
    assert len(config.code_weights) == (r if weights else 0)
    off = dataclasses.replace(deployment, settings=dataclasses.replace(deployment.settings, inline_code=False))
    parameters = off.orchestrator_config().parameters()
    assert parameters.get("code_weights", "") == weights  # the weights still say which parities solve what
    assert parameters["inline_code"] == "false"
    assert not parse_orchestrator_config(model_configs(off)[off.names.coded]).inline_code


def test_every_setting_reaches_the_coded_config():
    """What a deployment configures is what the endpoint reads: each setting changed from its default comes back."""
    settings = OrchestratorSettings(
        parity_policy=ParityPolicy.EAGER,
        decode_after_ms=3.5,
        request_timeout_ms=750.0,
        fill_timeout_quantile=0.5,
        decode_after_quantile=0.0,
        bls_threads=40,
        max_parity_in_flight=20,
        f_workers=("10.0.0.1:8001", "dns:f-workers:8001"),
        parity_workers=("10.0.0.9:8001",),
    )
    deployment = dataclasses.replace(DEPLOYMENT, settings=settings)
    config = parse_orchestrator_config(model_configs(deployment)[deployment.names.coded])
    assert config.settings == settings
    assert config == deployment.orchestrator_config()


@pytest.mark.parametrize("k", [2, 3])
def test_collage_parity_models_answer_one_head_per_member_and_its_decoder_takes_them(k):
    """The collage's parity answer is [k, *o] (``Code.parity_output_shape``): the parity model's config and the
    decoder's ``parity_outputs`` [r, B, k, *o] say so, while F, the members' stack and the endpoint keep F's [*o]."""
    deployment = dataclasses.replace(DEPLOYMENT, code="collage", k=k)
    configs = model_configs(deployment)
    (parity,) = [configs[name] for name in deployment.trained_parities]
    classes = list(DIGITS_OUTPUT_SPEC.dims)
    assert [list(t.dims) for t in parity.output] == [[k, *classes]]
    assert [list(t.dims) for t in parity.input] == [list(DIGITS_INPUT_SPEC.dims)]
    decoder = {t.name: list(t.dims) for t in configs[deployment.names.decoder].input}
    assert decoder == {"parity_outputs": [1, -1, k, *classes], "outputs": [k, -1, *classes], "available": [k + 1]}
    assert [list(t.dims) for t in configs[deployment.names.f].output] == [classes]
    coded = parse_orchestrator_config(configs[deployment.names.coded])
    assert coded.outputs == (DIGITS_OUTPUT_SPEC,)

"""A Python-based Triton backend named ``onnxruntime``: serves ONNX models with onnxruntime on the CPU.

The Triton server shipped in the ``nvidia-pytriton`` wheel has only the Python backend. Installed as
``<backend-dir>/onnxruntime/model.py`` (see ``parm.server``), this file makes that server serve every model whose
config says ``backend: "onnxruntime"``, so one model repository runs unchanged on a stock (GPU) Triton, with its
native onnxruntime backend, and on the embedded CPU server.

Config ``parameters`` read here (string values, as for Triton's native onnxruntime backend):
``intra_op_thread_count`` (default 1: the machine is small and every instance is its own process) and
``inter_op_thread_count`` (default 1). ``parm_reload`` (set by ``TritonServer.reload_model`` to force a fresh set of
instances) carries no setting and is ignored. Other keys are meant for the native backend; they are logged and
ignored rather than refused, so that a repository written for a GPU server still loads here.

This file runs inside the Triton stub process: it imports only numpy, onnxruntime and the backend utilities.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

logger = logging.getLogger(__name__)

DEFAULT_MODEL_FILENAME = "model.onnx"

# Config TYPE_* -> numpy dtype. BF16 has no numpy dtype and is refused in initialize.
TRITON_TO_NUMPY: dict[str, np.dtype] = {
    "TYPE_BOOL": np.dtype(np.bool_),
    "TYPE_UINT8": np.dtype(np.uint8),
    "TYPE_UINT16": np.dtype(np.uint16),
    "TYPE_UINT32": np.dtype(np.uint32),
    "TYPE_UINT64": np.dtype(np.uint64),
    "TYPE_INT8": np.dtype(np.int8),
    "TYPE_INT16": np.dtype(np.int16),
    "TYPE_INT32": np.dtype(np.int32),
    "TYPE_INT64": np.dtype(np.int64),
    "TYPE_FP16": np.dtype(np.float16),
    "TYPE_FP32": np.dtype(np.float32),
    "TYPE_FP64": np.dtype(np.float64),
    "TYPE_STRING": np.dtype(np.object_),
}

# onnxruntime's type strings -> numpy dtype, to compare the ONNX graph with the config.
ONNX_TO_NUMPY: dict[str, np.dtype] = {
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(string)": np.dtype(np.object_),
}

KNOWN_PARAMETERS = ("intra_op_thread_count", "inter_op_thread_count", "parm_reload")


class _TritonLogHandler(logging.Handler):
    """Routes ``logging`` records to Triton's log, so the server log shows them with the model's name."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            pb_utils.Logger.log_error(message)
        elif record.levelno >= logging.WARNING:
            pb_utils.Logger.log_warn(message)
        else:
            pb_utils.Logger.log_info(message)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the config declares it; ``shape`` includes the batch dim (-1) when batching."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class OnnxModelConfig:
    """What this backend needs from ``config.pbtxt``, parsed and checked once in ``initialize``."""

    name: str
    model_path: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    intra_op_threads: int = 1
    inter_op_threads: int = 1

    @classmethod
    def from_args(cls, args: dict[str, str]) -> OnnxModelConfig:
        config = json.loads(args["model_config"])
        name = args["model_name"]
        filename = config.get("default_model_filename") or DEFAULT_MODEL_FILENAME
        model_path = os.path.join(args["model_repository"], args["model_version"], filename)
        batching = int(config.get("max_batch_size", 0)) > 0
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        for key in sorted(set(parameters) - set(KNOWN_PARAMETERS)):
            logger.warning("model '%s': ignoring parameter '%s' (not used by the CPU onnxruntime backend)", name, key)
        return cls(
            name=name,
            model_path=model_path,
            inputs=tuple(_tensor_spec(name, entry, batching) for entry in config.get("input", [])),
            outputs=tuple(_tensor_spec(name, entry, batching) for entry in config.get("output", [])),
            intra_op_threads=_positive_int(name, parameters, "intra_op_thread_count"),
            inter_op_threads=_positive_int(name, parameters, "inter_op_thread_count"),
        )


def _tensor_spec(model: str, entry: dict[str, Any], batching: bool) -> TensorSpec:
    tensor = entry["name"]
    data_type = entry.get("data_type", "TYPE_INVALID")
    if data_type not in TRITON_TO_NUMPY:
        raise pb_utils.TritonModelException(
            f"model '{model}', tensor '{tensor}': data_type {data_type} is not supported by the CPU "
            f"onnxruntime backend (expected one of {', '.join(TRITON_TO_NUMPY)})"
        )
    # With `reshape`, the backend sees the reshaped tensor: that is the shape the ONNX graph must have.
    dims = entry.get("reshape", {}).get("shape", entry.get("dims", []))
    shape = tuple(int(d) for d in dims)
    return TensorSpec(
        name=tensor,
        dtype=TRITON_TO_NUMPY[data_type],
        shape=(-1, *shape) if batching else shape,
        optional=bool(entry.get("optional", False)),
    )


def _positive_int(model: str, parameters: dict[str, str], key: str) -> int:
    raw = parameters.get(key, "1")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise pb_utils.TritonModelException(
            f"model '{model}': parameter '{key}' must be a positive integer, got {raw!r}"
        )
    return value


def _check_against_graph(model: str, kind: str, specs: tuple[TensorSpec, ...], graph: list[Any]) -> None:
    """Refuses a config whose tensors disagree with the ONNX graph, naming the model and the tensor.

    A dim is checked only where both sides fix it (-1 in the config or a symbolic dim in the graph match anything),
    except the batch dim: a batching config needs a graph whose first dim is not fixed.
    """
    nodes = {node.name: node for node in graph}
    undeclared = sorted(set(nodes) - {spec.name for spec in specs})
    if kind == "input" and undeclared:  # outputs may be a subset; every graph input must be fed
        raise pb_utils.TritonModelException(
            f"model '{model}': the ONNX graph has inputs {undeclared} that the config does not declare"
        )
    for spec in specs:
        node = nodes.get(spec.name)
        if node is None:
            raise pb_utils.TritonModelException(
                f"model '{model}', {kind} '{spec.name}': not in the ONNX graph, whose {kind}s are {sorted(nodes)}"
            )
        graph_dtype = ONNX_TO_NUMPY.get(node.type)
        if graph_dtype != spec.dtype:
            raise pb_utils.TritonModelException(
                f"model '{model}', {kind} '{spec.name}': config says {spec.dtype}, the ONNX graph says {node.type}"
            )
        graph_shape = list(node.shape)
        if len(graph_shape) != len(spec.shape):
            raise pb_utils.TritonModelException(
                f"model '{model}', {kind} '{spec.name}': config shape {list(spec.shape)} (batch dim included) "
                f"has rank {len(spec.shape)}, the ONNX graph's shape {graph_shape} has rank {len(graph_shape)}"
            )
        for axis, (want, have) in enumerate(zip(spec.shape, graph_shape, strict=True)):
            if want >= 0 and isinstance(have, int) and have >= 0 and want != have:
                raise pb_utils.TritonModelException(
                    f"model '{model}', {kind} '{spec.name}': dim {axis} is {want} in the config "
                    f"and {have} in the ONNX graph"
                )
        if spec.shape and spec.shape[0] == -1 and isinstance(graph_shape[0], int) and graph_shape[0] > 0:
            raise pb_utils.TritonModelException(
                f"model '{model}', {kind} '{spec.name}': max_batch_size > 0 needs a dynamic first dim, "
                f"but the ONNX graph fixes it to {graph_shape[0]}"
            )


class TritonPythonModel:
    """One model instance: an onnxruntime session, built once, and one ``session.run`` per request."""

    def initialize(self, args: dict[str, str]) -> None:
        """Parses the config, loads the ONNX model and checks the two agree; all heavy work happens here."""
        if not any(isinstance(h, _TritonLogHandler) for h in logger.handlers):
            logger.addHandler(_TritonLogHandler())
            logger.setLevel(logging.INFO)
            logger.propagate = False
        self.config = OnnxModelConfig.from_args(args)
        if not os.path.isfile(self.config.model_path):
            raise pb_utils.TritonModelException(
                f"model '{self.config.name}': ONNX file {self.config.model_path} not found"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.config.intra_op_threads
        options.inter_op_num_threads = self.config.inter_op_threads
        # Several instances share few cores: spinning idle worker threads would steal CPU from the others.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                self.config.model_path, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise pb_utils.TritonModelException(
                f"model '{self.config.name}': onnxruntime cannot load {self.config.model_path}: {exc}"
            ) from exc
        _check_against_graph(self.config.name, "input", self.config.inputs, self.session.get_inputs())
        _check_against_graph(self.config.name, "output", self.config.outputs, self.session.get_outputs())
        self._output_names = tuple(spec.name for spec in self.config.outputs)
        logger.info(
            "model '%s' instance '%s': loaded %s (intra_op_threads=%d)",
            self.config.name,
            args.get("model_instance_name", "?"),
            self.config.model_path,
            self.config.intra_op_threads,
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answers each request on its own: one bad request gets its own error, never its neighbours'."""
        responses = []
        for request in requests:
            try:
                responses.append(self._run(request))
            except Exception as exc:
                message = f"model '{self.config.name}': {type(exc).__name__}: {exc}"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))
        return responses

    def _run(self, request: Any) -> Any:
        feeds = {}
        for spec in self.config.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is None:
                if spec.optional:
                    continue
                raise ValueError(f"input '{spec.name}' is missing")
            feeds[spec.name] = tensor.as_numpy()
        requested = set(request.requested_output_names())
        names = [name for name in self._output_names if name in requested] or list(self._output_names)
        values = self.session.run(names, feeds)
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in zip(names, values, strict=True)]
        )

    def finalize(self) -> None:
        """Drops the session; safe to call twice."""
        self.session = None

"""Tensor signatures of the coded endpoint and validation of one client's query against them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, InvalidQueryError

_TRITON_TO_NUMPY = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
}


def triton_type(dtype: np.dtype) -> str:
    """The ``TYPE_*`` name of a numpy dtype, as written in ``config.pbtxt``."""
    for name, candidate in _TRITON_TO_NUMPY.items():
        if np.dtype(candidate) == np.dtype(dtype):
            return name
    raise ConfigError(f"datatype {dtype} has no Triton equivalent that can be coded")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of F, without the batch dimension (-1 marks a variable dimension)."""

    name: str
    dtype: np.dtype
    dims: tuple[int, ...]

    @classmethod
    def from_config(cls, entry: Mapping) -> TensorSpec:
        """Reads one ``input``/``output`` entry of a Triton model config (as JSON)."""
        data_type = entry["data_type"]
        if data_type not in _TRITON_TO_NUMPY:
            raise ConfigError(f"tensor '{entry['name']}': datatype {data_type} cannot be coded")
        dims = tuple(int(d) for d in entry.get("dims", []))
        if "reshape" in entry:
            raise ConfigError(f"tensor '{entry['name']}': reshape is not supported on the coded endpoint")
        return cls(name=entry["name"], dtype=np.dtype(_TRITON_TO_NUMPY[data_type]), dims=dims)

    def matches(self, shape: Sequence[int]) -> bool:
        """True when ``shape`` (without batch) fits ``dims``, -1 matching any size."""
        return len(shape) == len(self.dims) and all(d in (-1, s) for d, s in zip(self.dims, shape, strict=True))


def validate_query(inputs: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], max_batch_size: int) -> int:
    """Checks one request's inputs against F's signature and returns its batch size.

    Triton validates requests against ``config.pbtxt`` before they reach the model; this check is the
    orchestrator's own guard, so that a malformed request is refused alone and never reaches a coding group.
    """
    expected = {spec.name for spec in specs}
    missing = sorted(expected - inputs.keys())
    if missing:
        raise InvalidQueryError(f"missing input(s) {missing}; expected {sorted(expected)}")
    unknown = sorted(inputs.keys() - expected)
    if unknown:
        raise InvalidQueryError(f"unknown input(s) {unknown}; expected {sorted(expected)}")
    batch_sizes = set()
    for spec in specs:
        array = inputs[spec.name]
        if array.dtype != spec.dtype:
            raise InvalidQueryError(f"input '{spec.name}': expected datatype {spec.dtype}, got {array.dtype}")
        if array.ndim < 1 or not spec.matches(array.shape[1:]):
            raise InvalidQueryError(
                f"input '{spec.name}': expected shape [batch, {', '.join(map(str, spec.dims))}], "
                f"got {list(array.shape)}"
            )
        batch_sizes.add(array.shape[0])
    if len(batch_sizes) != 1:
        raise InvalidQueryError(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    batch = batch_sizes.pop()
    if not 1 <= batch <= max_batch_size:
        raise InvalidQueryError(f"batch size {batch} is outside [1, max_batch_size={max_batch_size}]")
    return batch


def group_key(inputs: Mapping[str, np.ndarray]) -> tuple:
    """Requests can share a coding group only when every input has the same shape (batch size included)."""
    return tuple(sorted((name, array.shape) for name, array in inputs.items()))


def all_finite(inputs: Mapping[str, np.ndarray]) -> bool:
    """A query with NaN/Inf would poison the parity of its whole group, so such a query is never coded."""
    return all(
        not np.issubdtype(array.dtype, np.floating) or bool(np.isfinite(array).all()) for array in inputs.values()
    )

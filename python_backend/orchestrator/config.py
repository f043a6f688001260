"""The coded endpoint's configuration, parsed once from its Triton model config and validated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum

from .contract import RECONSTRUCTED_OUTPUT
from .errors import ConfigError
from .linear import parse_weights
from .tensors import TensorSpec


class Scheme(Enum):
    """How requests are protected. Only ParM-style coding is served today; baselines live in the benchmark."""

    PARM = "parm"


class ParityPolicy(Enum):
    """When a closed coding group's parity is computed."""

    EAGER = "eager"
    """As soon as the group closes (ParM): a rebuild is ready as early as possible, and every group costs 1/k of
    an F call on the parity models."""
    ON_DEMAND = "on_demand"
    """Only if a member is still unanswered when its rebuild becomes allowed (``decode_after``) and is a straggler
    or within the parity budget (``budget``), or its F call failed: groups whose members all answer in time (most
    of them) cost nothing; a rebuild arrives one parity computation later. For parity models that share hardware
    with F."""


RELOAD_PARAMETER = "parm_reload"
"""A ``parameters`` key that carries no setting: a changing value forces Triton to build fresh instances."""


@dataclass(frozen=True)
class OrchestratorConfig:
    """Everything the orchestrator needs, from ``config.pbtxt`` ``parameters`` plus F's signature.

    Times are in milliseconds. A missing answer is rebuilt once the code allows it and F had the longer of
    ``decode_after_ms`` and the ``decode_after_quantile`` of its recent latencies to answer on its own (a failed F
    call is rebuilt at once): a member that is merely not slow keeps F's exact answer instead of racing the parity
    path. Both 0 is ParM's policy: whichever result comes first.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    f_models: tuple[str, ...]
    parity_models: tuple[str, ...]
    encoder_model: str = ""
    decoder_model: str = ""
    scheme: Scheme = Scheme.PARM
    parity_policy: ParityPolicy = ParityPolicy.ON_DEMAND
    k: int = 2
    decode_after_ms: float = 0.0
    request_timeout_ms: float = 1000.0
    fill_timeout_ms: float = 5.0
    fill_timeout_quantile: float = 0.9
    decode_after_quantile: float = 0.9
    filler_cache_size: int = 64
    max_in_flight: int = 1024
    max_parity_in_flight: int = 8
    parity_budget: float = 0.1
    """On-demand parities per request, on average, for late members that are not known stragglers (``budget``)."""
    parity_burst: float = 4.0
    """How many such parities may be spent at once after a quiet spell (the budget's bucket size)."""
    straggler_overtakes: int = 2
    """A late member whose F call was overtaken by this many answers to later requests is a straggler: its parity
    is sent without spending budget (``budget``)."""
    parity_cooldown_ms: float = 5000.0
    bls_threads: int = 64
    code_weights: tuple[tuple[float, ...], ...] = ()
    """[r, k] weights of a linear code (ParM's sum: one row of ones): they say which arrived parities solve which
    erased members (``linear.solvable``), and with ``inline_code`` the orchestrator encodes and decodes in process
    (``linear``) instead of calling ``encoder_model`` and ``decoder_model``. Empty: a code that is not linear; the
    decoder model rebuilds e erased members from any e parities."""
    inline_code: bool = True
    """With ``code_weights``: encode and decode in process (True) or through the code models (False)."""
    f_workers: tuple[str, ...] = ()
    """Where F runs: empty, in this server (BLS); else the gRPC addresses of the Triton servers that serve the F
    models, each ``host:port`` one failure domain, or ``dns:NAME:PORT``, every A record of NAME one worker (a
    Kubernetes headless Service), resolved again every ``worker_resolve_ms`` (``workers``)."""
    parity_workers: tuple[str, ...] = ()
    """Where the parity models run, as ``f_workers``; empty with ``f_workers`` set: on an F worker that holds none
    of the group's members."""
    worker_probe_ms: float = 250.0
    """How often each worker's readiness is probed (with a deadline of half that): a stopped server still accepts
    TCP connections, so only an answer tells it is alive."""
    worker_cooldown_ms: float = 1000.0
    """How long an ejected worker gets no new members, at least; the cooldown doubles while ejections repeat (a
    slow server does not flap in and out) and resets once the worker has served a cooldown's worth without one."""
    worker_readmit_probes: int = 3
    """Consecutive good probes that readmit an ejected worker."""
    worker_resolve_ms: float = 5000.0
    """How often ``dns:`` worker names are resolved again, so a scaled worker set is picked up."""

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ConfigError(f"k must be >= 2, got {self.k}")
        if not self.f_models:
            raise ConfigError("f_models must name at least one model")
        if not self.parity_models:
            raise ConfigError("parity_models must name at least one model (r = number of parity models)")
        if self.code_weights:
            shape = (len(self.code_weights), len(self.code_weights[0]))
            if shape != (self.r, self.k):
                raise ConfigError(f"code_weights must be [r, k] = [{self.r}, {self.k}], got {list(shape)}")
        if not (self.code_weights and self.inline_code) and not (self.encoder_model and self.decoder_model):
            raise ConfigError(
                "encoder_model and decoder_model must be set (or code_weights with inline_code, for a linear code)"
            )
        if self.max_batch_size < 1:
            raise ConfigError(f"the coded endpoint needs max_batch_size >= 1, got {self.max_batch_size}")
        if not self.inputs or not self.outputs:
            raise ConfigError("the coded endpoint needs at least one input and one output besides the flag")
        for name in (
            "decode_after_ms",
            "fill_timeout_ms",
            "request_timeout_ms",
            "parity_cooldown_ms",
            "worker_probe_ms",
            "worker_cooldown_ms",
            "worker_resolve_ms",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("fill_timeout_quantile", "decode_after_quantile"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.request_timeout_ms <= self.decode_after_ms:
            raise ConfigError(
                f"request_timeout_ms ({self.request_timeout_ms}) must exceed decode_after_ms ({self.decode_after_ms})"
            )
        if self.parity_budget < 0:
            raise ConfigError(f"parity_budget must be >= 0, got {self.parity_budget}")
        if self.parity_burst < 1:
            raise ConfigError(f"parity_burst must be >= 1 (a whole parity), got {self.parity_burst}")
        if self.parity_workers and not self.f_workers:
            raise ConfigError("parity_workers needs f_workers: a coded endpoint is local or remote as a whole")
        for address in self.f_workers + self.parity_workers:
            check_worker_address(address)
        for name in (
            "max_in_flight",
            "max_parity_in_flight",
            "bls_threads",
            "straggler_overtakes",
            "worker_readmit_probes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if 2 * self.max_parity_in_flight > self.bls_threads:
            raise ConfigError(
                f"max_parity_in_flight ({self.max_parity_in_flight}) may hold at most half of bls_threads "
                f"({self.bls_threads}), so that stuck parity calls never starve F's"
            )
        if self.filler_cache_size < 1:
            raise ConfigError(f"filler_cache_size must be >= 1, got {self.filler_cache_size}")

    @property
    def r(self) -> int:
        """Number of parity queries per coding group (one parity model each)."""
        return len(self.parity_models)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    @classmethod
    def from_model_config(cls, model_config: Mapping) -> OrchestratorConfig:
        """Builds the config from Triton's model config (the JSON given to ``initialize``).

        Refuses unknown ``parameters`` keys with a message naming the key, so a typo never passes silently.
        ``parm_reload`` (a marker that forces Triton to build fresh instances, see ``TritonServer.reload_model``)
        carries no setting and is skipped.
        """
        parameters = {
            key: value["string_value"]
            for key, value in model_config.get("parameters", {}).items()
            if key != RELOAD_PARAMETER
        }
        field_types = {f.name: f.type for f in fields(cls) if f.name not in ("inputs", "outputs", "max_batch_size")}
        unknown = sorted(parameters.keys() - field_types.keys())
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown}; known: {sorted(field_types)}")
        values: dict[str, object] = {}
        for key, text in parameters.items():
            values[key] = _parse(key, field_types[key], text)
        outputs = tuple(
            TensorSpec.from_config(entry)
            for entry in model_config.get("output", [])
            if entry["name"] != RECONSTRUCTED_OUTPUT
        )
        if len(outputs) == len(model_config.get("output", [])):
            raise ConfigError(f"the coded endpoint must declare the BOOL output '{RECONSTRUCTED_OUTPUT}'")
        try:
            return cls(
                inputs=tuple(TensorSpec.from_config(entry) for entry in model_config.get("input", [])),
                outputs=outputs,
                max_batch_size=int(model_config.get("max_batch_size", 0)),
                **values,  # type: ignore[arg-type]
            )
        except TypeError as error:
            raise ConfigError(f"incomplete orchestrator parameters: {error}") from error


def check_worker_address(address: str) -> tuple[str, int, bool]:
    """``host:port`` or ``dns:NAME:PORT`` -> (host, port, whether NAME is resolved to many workers)."""
    text = address.strip()
    dns = text.startswith("dns:")
    host, _, port = text.removeprefix("dns:").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"worker address {address!r}: expected host:port or dns:NAME:PORT")
    return host, int(port), dns


def _parse(key: str, annotation: str, text: str) -> object:
    """Parses one ``string_value`` by the field's annotation (kept as a string by ``from __future__``)."""
    try:
        if annotation == "int":
            return int(text)
        if annotation == "float":
            return float(text)
        if annotation == "bool":
            return _parse_bool(text)
        if annotation == "Scheme":
            return Scheme(text.strip().lower())
        if annotation == "ParityPolicy":
            return ParityPolicy(text.strip().lower())
        if annotation == "tuple[tuple[float, ...], ...]":
            return parse_weights(text)
        if annotation == "tuple[str, ...]":
            names = tuple(name.strip() for name in text.split(",") if name.strip())
            return names
        return text.strip()
    except ValueError as error:
        raise ConfigError(f"parameter '{key}': cannot parse {text!r} ({error})") from error


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in ("true", "1", "yes"):
        return True
    if word in ("false", "0", "no"):
        return False
    raise ValueError("expected true or false")

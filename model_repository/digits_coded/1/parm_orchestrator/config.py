"""The coded endpoint's configuration: one typed, frozen, self-validating spec, read from and written to the
``parameters`` of its ``config.pbtxt`` by one generic codec derived from the fields' types.

``OrchestratorSettings`` holds the tunables a deployment chooses (policies, quantiles, time limits, bounds, where
the workers are); ``OrchestratorConfig`` adds what the deployment itself fixes: F's signature (from the config's
``input``/``output``/``max_batch_size``) and the code's wiring (k, the target models, a linear code's weights).
Every field but the signature is one ``string_value`` parameter, written by ``OrchestratorConfig.parameters`` and
read by ``OrchestratorConfig.from_model_config``; a field of a type the codec does not know is refused when this
module is imported.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from typing import Any

from .contract import RECONSTRUCTED_OUTPUT
from .errors import ConfigError
from .linear import parse_weights
from .tensors import TensorSpec


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

SIGNATURE_FIELDS = ("inputs", "outputs", "max_batch_size")
"""``OrchestratorConfig`` fields read from the config's tensors, not from its ``parameters``."""


def _bounded(default: Any, *, low: float | None = None, above: float | None = None, below: float | None = None):
    """A field with a default and bounds that ``__post_init__`` checks: ``low`` <= value, ``above`` < value,
    value < ``below``."""
    return field(default=default, metadata={"low": low, "above": above, "below": below})


def _milliseconds(default: float):
    return _bounded(default, low=0.0)


def _period(default: float):
    """A period in milliseconds: a loop that waits it between rounds, so never 0."""
    return _bounded(default, above=0.0)


def _count(default: int):
    return _bounded(default, low=1)


def _quantile(default: float):
    return _bounded(default, low=0.0, below=1.0)


@dataclass(frozen=True, kw_only=True)
class OrchestratorSettings:
    """The orchestrator's tunables, each with its default; times are in milliseconds.

    A missing answer is rebuilt once the code allows it and F had the longer of ``decode_after_ms`` and the
    ``decode_after_quantile`` of its recent latencies to answer on its own (a failed F call is rebuilt at once): a
    member that is merely not slow keeps F's exact answer instead of racing the parity path. Both 0 (with
    ``parity_policy`` eager) is ParM's policy: whichever result comes first.
    """

    parity_policy: ParityPolicy = ParityPolicy.ON_DEMAND
    decode_after_ms: float = _milliseconds(0.0)
    request_timeout_ms: float = _milliseconds(1000.0)
    fill_timeout_ms: float = _milliseconds(5.0)
    fill_timeout_quantile: float = _quantile(0.9)
    decode_after_quantile: float = _quantile(0.9)
    filler_cache_size: int = _count(64)
    max_in_flight: int = _count(1024)
    max_parity_in_flight: int = _count(8)
    parity_budget: float = _bounded(0.1, low=0.0)
    """On-demand parities per request, on average, for late members that are not known stragglers (``budget``)."""
    parity_burst: float = _bounded(4.0, low=1.0)
    """How many such parities may be spent at once after a quiet spell (the budget's bucket size; at least one
    whole parity)."""
    straggler_overtakes: int = _count(2)
    """A late member whose F call was overtaken by this many answers to later requests is a straggler: its parity
    is sent without spending budget (``budget``)."""
    parity_cooldown_ms: float = _milliseconds(5000.0)
    hedge_below_load: float = _bounded(0.0, low=0.0)
    """A late member's query (unanswered after ``decode_after``, or a straggler) also goes to a second F worker (a
    hedge) while the F workers have fewer than this many calls outstanding each, on average: with spare capacity a
    second F call is cheap and its answer is F's own, and under load it would only lengthen the queues (hedging
    collapses at 100 req/s on one 2-core server). A hedged late member spends no parity budget; one that turns out a
    straggler gets its parity, and the rebuild races the hedge. 0: never, the default, since on one server every
    hedge competes with F for the same CPUs; a gateway with dedicated workers: about 1."""
    bls_threads: int = _count(64)
    inline_code: bool = True
    """With ``code_weights``: encode and decode in process (True) or through the code models (False)."""
    f_workers: tuple[str, ...] = ()
    """Where F runs: empty, in this server (BLS); else the gRPC addresses of the Triton servers that serve the F
    models, each ``host:port`` one failure domain, or ``dns:NAME:PORT``, every A record of NAME one worker (a
    Kubernetes headless Service), resolved again every ``worker_resolve_ms`` (``workers``)."""
    parity_workers: tuple[str, ...] = ()
    """Where the parity models run, as ``f_workers``; empty with ``f_workers`` set: on an F worker that holds none
    of the group's members."""
    worker_probe_ms: float = _period(250.0)
    """How often each worker's readiness is probed (with a deadline of half that): a stopped server still accepts
    TCP connections, so only an answer tells it is alive."""
    worker_cooldown_ms: float = _milliseconds(1000.0)
    """How long an ejected worker gets no new members, at least; the cooldown doubles while ejections repeat (a
    slow server does not flap in and out) and resets once the worker has served a cooldown's worth without one."""
    worker_readmit_probes: int = _count(3)
    """Consecutive good probes that readmit an ejected worker."""
    worker_resolve_ms: float = _period(5000.0)
    """How often ``dns:`` worker names are resolved again, so a scaled worker set is picked up."""

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.request_timeout_ms <= self.decode_after_ms:
            raise ConfigError(
                f"request_timeout_ms ({self.request_timeout_ms}) must exceed decode_after_ms ({self.decode_after_ms})"
            )
        if 2 * self.max_parity_in_flight > self.bls_threads:
            raise ConfigError(
                f"max_parity_in_flight ({self.max_parity_in_flight}) may hold at most half of bls_threads "
                f"({self.bls_threads}), so that stuck parity calls never starve F's"
            )
        if self.parity_workers and not self.f_workers:
            raise ConfigError("parity_workers needs f_workers: a coded endpoint is local or remote as a whole")
        for address in self.f_workers + self.parity_workers:
            check_worker_address(address)


@dataclass(frozen=True, kw_only=True)
class OrchestratorConfig(OrchestratorSettings):
    """Everything the orchestrator needs: F's signature, the code's wiring and the settings.

    The settings' fields are this class's own (``config.parity_policy``); ``settings`` gives them back alone.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    f_models: tuple[str, ...]
    parity_models: tuple[str, ...]
    encoder_model: str = ""
    decoder_model: str = ""
    k: int = _bounded(2, low=2)
    code_weights: tuple[tuple[float, ...], ...] = ()
    """[r, k] weights of a linear code (ParM's sum: one row of ones): they say which arrived parities solve which
    erased members (``linear.solvable``), and with ``inline_code`` the orchestrator encodes and decodes in process
    (``linear``) instead of calling ``encoder_model`` and ``decoder_model``. Empty: a code that is not linear; the
    decoder model rebuilds e erased members from any e parities."""

    def __post_init__(self) -> None:
        super().__post_init__()
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

    @property
    def r(self) -> int:
        """Number of parity queries per coding group (one parity model each)."""
        return len(self.parity_models)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    @property
    def settings(self) -> OrchestratorSettings:
        """The tunables alone, as a deployment chooses them."""
        return OrchestratorSettings(**{f.name: getattr(self, f.name) for f in fields(OrchestratorSettings)})

    def parameters(self) -> dict[str, str]:
        """Every setting and the code's wiring as ``config.pbtxt`` ``string_value`` texts, which
        ``from_model_config`` reads back to an equal config. A parameter whose text is empty (no workers, no
        weights) is left out: it reads back as its default."""
        texts = {name: codec.write(getattr(self, name)) for name, codec in _CODECS.items()}
        return {name: text for name, text in texts.items() if text}

    @classmethod
    def from_model_config(cls, model_config: Mapping) -> OrchestratorConfig:
        """Builds the config from Triton's model config (the JSON given to ``initialize``, or a server's
        ``GET /v2/models/<name>/config``).

        Refuses unknown ``parameters`` keys with a message naming the key, so a typo never passes silently.
        ``parm_reload`` (a marker that forces Triton to build fresh instances, see ``TritonServer.reload_model``)
        carries no setting and is skipped.
        """
        texts = {
            key: value.get("string_value", "")
            for key, value in model_config.get("parameters", {}).items()
            if key != RELOAD_PARAMETER
        }
        unknown = sorted(texts.keys() - _CODECS.keys())
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown}; known: {sorted(_CODECS)}")
        values = {key: _CODECS[key].read(key, text) for key, text in texts.items()}
        missing = sorted(
            f.name
            for f in fields(cls)
            if f.name in _CODECS and f.name not in values and f.default is MISSING and f.default_factory is MISSING
        )
        if missing:
            raise ConfigError(f"missing orchestrator parameter(s) {missing}")
        declared = model_config.get("output", [])
        outputs = tuple(TensorSpec.from_config(entry) for entry in declared if entry["name"] != RECONSTRUCTED_OUTPUT)
        if len(outputs) == len(declared):
            raise ConfigError(f"the coded endpoint must declare the BOOL output '{RECONSTRUCTED_OUTPUT}'")
        return cls(
            inputs=tuple(TensorSpec.from_config(entry) for entry in model_config.get("input", [])),
            outputs=outputs,
            max_batch_size=int(model_config.get("max_batch_size", 0)),
            **values,
        )


def check_worker_address(address: str) -> tuple[str, int, bool]:
    """``host:port`` or ``dns:NAME:PORT`` -> (host, port, whether NAME is resolved to many workers)."""
    text = address.strip()
    dns = text.startswith("dns:")
    host, _, port = text.removeprefix("dns:").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"worker address {address!r}: expected host:port or dns:NAME:PORT")
    return host, int(port), dns


# -- the generic checks and the parameter codec ---------------------------------------------------------------------


def _check_fields(spec: object) -> None:
    """The checks every field's type and bounds imply: finite numbers within ``_bounded``'s limits, and names that
    a comma-separated parameter can carry (no commas, no surrounding spaces, none empty)."""
    for f in fields(spec):  # type: ignore[arg-type]
        value = getattr(spec, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value}")
        low, above, below = (f.metadata.get(key) for key in ("low", "above", "below"))
        if low is not None and value < low:
            raise ConfigError(f"{f.name} must be >= {low:g}, got {value}")
        if above is not None and value <= above:
            raise ConfigError(f"{f.name} must be > {above:g}, got {value}")
        if below is not None and value >= below:
            raise ConfigError(f"{f.name} must be < {below:g}, got {value}")
        if f.name in _NAME_FIELDS:
            names = value if isinstance(value, tuple) else (value,) if value else ()
            for name in names:
                if not name or name != name.strip() or "," in name:
                    raise ConfigError(f"{f.name}: {name!r} is not a model name or address (no commas or spaces)")


@dataclass(frozen=True)
class _Codec:
    """How one field's value is written as a ``string_value`` and read back."""

    parse: Callable[[str], object]
    write: Callable[[Any], str]

    def read(self, key: str, text: str) -> object:
        try:
            return self.parse(text)
        except ValueError as error:
            raise ConfigError(f"parameter '{key}': cannot parse {text!r} ({error})") from error


def _write_float(value: float) -> str:
    """The shortest text that reads back as the same float ("5" for 5.0, "0.1" for 0.1)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in ("true", "1", "yes"):
        return True
    if word in ("false", "0", "no"):
        return False
    raise ValueError("expected true or false")


def _parse_names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _enum_codec(kind: type[Enum]) -> _Codec:
    def parse(text: str) -> Enum:
        try:
            return kind(text.strip().lower())
        except ValueError:
            raise ValueError(f"expected one of {[member.value for member in kind]}") from None

    return _Codec(parse, lambda member: member.value)


_SCALAR_CODECS: dict[object, _Codec] = {
    bool: _Codec(_parse_bool, lambda value: "true" if value else "false"),
    int: _Codec(lambda text: int(text.strip()), str),
    float: _Codec(lambda text: float(text.strip()), _write_float),
    str: _Codec(str.strip, str),
    tuple[str, ...]: _Codec(_parse_names, ",".join),
    tuple[tuple[float, ...], ...]: _Codec(
        parse_weights, lambda rows: ";".join(",".join(_write_float(w) for w in row) for row in rows)
    ),
}


def codec_for(annotation: object) -> _Codec | None:
    """The codec of a field's resolved type, or None for a type no parameter text can carry."""
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return _enum_codec(annotation)
    return _SCALAR_CODECS.get(annotation)


def parameter_codecs(spec: type, exclude: tuple[str, ...] = ()) -> dict[str, _Codec]:
    """Each field of the dataclass ``spec`` (but ``exclude``) -> its codec, from the fields' real types
    (``typing.get_type_hints``, not the annotations' text); a field of any other type is refused."""
    hints = typing.get_type_hints(spec)
    codecs: dict[str, _Codec] = {}
    for f in fields(spec):
        if f.name in exclude:
            continue
        codec = codec_for(hints[f.name])
        if codec is None:
            raise TypeError(f"{spec.__name__}.{f.name}: no parameter text for type {hints[f.name]!r}")
        codecs[f.name] = codec
    return codecs


_CODECS = parameter_codecs(OrchestratorConfig, exclude=SIGNATURE_FIELDS)
_NAME_FIELDS = frozenset(
    name for name, hint in typing.get_type_hints(OrchestratorConfig).items() if hint in (str, tuple[str, ...])
)

"""The benchmark's schemes: what each one calls, and whose instance the faults hit.

- ``none``: F alone with ``f_instances`` instances (the coded setup's F, called directly; no redundancy);
- ``equal``: F alone with ``f_instances + parity_instances`` instances, as many as the coded setup uses in total;
- ``hedged``: ``equal``'s model, with a backup copy after a delay;
- ``parm-k2`` (``parm-k3``, ...): the coded endpoint of that k; ``parm-eager``: the k = 2 endpoint with ParM's eager
  parity policy; ``parm-hedged``: the k = 2 endpoint that also hedges late members while F has spare instances;
- ``relay``: a Python-backend model that only relays to F over BLS (the floor of any orchestrator in the backend).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from parm.errors import ConfigError

if TYPE_CHECKING:
    from .benchrepo import BenchRepository

SCHEME_NAMES = ("none", "equal", "hedged", "parm", "relay")
VARIANTS = {"parm-eager": "coded_eager", "parm-hedged": "coded_hedged"}
"""The k = 2 endpoint under other orchestrator settings -> the ``BenchRepository`` field naming its model."""


class SchemeKind(Enum):
    NONE = "none"
    EQUAL = "equal"
    HEDGED = "hedged"
    PARM = "parm"
    RELAY = "relay"


@dataclass(frozen=True)
class Scheme:
    """What a scheme calls, and whose instance the faults hit."""

    name: str
    kind: SchemeKind
    model: str
    fault_model: str
    instances: int
    flag_output: bool = False
    k: int | None = None


def resolve_schemes(repo: BenchRepository, names: Sequence[str]) -> list[Scheme]:
    """Scheme names ("none", "equal", "hedged", "parm" = every k built, or "parm-k3"; "relay", the Python-backend
    floor) -> schemes, equal first."""
    schemes: list[Scheme] = []
    for name in names:
        if name == "none":
            f2 = repo.f_models[min(repo.f_models)]
            schemes.append(Scheme("none", SchemeKind.NONE, f2, f2, repo.f_instances))
        elif name in ("equal", "hedged"):
            kind = SchemeKind(name)
            schemes.append(Scheme(name, kind, repo.equal_model, repo.equal_model, repo.total_instances))
        elif name == "relay":
            if repo.relay_model is None:
                raise ConfigError("scheme relay: the repository has no relay model (rebuild it)")
            f2 = repo.f_models[min(repo.f_models)]
            schemes.append(Scheme(name, SchemeKind.RELAY, repo.relay_model, f2, repo.f_instances))
        elif name in VARIANTS:
            model = getattr(repo, VARIANTS[name])
            if model is None:
                raise ConfigError(f"scheme {name}: the repository has no such coded model (rebuild it)")
            k = min(repo.coded)
            schemes.append(Scheme(name, SchemeKind.PARM, model, repo.f_models[k], repo.total_instances, True, k))
        elif name == "parm" or name.startswith("parm-k"):
            ks = sorted(repo.coded) if name == "parm" else [int(name.removeprefix("parm-k"))]
            for k in ks:
                if k not in repo.coded:
                    raise ConfigError(
                        f"scheme {name}: the repository has no coded model for k={k} (has {sorted(repo.coded)})"
                    )
                schemes.append(
                    Scheme(
                        f"parm-k{k}", SchemeKind.PARM, repo.coded[k], repo.f_models[k], repo.total_instances, True, k
                    )
                )
        else:
            known = ", ".join((*SCHEME_NAMES, "parm-k<K>", *VARIANTS))
            raise ConfigError(f"unknown scheme {name!r}; known: {known}")
    order = {SchemeKind.EQUAL: 0, SchemeKind.HEDGED: 1, SchemeKind.NONE: 2, SchemeKind.RELAY: 3, SchemeKind.PARM: 4}
    unique = {s.name: s for s in schemes}
    return sorted(unique.values(), key=lambda s: (order[s.kind], s.k or 0, s.name))

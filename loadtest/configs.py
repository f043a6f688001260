"""What a benchmark or soak run is: its typed configs, each default defined once (the CLI is derived from them).

No torch, no server: ``parm --help`` and the option parsers import this alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from parm.errors import ConfigError

from .scenarios import SCENARIO_NAMES
from .schemes import SCHEME_NAMES

MODELS_DIR = Path("runs/bench/models")


@dataclass(frozen=True)
class BenchModelSpec:
    """What to build: F's size, the k values, instance counts and training budgets (small: digits is small and the
    benchmark measures latency; the degraded-mode accuracy is recorded so the cost of a rebuild stays visible)."""

    width: int = 80
    blocks: int = 12
    upsample: int = 2
    ks: tuple[int, ...] = (2,)
    f_instances: int = 2
    parity_instances: int = 1
    seed: int = 0
    f_epochs: int = 4
    parity_epochs: int = 4
    parity_groups_per_epoch: int = 2000
    quick: bool = False

    def __post_init__(self) -> None:
        if not self.ks or any(k < 2 for k in self.ks) or len(set(self.ks)) != len(self.ks):
            raise ConfigError(f"ks must be distinct values >= 2, got {self.ks}")
        if self.f_instances < 1 or self.parity_instances < 1:
            raise ConfigError(
                f"f_instances and parity_instances must be >= 1, got {self.f_instances}, {self.parity_instances}"
            )

    def as_json(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "ks": list(self.ks)}


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. Rates in requests/s, times in seconds unless named ``_ms``."""

    out_dir: Path = Path("runs/bench/latest")
    models_dir: Path = MODELS_DIR
    model_spec: BenchModelSpec = field(default_factory=BenchModelSpec)
    rebuild: bool = False
    rate: float = 40.0
    duration_s: float = 30.0
    warmup_s: float = 2.0
    schemes: tuple[str, ...] = SCHEME_NAMES
    scenarios: tuple[str, ...] = SCENARIO_NAMES
    sweep_rates: tuple[float, ...] = ()
    sweep_schemes: tuple[str, ...] = ("equal", "hedged", "parm")
    sweep_scenarios: tuple[str, ...] = ("no-fault", "pause")
    sweep_duration_s: float | None = None
    hit_fraction: float = 0.02
    pause_min_s: float = 0.2
    pause_max_s: float = 0.8
    starve: str = "auto"
    starve_cpus: float = 0.1
    starve_hogs: int = 2
    starve_window_s: float = 3.0
    starve_every_s: float = 8.0
    kill_at_fraction: float = 0.3
    hedge_delay_ms: float | None = None
    timeout_s: float = 10.0
    slow_ms: float = 50.0
    rounds: int = 3
    """Time slices each fault-free or pause/starve cell is cut into, interleaved across schemes (see plan_slices)."""
    seed: int = 0
    profile_s: float = 0.0
    """If > 0: py-spy samples the coded endpoint's process that long during the fault-free ParM cell (main rate)."""

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_s <= 0 or self.warmup_s < 0:
            raise ConfigError(f"rate and duration must be > 0, warmup >= 0; got {self.rate}, {self.duration_s}")
        for name in (*self.scenarios, *self.sweep_scenarios):
            if name not in SCENARIO_NAMES:
                raise ConfigError(f"unknown scenario {name!r}; known: {', '.join(SCENARIO_NAMES)}")
        if self.starve not in ("auto", "quota", "hog"):
            raise ConfigError(f"starve must be auto, quota or hog, got {self.starve!r}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if any(r <= 0 for r in self.sweep_rates):
            raise ConfigError(f"sweep rates must be > 0, got {self.sweep_rates}")

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model_spec"] = self.model_spec.as_json()
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


@dataclass(frozen=True)
class SoakConfig:
    out_dir: Path = Path("runs/soak/latest")
    models_dir: Path = MODELS_DIR
    model_spec: BenchModelSpec = field(default_factory=BenchModelSpec)
    k: int = 2
    rate: float = 40.0
    duration_s: float = 600.0
    warmup_s: float = 5.0
    hit_fraction: float = 0.02
    pause_min_s: float = 0.2
    pause_max_s: float = 0.8
    kill_every_s: float = 60.0
    restart_after_s: float = 5.0
    reap_after_s: float = 10.0
    """Seconds after a restart when instances of the retired version still alive are killed (``reload_model``)."""
    sample_every_s: float = 2.0
    window_s: float = 60.0
    """Width of the time windows the report breaks the run into."""
    memory_growth_limit_mb: float = 16.0
    timeout_s: float = 10.0
    seed: int = 0

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["model_spec"] = self.model_spec.as_json()
        return out


@dataclass(frozen=True)
class LoadtestConfig:
    """One ``parm loadtest`` run: Locust users against a Triton endpoint, headless."""

    host: str = "http://127.0.0.1:8000"
    grpc_url: str = ""
    model: str = "digits_coded"
    protocol: str = "both"
    users: int = 8
    spawn_rate: float = 8.0
    duration_s: float = 30.0
    batch: int = 1
    data: str = ""
    wait_s: float = 0.0
    timeout_s: float = 10.0
    csv_prefix: Path = Path("runs/loadtest/locust")
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.protocol not in ("http", "grpc", "both"):
            raise ConfigError(f"protocol must be http, grpc or both, got {self.protocol!r}")
        if self.users < 1 or self.duration_s <= 0 or self.spawn_rate <= 0:
            raise ConfigError(f"users, spawn rate and duration must be positive, got {self.users}, {self.duration_s}")


@dataclass(frozen=True)
class ClusterBenchConfig:
    out: Path = Path("runs/cluster-bench")
    repository: Path = Path("model_repository")
    workers: int = 3
    parity_workers: int = 1
    rate: float = 50.0
    duration_s: float = 20.0
    rounds: int = 2
    seed: int = 0
    pause_s: tuple[float, float] = (0.5, 5.0)
    throttle_s: tuple[float, float] = (1.0, 4.0)
    throttle_cpus: float = 0.05
    throttle_share: float = 0.3
    """Share of the faults that throttle instead of stopping (none where cgroups cannot limit the CPU)."""
    faulty_share: float = 0.1
    """Share of the time one F worker is faulty: with equal resources over N + R servers about
    ``faulty_share / (N + R)`` of the requests are hit (2.5% with the defaults)."""
    warmup_s: float = 2.0
    timeout_s: float = 10.0


@dataclass(frozen=True)
class ClusterCrossoverConfig(ClusterBenchConfig):
    """``parm cluster crossover``: the cluster bench's cluster, faults, cell length and rounds over a grid of offered
    rates x shares of faulty time. The inherited single ``rate`` and ``faulty_share`` are not used: every cell takes
    its own from ``rates`` and ``faulty_shares``."""

    out: Path = Path("runs/cluster-crossover")
    rates: tuple[float, ...] = (20.0, 50.0, 100.0)
    faulty_shares: tuple[float, ...] = (0.05, 0.15, 0.3)
    """Shares of the time one F worker is faulty (``ClusterBenchConfig.faulty_share``), one panel each."""

    def __post_init__(self) -> None:
        if not _distinct(self.rates) or any(rate <= 0 for rate in self.rates):
            raise ConfigError(f"rates must be distinct and > 0 (at least one), got {self.rates}")
        if not _distinct(self.faulty_shares) or any(not 0 < share < 1 for share in self.faulty_shares):
            raise ConfigError(f"faulty shares must be distinct, in (0, 1) (at least one), got {self.faulty_shares}")
        if self.rounds < 1 or self.duration_s <= 0:
            raise ConfigError(f"rounds must be >= 1 and duration > 0, got {self.rounds}, {self.duration_s}")


def _distinct(values: tuple[float, ...]) -> bool:
    return bool(values) and len(set(values)) == len(values)


@dataclass(frozen=True)
class ClusterSoakConfig:
    out: Path = Path("runs/cluster-soak")
    repository: Path = Path("model_repository")
    workers: int = 3
    parity_workers: int = 1
    rate: float = 150.0
    duration_s: float = 700.0
    gap_s: tuple[float, float] = (4.0, 12.0)
    """Quiet time between two faults."""
    pause_max_s: float = 5.0
    restart_after_s: float = 3.0
    throttle_cpus: float = 0.05
    kill_share: float = 0.2
    throttle_share: float = 0.3
    memory_growth_limit_mb: float = 16.0
    timeout_s: float = 10.0
    deadline_s: float = 1.0
    """The coded endpoint's request_timeout_ms, in seconds: a fault explains errors this long after it ends."""
    seed: int = 0

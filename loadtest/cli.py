"""The ``parm bench``, ``parm soak`` and ``parm loadtest`` subcommands: their options, and the jobs behind them."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .configs import BenchConfig, BenchModelSpec, LoadtestConfig, SoakConfig

logger = logging.getLogger(__name__)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


_READERS: dict[object, Callable[[str], object]] = {
    int: int,
    float: float,
    str: str,
    Path: Path,
    tuple[str, ...]: _names,
    tuple[float, ...]: _floats,
    tuple[int, ...]: _ints,
    float | None: float,
}


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_options(
    parser: argparse.ArgumentParser,
    spec: type,
    options: Sequence[tuple[str | tuple[str, ...], str, str]],
    *,
    defaults: object = None,
) -> None:
    """Adds ``(flag, field, help)`` options whose default and type are those of ``spec``'s field (a bool field: a
    switch), so a default is defined once, in the dataclass; ``defaults`` (an instance) overrides them."""
    hints = typing.get_type_hints(spec)
    values = {f.name: f for f in dataclasses.fields(spec)}
    for flag, name, text in options:
        flags = (flag,) if isinstance(flag, str) else flag
        entry = values[name]
        if defaults is not None:
            default = getattr(defaults, name)
        elif entry.default is not dataclasses.MISSING:
            default = entry.default
        else:
            default = entry.default_factory()  # type: ignore[misc]
        if hints[name] is bool:
            parser.add_argument(*flags, dest=name, action="store_true", default=default, help=text)
            continue
        parser.add_argument(
            *flags,
            dest=name,
            metavar=flags[-1].removeprefix("--").upper(),
            type=_READERS[hints[name]],
            default=default,
            help=text if default in (None, "") or "(default" in text else f"{text} (default {_shown(default)})",
        )


def from_options(spec: type, args: argparse.Namespace, **fixed: object) -> Any:
    """``spec`` built from the options ``add_options`` added (and ``fixed`` values)."""
    names = {f.name for f in dataclasses.fields(spec)}
    return spec(**{name: value for name, value in vars(args).items() if name in names and name not in fixed}, **fixed)


MODEL_OPTIONS = (
    ("--ks", "ks", "ParM k values to build, comma-separated"),
    ("--width", "width", "F's channels (DeepDigitsCNN)"),
    ("--blocks", "blocks", "F's residual blocks"),
    ("--quick-models", "quick", "a few training steps only (smoke runs)"),
    ("--seed", "seed", "seed of the models, arrivals, queries and faults"),
)
"""The benchmark models' options, shared by ``bench`` and ``soak`` (same spec: same trained models)."""


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    add_options(parser, BenchModelSpec, MODEL_OPTIONS)


BENCH_OPTIONS = (
    ("--out", "out_dir", "output folder"),
    ("--models", "models_dir", "benchmark models (built here)"),
    ("--rebuild", "rebuild", "retrain the benchmark models even if they exist"),
    ("--rate", "rate", "offered load, requests/s"),
    ("--duration", "duration_s", "seconds per cell"),
    ("--warmup", "warmup_s", "warm-up seconds before each cell"),
    (
        "--schemes",
        "schemes",
        "comma-separated, from none, equal, hedged, parm (every k), parm-k<K>, parm-eager, parm-hedged, and relay "
        "(a BLS pass-through to F: the Python backend's own cost, reported next to the orchestrator's)",
    ),
    ("--scenarios", "scenarios", "comma-separated, from no-fault, pause, starve, kill"),
    ("--sweep-rates", "sweep_rates", "further rates, comma-separated (e.g. 5,80)"),
    ("--sweep-schemes", "sweep_schemes", "schemes at the further rates"),
    ("--sweep-scenarios", "sweep_scenarios", "scenarios at the further rates"),
    ("--sweep-duration", "sweep_duration_s", "seconds per sweep cell (default --duration)"),
    ("--rounds", "rounds", "time slices per cell, interleaved across schemes"),
    ("--hit-fraction", "hit_fraction", "share of requests a pause should hit"),
    ("--pause-min", "pause_min_s", "shortest pause, s"),
    ("--pause-max", "pause_max_s", "longest pause, s (< 0.9)"),
    ("--starve", "starve", "CPU starvation kind: auto, quota or hog"),
    ("--starve-cpus", "starve_cpus", "CPU quota while starved"),
    ("--hedge-delay-ms", "hedge_delay_ms", "hedging delay (default: equal's fault-free p95)"),
    ("--profile", "profile_s", "seconds of py-spy on the coded endpoint, in an extra unmeasured run"),
)


def add_bench_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    bench = commands.add_parser(
        "bench",
        help="tail latency under real faults: ParM against equal resources, hedging and no redundancy, in one run",
        description="Open-loop Poisson load on every scheme in turn, with the same arrivals and the same real faults "
        "(pause, CPU starvation, kill) on one F instance; writes summary.json, summary.md, requests.csv, "
        "faults.jsonl and latency-tail plots. Builds the benchmark models (a heavier F) on first use.",
    )
    _add_model_options(bench)
    bench.add_argument("--build-only", action="store_true", help="build (or reuse) the benchmark models and stop")
    add_options(bench, BenchConfig, BENCH_OPTIONS)
    return bench


def run_bench_command(args: argparse.Namespace) -> int:
    spec = from_options(BenchModelSpec, args)
    if args.build_only:
        from .benchrepo import ensure_bench_repository  # torch comes with it: only for the commands that need it

        repo = ensure_bench_repository(args.models_dir, spec, rebuild=args.rebuild)
        print(f"benchmark models in {repo.root}: F {repo.manifest.get('f_architecture')}, coded {sorted(repo.coded)}")
        return 0
    from .bench import run_bench

    outcome = run_bench(from_options(BenchConfig, args, model_spec=spec))
    print(outcome.markdown)
    print(f"written: {', '.join(str(p) for p in outcome.files.values())}")
    return 0


LOADTEST_OPTIONS = (
    ("--host", "host", "Triton HTTP URL"),
    ("--grpc-url", "grpc_url", "Triton gRPC host:port (default: --host's host, port 8001)"),
    ("--model", "model", "model to call"),
    ("--protocol", "protocol", "http, grpc or both"),
    (("-u", "--users"), "users", "concurrent users"),
    (("-r", "--spawn-rate"), "spawn_rate", "users started per second"),
    (("-t", "--duration"), "duration_s", "seconds"),
    ("--batch", "batch", "queries per request"),
    ("--data", "data", ".npy/.npz queries (default: digits when the model takes them)"),
    ("--wait", "wait_s", "seconds between a user's requests"),
    ("--csv", "csv_prefix", "Locust CSV prefix"),
)


def add_loadtest_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    loadtest = commands.add_parser(
        "loadtest",
        help="Locust users (HTTP and gRPC) against a Triton model, headless, with a summary",
        description="Runs loadtest/locustfile.py headless. Extra Locust arguments go after `--`.",
    )
    add_options(loadtest, LoadtestConfig, LOADTEST_OPTIONS)
    loadtest.add_argument("--serve", type=Path, default=None, help="start the embedded server on this repository")
    loadtest.add_argument("--pause-model", default=None, help="with --serve: pause its instance 0 now and then")
    loadtest.add_argument("--pause-every", type=float, default=2.0, help="seconds between pauses (default 2)")
    loadtest.add_argument("--pause-s", type=float, default=0.5, help="seconds per pause (default 0.5)")
    loadtest.add_argument("locust_args", nargs=argparse.REMAINDER, help="-- then extra Locust arguments")
    return loadtest


def run_loadtest_command(args: argparse.Namespace) -> int:
    from .locustrun import format_summary, locust_args, run_locust

    with contextlib.ExitStack() as stack:
        server_pid, served = None, {}
        if args.serve is not None:
            from parm.server import TritonServer

            server = stack.enter_context(TritonServer(args.serve, log_dir=args.csv_prefix.parent))
            served = {"host": server.http_url, "grpc_url": server.grpc_url}
            server_pid = server.pid
            print(f"serving {args.serve}: HTTP {server.http_url}, gRPC {server.grpc_url}")
        config = from_options(LoadtestConfig, args, extra_args=locust_args(args.locust_args), **served)
        result = run_locust(
            config,
            server_pid=server_pid,
            pause_model=args.pause_model,
            pause_every_s=args.pause_every,
            pause_s=args.pause_s,
        )
    print(format_summary(result))
    if result.returncode != 0 or not result.rows:
        print(result.output_tail)
    return 0 if result.returncode == 0 and not result.hard_stopped and result.rows else 1


SOAK_OPTIONS = (
    ("--out", "out_dir", "output folder"),
    ("--models", "models_dir", "benchmark models (built here, shared with parm bench)"),
    ("--k", "k", "which coded endpoint (its k must be among --ks)"),
    ("--rate", "rate", "offered load, requests/s"),
    ("--duration", "duration_s", "seconds of load"),
    ("--warmup", "warmup_s", "warm-up seconds before the soak"),
    ("--hit-fraction", "hit_fraction", "share of requests a pause should hit"),
    ("--pause-min", "pause_min_s", "shortest pause, s"),
    ("--pause-max", "pause_max_s", "longest pause, s (< 0.9)"),
    ("--kill-every", "kill_every_s", "mean seconds between kills"),
    ("--restart-after", "restart_after_s", "seconds from a kill to its restart"),
    ("--reap-after", "reap_after_s", "seconds from a restart to reaping retired stubs"),
    ("--sample-every", "sample_every_s", "seconds between RSS samples"),
    ("--window", "window_s", "report window, s"),
    ("--memory-limit", "memory_growth_limit_mb", "allowed RSS growth over the second half, MB"),
)


def add_soak_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    soak = commands.add_parser(
        "soak",
        help="minutes of steady load on the coded endpoint under random pauses and kills: nothing lost, "
        "nothing duplicated, memory bounded",
        description="Open-loop Poisson load on the benchmark's coded endpoint while random F and parity instances "
        "are paused (SIGSTOP) and killed (SIGKILL, then the model is reloaded); checks that every request got exactly "
        "one answer, that every error overlapped a fault, and that the orchestrator's RSS stayed bounded. Writes "
        "soak.json, soak.md, soak.png, requests.csv, faults.jsonl, memory.csv; exits 1 if a check fails.",
    )
    _add_model_options(soak)
    add_options(soak, SoakConfig, SOAK_OPTIONS)
    return soak


def run_soak_command(args: argparse.Namespace) -> int:
    from .soak import run_soak

    outcome = run_soak(from_options(SoakConfig, args, model_spec=from_options(BenchModelSpec, args)))
    print(outcome.markdown)
    print(f"written: {', '.join(str(p) for p in outcome.files.values())}")
    return 0 if outcome.passed else 1

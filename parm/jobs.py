"""The jobs behind ``parm train``, ``parm export``, ``parm eval`` and ``parm demo``, as functions (the CLI only parses
arguments)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from parm.backend.orchestrator import OrchestratorSettings
from parm.export.code_training import CodeConfig
from parm.export.data import load_digits_splits
from parm.export.degraded import ErasureAccuracy
from parm.export.pipeline import BUILTIN_FS, DataSpec, ExportArtifacts, FSpec, RepositoryTarget, builtin_f, run_export
from parm.export.report import Report
from parm.export.repository import CodedDeployment

logger = logging.getLogger(__name__)

F_NAME = FSpec().builtin.model_name
MAX_BATCH_SIZE = 32


def export_repository(
    out: Path,
    work_dir: Path,
    seed: int = 0,
    k: int = 2,
    quick: bool = False,
    code: CodeConfig | None = None,
    f_spec: FSpec | None = None,
    data: DataSpec | None = None,
    name: str | None = None,
    max_batch_size: int = MAX_BATCH_SIZE,
    settings: OrchestratorSettings | None = None,
) -> tuple[ExportArtifacts, CodedDeployment]:
    """Trains F's code (and F itself, for the default digits model), exports and verifies every network, and writes
    the model repository. With no options: the default digits repository (ParM sum code, k from ``k``, the
    orchestrator's default settings; ``settings`` with ``f_workers`` makes the coded model a gateway's)."""
    code = code or CodeConfig("sum", k)
    f_spec = f_spec or FSpec()
    name = name or (f_spec.builtin.model_name if f_spec.source is None else _model_name(f_spec.source))
    target = RepositoryTarget(out, name, max_batch_size, settings or OrchestratorSettings())
    artifacts = run_export(work_dir, code, f_spec, data, seed=seed, quick=quick, repository=target)
    deployment = artifacts.deployment
    assert deployment is not None
    accuracy = artifacts.accuracy
    print(f"F ({deployment.name}) test accuracy, all answers available: {_pct(accuracy.f_accuracy)}")
    for erased in accuracy.by_erasures:
        print(
            f"{code.label} degraded-mode test accuracy ({erased.erased} answer(s) rebuilt"
            f"{f', {erased.lost_parities} parity answer(s) lost' if erased.lost_parities else ''}): "
            f"{_pct(erased.accuracy)} (agrees with F's own answer {_pct(erased.agreement_with_f)}"
            f"{_gap(accuracy.f_accuracy, erased)})"
        )
    print(f"Model repository written to {out} (training took {artifacts.train_seconds:.0f} s)")
    return artifacts, deployment


def train_only(
    work_dir: Path,
    code: CodeConfig,
    f_spec: FSpec | None = None,
    data: DataSpec | None = None,
    seed: int = 0,
    quick: bool = False,
) -> ExportArtifacts:
    """``parm train``: trains and exports F's code into ``work_dir`` (checkpoints included); a later
    ``parm export`` with the same options and work folder reloads it instead of training again."""
    artifacts = run_export(work_dir, code, f_spec, data, seed=seed, quick=quick)
    accuracy = artifacts.accuracy
    print(f"F test accuracy, all answers available: {_pct(accuracy.f_accuracy)}")
    print(f"{code.label} degraded-mode test accuracy (1 rebuilt): {_pct(accuracy.degraded_accuracy)}")
    print(f"Checkpoints and exports in {work_dir}; run `parm export` with the same options to write a repository")
    return artifacts


def evaluate(
    out: Path,
    work_dir: Path,
    codes: list[CodeConfig] | None = None,
    repository: Path | None = None,
    f_spec: FSpec | None = None,
    data: DataSpec | None = None,
    seed: int = 0,
    quick: bool = False,
    baselines: bool = True,
    image_shape: tuple[int, ...] | None = None,
) -> Report:
    """``parm eval``: the accuracy report of a set of codes (or of one repository), written as JSON, Markdown and
    PNG under ``out`` and printed as the Markdown table."""
    from parm.export.evaluate import DEFAULT_CODES, evaluate_codes, evaluate_repository

    if repository is not None:
        report = evaluate_repository(repository, data, seed=seed)
    else:
        chosen = codes or [
            dataclasses.replace(CodeConfig.parse(text), image_shape=image_shape) for text in DEFAULT_CODES
        ]
        report = evaluate_codes(
            chosen, work_dir, f_spec, data, seed=seed, quick=quick, baselines=baselines, skip_inapplicable=not codes
        )
    paths = report.save(out)
    print(report.to_markdown())
    print(f"Report written to {paths['json']}, {paths['md']} and {paths['png']}")
    return report


def run_offline_command(args: argparse.Namespace) -> int:
    """Runs ``parm export``, ``parm train`` or ``parm eval`` from parsed CLI arguments (a user's mistake raises a
    ``ParmError``, which ``parm.cli.main`` reports in one line)."""
    f_spec = f_spec_from_args(args)
    data = DataSpec(args.data, args.labels)
    if args.command == "eval":
        codes = None
        if args.codes:
            codes = [dataclasses.replace(CodeConfig.parse(text), image_shape=args.image_shape) for text in args.codes]
        evaluate(
            args.out,
            args.work_dir,
            codes,
            args.repository,
            f_spec,
            data,
            seed=args.seed,
            quick=args.quick,
            baselines=not args.no_baselines,
            image_shape=args.image_shape,
        )
    elif args.command == "train":
        train_only(args.work_dir, _code_from_args(args), f_spec, data, seed=args.seed, quick=args.quick)
    else:
        export_repository(
            args.out,
            args.work_dir,
            seed=args.seed,
            quick=args.quick,
            code=_code_from_args(args),
            f_spec=f_spec,
            data=data,
            name=args.name,
            settings=_settings_from_args(args),
        )
    return 0


def f_spec_from_args(args: argparse.Namespace) -> FSpec:
    """``--f``: a built-in F's name (``BUILTIN_FS``, unless a file of that name exists), or the user's F."""
    source = args.f_source
    if source in BUILTIN_FS and not Path(source).exists():
        return FSpec(builtin=builtin_f(source))
    return FSpec(source, args.weights, args.input_name, args.output_name)


def _code_from_args(args: argparse.Namespace) -> CodeConfig:
    train = None
    if args.epochs is not None:
        from parm.export.code_registry import get_code
        from parm.export.code_training import LEARNED_CONFIG, PARITY_CONFIG

        base = LEARNED_CONFIG if get_code(args.code).trainable else PARITY_CONFIG
        train = dataclasses.replace(base, epochs=args.epochs)
    return CodeConfig(
        args.code,
        args.k,
        args.r,
        args.parity_arch,
        args.width,
        args.parity_init,
        args.distill,
        train=train,
        image_shape=args.image_shape,
        parity_loss=args.parity_loss,
    )


def _settings_from_args(args: argparse.Namespace) -> OrchestratorSettings:
    """The orchestrator's settings ``parm export`` was given: the defaults, with the workers of a gateway."""
    return OrchestratorSettings(
        f_workers=_addresses(args.f_workers or ""), parity_workers=_addresses(args.parity_workers or "")
    )


def _addresses(text: str) -> tuple[str, ...]:
    return tuple(address.strip() for address in text.split(",") if address.strip())


def _model_name(source: str) -> str:
    """A Triton model name from F's file or class name: letters, digits and underscores."""
    stem = Path(source).stem if ":" not in source else source.rsplit(":", 1)[1]
    cleaned = "".join(c if c.isalnum() else "_" for c in stem).strip("_").lower()
    return cleaned or "model"


def demo(
    work_dir: Path,
    seed: int = 0,
    k: int = 2,
    quick: bool = False,
    ports: tuple[int, int, int] = (8000, 8001, 8002),
) -> int:
    """Train, export, serve on the embedded Triton server, query over HTTP and gRPC, pause an F instance."""
    from parm import demo as steps
    from parm.server import TritonServer

    repository = work_dir / "model_repository"
    artifacts, deployment = export_repository(repository, work_dir / "training", seed=seed, k=k, quick=quick)
    names = deployment.names
    input_name = artifacts.f_inputs[0].name
    output_name = artifacts.f_outputs[0].name
    test = load_digits_splits(seed=seed).test
    http_port, grpc_port, metrics_port = ports
    print(f"\nStarting the embedded Triton server on {steps.describe_repository(repository)} ...")
    with TritonServer(
        repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, log_dir=work_dir
    ) as server:
        print(f"  HTTP {server.http_url}   gRPC {server.grpc_url}   metrics {server.metrics_url}")
        print(f"  server log {server.log_path}")

        latency = steps.compare_latency(server, names, test.x[:200], input_name, output_name)
        print(
            f"\nNothing slow, {latency.requests} sequential HTTP requests, F and coded interleaved:\n"
            f"  p50 {names.f} {latency.f_p50_ms:.2f} ms, {names.coded} {latency.coded_p50_ms:.2f} ms "
            f"(x{latency.coded_p50_ms / latency.f_p50_ms:.2f}); "
            f"{latency.identical_answers}/{latency.requests - latency.rebuilt} answers computed by F identical to "
            f"F's own"
            + (
                f"; {latency.rebuilt} rebuilt (flagged: F was slower than its usual 90th percentile)"
                if latency.rebuilt
                else ""
            )
        )
        same = steps.grpc_and_http_agree(server, names, test.x[:8], input_name, output_name)
        print(f"  a batch of 8 over gRPC and over HTTP: {'identical' if same else 'DIFFERENT'} answers")

        print(f"\nPausing instance {names.f}_0_0 (SIGSTOP) 4 times for 0.5 s while 4 gRPC clients send 60 queries")
        report, lines = steps.pause_and_query(server, names, test.x[200:260], test.y[200:260], input_name, output_name)
        print("\n".join(lines))
        print(
            f"  {report.requests} answered, {report.rebuilt} rebuilt (flagged {steps.RECONSTRUCTED_OUTPUT}=true); "
            f"rebuilt answers agree with F's own on {report.rebuilt_agree_with_f}/{report.rebuilt}, "
            f"with the label on {report.rebuilt_agree_with_label}/{report.rebuilt}; "
            f"slowest answer {report.max_latency_ms:.0f} ms; each pause lasted {report.pause_s:.1f} s"
        )
    print("\nServer stopped; every instance resumed and shut down.")
    return 0


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _gap(f_accuracy: float | None, erased: ErasureAccuracy) -> str:
    """ ", gap to F x ± y points" (95% interval over the test queries), or "" without labels."""
    if f_accuracy is None or erased.accuracy is None or erased.gap_stderr is None:
        return ""
    return f", gap to F {100 * (f_accuracy - erased.accuracy):.2f} ± {1.96 * erased.gap_stderr:.2f} points"

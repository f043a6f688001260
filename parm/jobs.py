"""The jobs behind ``parm export`` and ``parm demo``, as functions (the CLI only parses arguments)."""

from __future__ import annotations

import logging
from pathlib import Path

from parm.export.data import load_digits_splits
from parm.export.pipeline import DigitsArtifacts, train_and_export_digits
from parm.export.repository import CodedDeployment, write_repository

logger = logging.getLogger(__name__)

F_NAME = "digits"
MAX_BATCH_SIZE = 32


def export_repository(
    out: Path, work_dir: Path, seed: int = 0, k: int = 2, quick: bool = False
) -> tuple[DigitsArtifacts, CodedDeployment]:
    """Trains F and its parity model on digits, exports and verifies them, and writes the model repository."""
    artifacts = train_and_export_digits(work_dir, seed=seed, k=k, quick=quick)
    deployment = CodedDeployment(
        name=F_NAME,
        inputs=artifacts.f_inputs,
        outputs=artifacts.f_outputs,
        max_batch_size=MAX_BATCH_SIZE,
        k=k,
    )
    onnx = artifacts.onnx
    write_repository(
        out, deployment, {"f": onnx.f, "parity": onnx.parity, "encoder": onnx.encoder, "decoder": onnx.decoder}
    )
    accuracy = artifacts.accuracy
    print(f"F ({F_NAME}) test accuracy, all answers available: {_pct(accuracy.f_accuracy)}")
    print(
        f"ParM k={k} degraded-mode test accuracy (one answer rebuilt): {_pct(accuracy.degraded_accuracy)} "
        f"(agrees with F's own answer {_pct(accuracy.degraded_agreement_with_f)})"
    )
    print(f"Model repository written to {out} (training took {artifacts.train_seconds:.0f} s)")
    return artifacts, deployment


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
            f"{latency.identical_answers}/{latency.requests} coded answers identical to F's"
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

"""Writes the gateway's ``digits_coded/config.pbtxt`` for Kubernetes and for Docker Compose from the committed one.

A gateway's coded model is the committed ``model_repository/digits_coded`` with two parameters more: ``f_workers`` and
``parity_workers``, the gRPC addresses of the Triton servers that serve F and the parity model, and the settings every
gateway gets (``parm.cluster.GATEWAY_DEFAULTS``: late members hedged on another worker while the workers have spare
capacity, as the local cluster's gateway does). Every other setting stays as ``parm export`` wrote it, so the deployed
endpoint behaves as the one the tests and benchmarks measure; in particular ``parity_policy`` stays ``on_demand``:
with k = 2 and three F workers, ``eager`` would send the one parity worker a parity for every two requests, 1.5 times
what each F worker serves.

Run it after ``parm export`` rewrites the committed repository (``tests/unit/deploy`` fails until then)::

    .venv/bin/python deploy/render_gateway_config.py           # rewrites both files
    .venv/bin/python deploy/render_gateway_config.py --check   # exits 1 if either is stale
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from parm.backend.orchestrator import OrchestratorConfig
from parm.cluster import GATEWAY_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
CODED_MODEL = "digits_coded"
COMMITTED = ROOT / "model_repository" / CODED_MODEL / "config.pbtxt"
GRPC_PORT = 8001

KUBERNETES_NAMESPACE = "parm"
KUBERNETES_WORKERS = {
    # Headless Services: every A record is one worker pod, re-resolved every worker_resolve_ms (a rescheduled or
    # scaled StatefulSet is picked up without touching the gateway).
    "f_workers": f"dns:parm-f-workers.{KUBERNETES_NAMESPACE}.svc.cluster.local:{GRPC_PORT}",
    "parity_workers": f"dns:parm-parity-workers.{KUBERNETES_NAMESPACE}.svc.cluster.local:{GRPC_PORT}",
}
COMPOSE_WORKERS = {
    # Compose service names, one worker each; the gateway's gRPC client resolves them when it connects.
    "f_workers": ",".join(f"f-worker-{i}:{GRPC_PORT}" for i in (1, 2, 3)),
    "parity_workers": f"parity-worker:{GRPC_PORT}",
}
TARGETS = {
    ROOT / "deploy" / "kubernetes" / f"{CODED_MODEL}.config.pbtxt": KUBERNETES_WORKERS,
    ROOT / "deploy" / "compose" / f"{CODED_MODEL}.config.pbtxt": COMPOSE_WORKERS,
}


def render(committed: str, parameters: Mapping[str, str]) -> str:
    """``committed`` (a config.pbtxt) with ``parameters`` set, in the text format ``parm export`` writes.

    Refuses a result the orchestrator would refuse at ``initialize`` (an unknown key, a malformed address), so a
    broken gateway config never reaches a cluster."""
    config = text_format.Parse(committed, mc.ModelConfig())
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    OrchestratorConfig.from_model_config(json_format.MessageToDict(config, preserving_proto_field_name=True))
    return text_format.MessageToString(config)


def rendered() -> dict[Path, str]:
    """Each generated file's path -> the content it must have."""
    committed = COMMITTED.read_text()
    return {path: render(committed, {**GATEWAY_DEFAULTS, **workers}) for path, workers in TARGETS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in rendered().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'} {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

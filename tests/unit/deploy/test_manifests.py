"""deploy/ renders, validates against Kubernetes' schemas, and agrees with the code it deploys: the gateway's config
with the committed one, every server's flags with parm.security, the dashboard with the metrics the gateway exports.

Offline: kubectl (``kubectl kustomize``) and docker-compose (``docker-compose config``) run without a cluster or a
daemon; ``scripts/install_deploy_tools.sh`` installs them. A missing tool fails the test rather than skipping it.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from parm.backend.orchestrator import metrics
from parm.backend.orchestrator.groups import AnswerSource, ParityReason
from parm.cluster import GATEWAY_DEFAULTS
from parm.security import grpc_keepalive_args, restricted_api_args

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.28"
"""The oldest Kubernetes the manifests target (the schemas ``kubernetes-validate`` checks them against)."""
NAMESPACE = "parm"
STOCK_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
ADMIN_KEY_ARG = "$(PARM_ADMIN_KEY)"
"""Kubernetes expands ``$(VAR)`` in args from the container's env: the key never appears in a manifest."""
WORKER_SETS = {
    "parm-f-worker": ("f-worker", "parm-f-workers", 3),
    "parm-parity-worker": ("parity-worker", "parm-parity-workers", 1),
}

_spec = importlib.util.spec_from_file_location("render_gateway_config", DEPLOY / "render_gateway_config.py")
render_gateway_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_gateway_config)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `bash scripts/install_deploy_tools.sh` (scripts/setup.sh does)")
    return path


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory.relative_to(ROOT)} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return _kustomize(KUBERNETES)


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _server_containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod template, container) for every Triton server of the base."""
    for o in objects:
        if o["kind"] in ("StatefulSet", "Deployment"):
            template = o["spec"]["template"]
            for container in template["spec"]["containers"]:
                yield o["metadata"]["name"], template, container


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes' label-selector semantics (matchLabels, matchExpressions with In/NotIn/Exists/DoesNotExist)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def _contains_run(args: list[str], run: list[str]) -> bool:
    return any(args[i : i + len(run)] == run for i in range(len(args) - len(run) + 1))


# -- Kubernetes: schema and topology --------------------------------------------------------------------------------


def test_every_object_validates_against_the_kubernetes_schema(base):
    """Strict validation: an unknown or misspelt field fails, not only a wrong type."""
    objects = base + _kustomize(KUBERNETES / "models")
    errors = []
    for o in objects:
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{o['kind']} {o['metadata']['name']}: {error.message} at {list(error.path)}")
    assert not errors, "\n".join(errors)
    assert {o["metadata"].get("namespace") for o in objects} == {NAMESPACE}


def test_the_base_holds_the_topology(base):
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in base)
    assert ("Namespace", NAMESPACE) not in kinds, "the namespace holds the operator's Secret and volume"
    assert not [k for k in kinds if k[0] in ("Secret", "PersistentVolumeClaim")], "the operator provides these"
    for name, (component, service_name, replicas) in WORKER_SETS.items():
        workers = _one(base, "StatefulSet", name)
        assert workers["spec"]["replicas"] == replicas
        assert workers["spec"]["serviceName"] == service_name
        service = _one(base, "Service", service_name)
        assert service["spec"]["clusterIP"] == "None", "workers are resolved one A record per pod"
        labels = workers["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == component
        assert _selects(workers["spec"]["selector"], labels)
        assert _selects({"matchLabels": service["spec"]["selector"]}, labels)
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"] == 8001
    gateway = _one(base, "Deployment", "parm-gateway")
    assert gateway["spec"]["replicas"] == 2
    service = _one(base, "Service", "parm-gateway")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert _selects({"matchLabels": service["spec"]["selector"]}, gateway["spec"]["template"]["metadata"]["labels"])


def test_each_worker_is_a_failure_domain_of_its_own(base):
    """Required anti-affinity on the node name among each worker set: two workers on one node would be erased
    together, more than a k = 2, r = 1 code rebuilds."""
    for name in WORKER_SETS:
        template = _one(base, "StatefulSet", name)["spec"]["template"]
        required = template["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert any(
            term["topologyKey"] == "kubernetes.io/hostname"
            and _selects(term["labelSelector"], template["metadata"]["labels"])
            for term in required
        ), name


def test_every_server_starts_with_the_keepalive_and_restricted_api_flags(base):
    keepalive = grpc_keepalive_args()
    restricted = restricted_api_args(ADMIN_KEY_ARG)
    servers = list(_server_containers(base))
    assert {name for name, _, _ in servers} == {*WORKER_SETS, "parm-gateway"}
    for name, _, container in servers:
        args = container["args"]
        assert args[0] == "tritonserver" and "command" not in container, "NVIDIA's entrypoint starts the server"
        assert _contains_run(args, keepalive), f"{name}: keepalive flags differ from grpc_keepalive_args()"
        assert _contains_run(args, restricted), f"{name}: restricted-API flags differ from restricted_api_args()"
        extra = [
            a
            for a in args
            if a.startswith(("--grpc-keepalive", "--grpc-http2", "--http-restricted", "--grpc-restricted"))
        ]
        assert sorted(extra) == sorted(keepalive + restricted), name
        env = {e["name"]: e for e in container["env"]}
        assert env["PARM_ADMIN_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "parm-admin-key", "key": "admin-key"}}


def test_workers_run_the_stock_image_on_a_gpu_and_every_server_has_probes(base):
    for name, template, container in _server_containers(base):
        probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/v2/health/ready", name
        assert probes["livenessProbe"]["path"] == "/v2/health/live", name
        assert {p["port"] for p in probes.values()} == {"http"}
        annotations = template["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "8002",
            "prometheus.io/path": "/metrics",
        }
        if name in WORKER_SETS:
            assert container["image"] == STOCK_IMAGE
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        else:
            assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_model_repositories_come_from_the_volume_one_folder_per_role(base):
    for name, template, container in _server_containers(base):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        repository = mounts["/models"]
        assert volumes[repository["name"]]["persistentVolumeClaim"]["claimName"] == "parm-models"
        assert repository["readOnly"] is True
        assert repository["subPath"] == {"parm-f-worker": "f-worker", "parm-parity-worker": "parity-worker"}.get(
            name, "gateway"
        )


# -- the gateway's config ----------------------------------------------------------------------------------------


def _parameters(config_text: str) -> dict[str, str]:
    config = text_format.Parse(config_text, mc.ModelConfig())
    return {key: value.string_value for key, value in config.parameters.items()}


def test_the_gateway_config_map_names_the_worker_services_and_is_the_generated_one(base):
    config_maps = [
        o for o in base if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("parm-gateway-config")
    ]
    assert len(config_maps) == 1
    text = config_maps[0]["data"]["config.pbtxt"]
    generated = ROOT / "deploy" / "kubernetes" / f"{render_gateway_config.CODED_MODEL}.config.pbtxt"
    stale = "stale: run .venv/bin/python deploy/render_gateway_config.py"
    assert text == render_gateway_config.rendered()[generated], stale
    parameters = _parameters(text)
    for key, service in (("f_workers", "parm-f-workers"), ("parity_workers", "parm-parity-workers")):
        assert parameters[key] == f"dns:{service}.{NAMESPACE}.svc.cluster.local:8001"
        _one(base, "Service", service)
    template = _one(base, "Deployment", "parm-gateway")["spec"]["template"]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    mount = next(m for m in template["spec"]["containers"][0]["volumeMounts"] if m["mountPath"].endswith(".pbtxt"))
    assert mount["mountPath"] == "/models/digits_coded/config.pbtxt" and mount["subPath"] == "config.pbtxt"
    assert volumes[mount["name"]]["configMap"]["name"] == config_maps[0]["metadata"]["name"], "the hashed name"


def test_generated_configs_are_the_committed_one_plus_the_workers_and_the_gateway_defaults():
    committed = render_gateway_config.COMMITTED.read_text()
    for path, text in render_gateway_config.rendered().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run deploy/render_gateway_config.py"
        generated = text_format.Parse(text, mc.ModelConfig())
        for key in ("f_workers", "parity_workers"):
            del generated.parameters[key]
        expected = text_format.Parse(committed, mc.ModelConfig())
        for key, value in GATEWAY_DEFAULTS.items():  # what every gateway gets
            expected.parameters[key].string_value = value
        assert generated == expected, path


# -- who may talk to whom ------------------------------------------------------------------------------------------


def test_network_policy_opens_workers_to_the_gateway_and_metrics_to_prometheus_only(base):
    policy = _one(base, "NetworkPolicy", "parm-workers")
    pods = {name: template["metadata"]["labels"] for name, template, _ in _server_containers(base)}
    assert {name for name, labels in pods.items() if _selects(policy["spec"]["podSelector"], labels)} == set(
        WORKER_SETS
    )
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources_by_port: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "every rule names its sources"
        for port in rule["ports"]:
            sources_by_port.setdefault(port["port"], []).extend(rule["from"])
    assert set(sources_by_port) == {8001, 8002}, "nothing but gRPC and metrics"
    assert [_selects(peer["podSelector"], pods["parm-gateway"]) for peer in sources_by_port[8001]] == [True]
    assert "namespaceSelector" not in sources_by_port[8001][0], "only gateway pods of this namespace"
    assert all(
        _selects(peer["podSelector"], {"app.kubernetes.io/name": "prometheus"})
        and not _selects(peer["podSelector"], pods["parm-gateway"])
        for peer in sources_by_port[8002]
    )
    gateway_policy = _one(base, "NetworkPolicy", "parm-gateway")
    assert _selects(gateway_policy["spec"]["podSelector"], pods["parm-gateway"])
    open_ports = {p["port"] for rule in gateway_policy["spec"]["ingress"] if "from" not in rule for p in rule["ports"]}
    assert open_ports == {8000, 8001}, "clients reach inference; metrics only Prometheus"


def test_the_optional_service_monitor_scrapes_every_server(base):
    (monitor,) = _kustomize(KUBERNETES / "prometheus-operator")
    assert monitor["kind"] == "ServiceMonitor" and monitor["metadata"]["namespace"] == NAMESPACE
    services = [o for o in base if o["kind"] == "Service"]
    selected = [s for s in services if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
    assert len(selected) == 3
    for service in selected:
        assert {p["name"] for p in service["spec"]["ports"]} >= {e["port"] for e in monitor["spec"]["endpoints"]}


# -- Docker Compose ------------------------------------------------------------------------------------------------


def _compose(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("docker-compose"), "-f", str(DEPLOY / "docker-compose.yaml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )


def test_compose_file_parses_with_the_workers_the_gateway_config_names():
    key = "test-admin-key"
    result = _compose({"PARM_ADMIN_KEY": key})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    workers = {"f-worker-1", "f-worker-2", "f-worker-3", "parity-worker"}
    assert set(services) == workers | {"gateway"}
    for name, service in services.items():
        args = service["entrypoint"] + service["command"]
        assert _contains_run(args, grpc_keepalive_args()) and _contains_run(args, restricted_api_args(key)), name
        assert (
            "--load-model=" + {"gateway": "digits_coded", "parity-worker": "digits_parity"}.get(name, "digits") in args
        )
    assert "ports" not in services["f-worker-1"], "only the gateway is published"
    assert all(services[w]["image"] == STOCK_IMAGE for w in workers)
    parameters = _parameters((DEPLOY / "compose" / "digits_coded.config.pbtxt").read_text())
    named = {
        address.rpartition(":")[0] for key in ("f_workers", "parity_workers") for address in parameters[key].split(",")
    }
    assert named == workers
    assert "PARM_ADMIN_KEY" in _compose({"PARM_ADMIN_KEY": ""}).stderr, "a missing key must stop compose"


# -- Grafana -------------------------------------------------------------------------------------------------------

REQUIRED_METRICS = {
    "parm_answers_total",
    "parm_parities_total",
    "parm_encode_seconds",
    "parm_decode_seconds",
    "parm_worker_up",
    "parm_worker_ejections_total",
    "parm_worker_in_flight",
    "parm_worker_latency_seconds",
    "nv_inference_request_duration_us",
    "nv_inference_count",
}


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_queries_the_gateway_and_triton_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "parm-dashboard.json").read_text())
    expressions = _expressions(dashboard)
    # A histogram's series carry _bucket, _sum and _count; Triton's nv_ names are plain (nv_inference_count is one).
    names = {
        re.sub(r"_(bucket|sum|count)$", "", n) if n.startswith("parm_") else n
        for e in expressions
        for n in re.findall(r"\b(?:parm|nv)_\w+", e)
    }
    assert names >= REQUIRED_METRICS, f"missing {sorted(REQUIRED_METRICS - names)}"
    exported = set(re.findall(r'"(parm_\w+)"', inspect.getsource(metrics)))
    assert {n for n in names if n.startswith("parm_")} <= exported, "a parm_ metric the gateway does not export"
    labels = {"source": {s.value for s in AnswerSource}, "reason": {r.value for r in ParityReason}}
    for expression in expressions:
        for label, value in re.findall(r'\b(source|reason)!?=~?"([^"]+)"', expression):
            assert set(value.split("|")) <= labels[label], expression
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))

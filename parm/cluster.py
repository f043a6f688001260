"""A coded deployment across several Triton servers on this machine: N F workers, R parity workers and a gateway.

Each server is its own ``tritonserver`` process group on free ports (one failure domain each). The workers serve
unchanged models of a repository written by ``parm export`` (F on the F workers, the parity models on the parity
workers); the gateway serves the coded endpoint, whose configuration gains ``f_workers`` and ``parity_workers``
naming the workers' gRPC addresses, so its orchestrator calls them over gRPC. Clients call ``<F>_coded`` on the
gateway exactly as they would call F.

On 2 cores the failure domains are processes, not machines: faults are real (a whole server stopped, killed,
throttled), but the servers share CPUs, so latencies are relative.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from parm.backend.orchestrator.contract import CODED_SUFFIX, DECODER_SUFFIX, ENCODER_SUFFIX
from parm.errors import ConfigError, ServerError
from parm.netns import NetworkPlan
from parm.server import TritonServer

logger = logging.getLogger(__name__)

CLUSTER_FILE = "cluster.json"
GATEWAY_DEFAULTS = {"hedge_below_load": "1"}
"""Settings a gateway gets unless told otherwise: its workers are dedicated servers, so a late member is hedged on
another worker while they have spare capacity (``hedge_below_load``), racing its rebuild if it turns straggler."""
ROLES = ("gateway", "f", "parity")


@dataclass
class ClusterServer:
    """One server of the cluster and what it is for."""

    name: str
    role: str
    server: TritonServer

    def describe(self) -> dict[str, Any]:
        server = self.server
        return {
            "name": self.name,
            "role": self.role,
            "pid": server.pid,
            "host": server.host,
            "http_port": server.http_port,
            "grpc_port": server.grpc_port,
            "metrics_port": server.metrics_port,
            "log": str(server.log_path),
        }


def coded_model(repository: Path) -> str:
    """The one ``<F>_coded`` model of ``repository``."""
    names = sorted(p.name for p in repository.iterdir() if p.name.endswith(CODED_SUFFIX) and p.is_dir())
    if len(names) != 1:
        raise ConfigError(f"{repository} must hold exactly one coded model (*{CODED_SUFFIX}), found {names}")
    return names[0]


def config_parameter(config_text: str, key: str) -> str | None:
    """A ``parameters`` value of a config.pbtxt, or None when the key is absent."""
    match = re.search(
        r'key:\s*"' + re.escape(key) + r'"\s*value\s*\{\s*string_value:\s*"([^"]*)"', config_text, re.MULTILINE
    )
    return match.group(1) if match else None


def with_parameters(config_text: str, values: Mapping[str, str]) -> str:
    """``config_text`` with ``values`` as its ``parameters`` (replaced where present, else added)."""
    for key, value in values.items():
        entry = re.compile(r'parameters\s*\{\s*key:\s*"' + re.escape(key) + r'"\s*value\s*\{[^}]*\}\s*\}', re.MULTILINE)
        block = f'parameters {{\n  key: "{key}"\n  value {{ string_value: "{value}" }}\n}}'
        config_text, found = entry.subn(block, config_text)
        if not found:
            config_text = config_text.rstrip("\n") + "\n" + block + "\n"
    return config_text


class LocalCluster:
    """Starts, describes and stops a local cluster; a context manager.

    ``gateway_parameters`` override the coded endpoint's settings on the gateway (e.g. ``request_timeout_ms``;
    ``GATEWAY_DEFAULTS`` apply otherwise).
    ``parity_serves_f``: the parity workers serve F too (the benchmark's equal-resources baseline uses every
    server for F). ``add_gateway_models(repository, f_addresses)`` may add models to the gateway's repository once
    the workers' addresses are known (the benchmark's relay).
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        *,
        workers: int = 3,
        parity_workers: int = 1,
        repository: str | os.PathLike[str] = "model_repository",
        host: str = "127.0.0.1",
        gateway_parameters: Mapping[str, str] | None = None,
        worker_args: Sequence[str] = (),
        startup_timeout: float = 120.0,
        parity_serves_f: bool = False,
        add_gateway_models: Callable[[Path, Sequence[str]], None] | None = None,
        netns: bool = False,
    ) -> None:
        if workers < 1 or parity_workers < 0:
            raise ConfigError(f"a cluster needs >= 1 F worker and >= 0 parity workers, got {workers}, {parity_workers}")
        self.out = Path(out).absolute()
        self.source = Path(repository).absolute()
        if not self.source.is_dir():
            raise ConfigError(f"model repository {self.source} is not a directory")
        self.coded = coded_model(self.source)
        self.f_model = self.coded.removesuffix(CODED_SUFFIX)
        self._config_text = (self.source / self.coded / "config.pbtxt").read_text()
        parity = config_parameter(self._config_text, "parity_models") or ""
        self.parity_models = tuple(name.strip() for name in parity.split(",") if name.strip())
        self.n_workers = workers
        self.n_parity_workers = parity_workers
        self.host = host
        self.gateway_parameters = {**GATEWAY_DEFAULTS, **(gateway_parameters or {})}
        self.worker_args = tuple(worker_args)
        self.startup_timeout = startup_timeout
        self.parity_serves_f = parity_serves_f
        self._add_gateway_models = add_gateway_models
        self.netns = netns
        self.network: NetworkPlan | None = None
        """With ``netns``: the bridge and each worker's namespace (``parm.netns``)."""
        self.servers: list[ClusterServer] = []

    # -- repositories ----------------------------------------------------------------------------------------------

    def _repository(self, name: str, models: Sequence[str]) -> Path:
        """A repository of symlinks to ``models`` of the source repository (unchanged models, as users deploy)."""
        path = self.out / "repositories" / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        for model in models:
            if not (self.source / model).is_dir():
                raise ConfigError(f"model {model} is missing from {self.source}")
            (path / model).symlink_to(self.source / model, target_is_directory=True)
        return path

    def _needs_code_models(self) -> bool:
        inline = (config_parameter(self._config_text, "inline_code") or "true").strip().lower() in ("true", "1", "yes")
        return not (config_parameter(self._config_text, "code_weights") and inline)

    def _gateway_repository(self, f_addresses: Sequence[str], parity_addresses: Sequence[str]) -> Path:
        local = (
            [f"{self.f_model}{ENCODER_SUFFIX}", f"{self.f_model}{DECODER_SUFFIX}"] if self._needs_code_models() else []
        )
        path = self._repository("gateway", local)
        coded = path / self.coded
        coded.mkdir()
        for version in (p for p in (self.source / self.coded).iterdir() if p.is_dir()):
            (coded / version.name).symlink_to(version, target_is_directory=True)
        values = {"f_workers": ",".join(f_addresses), **self.gateway_parameters}
        if parity_addresses:
            values["parity_workers"] = ",".join(parity_addresses)
        (coded / "config.pbtxt").write_text(with_parameters(self._config_text, values))
        return path

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def _server(self, name: str, repository: Path, ports: tuple[int | None, ...] = (None, None, None)) -> TritonServer:
        http, grpc, metrics = ports
        host, prefix = self.host, ()
        namespace = self.network.namespaces.get(name) if self.network is not None else None
        if namespace is not None:  # alone in its namespace: Triton's usual ports are free there
            host, prefix = namespace.address, namespace.command_prefix
            http, grpc, metrics = http or 8000, grpc or 8001, metrics or 8002
        return TritonServer(
            repository,
            http_port=http,
            grpc_port=grpc,
            metrics_port=metrics,
            host=host,
            command_prefix=prefix,
            log_dir=self.out / "logs" / name,
            startup_timeout=self.startup_timeout,
            extra_args=self.worker_args if name != "gateway" else (),
        )

    def start(self) -> LocalCluster:
        """Starts the workers side by side, then the gateway; writes ``cluster.json``. Stops what it started if any
        server fails to come up."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.n_parity_workers:
            f_repo = self._repository("f", [self.f_model])
        else:  # parities then run on F workers outside the group's domains
            f_repo = self._repository("f", [self.f_model, *self.parity_models])
        planned = [ClusterServer(f"f{i}", "f", self._server(f"f{i}", f_repo)) for i in range(self.n_workers)]
        if self.n_parity_workers:
            extra = [self.f_model] if self.parity_serves_f else []
            parity_repo = self._repository("parity", [*extra, *self.parity_models])
            planned += [
                ClusterServer(f"parity{i}", "parity", self._server(f"parity{i}", parity_repo))
                for i in range(self.n_parity_workers)
            ]
        self.servers = []
        try:
            if self.netns:
                self.network = NetworkPlan.create()
                for member in planned:
                    self.network.add(member.name)
                    member.server = self._server(member.name, member.server.model_repository)
            with ThreadPoolExecutor(max_workers=len(planned)) as pool:
                for member, _ in zip(planned, pool.map(lambda m: m.server.start(), planned), strict=True):
                    self.servers.append(member)
            gateway_repo = self._gateway_repository(
                [m.server.grpc_url for m in planned if m.role == "f"],
                [m.server.grpc_url for m in planned if m.role == "parity"],
            )
            if self._add_gateway_models is not None:
                self._add_gateway_models(gateway_repo, [m.server.grpc_url for m in planned if m.role == "f"])
            gateway = ClusterServer("gateway", "gateway", self._server("gateway", gateway_repo))
            gateway.server.start()
            self.servers.insert(0, gateway)
        except BaseException:
            for member in planned:
                member.server.stop()
            self.servers = []
            self._close_network()
            raise
        self.write_description()
        return self

    def stop(self) -> None:
        """Stops every server it started (the gateway first, so no call is left to a stopped worker); idempotent."""
        for member in self.servers:
            member.server.stop()
        self._close_network()

    def _close_network(self) -> None:
        if self.network is not None:
            self.network.close()
            self.network = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access ----------------------------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> TritonServer:
        for member in self.servers:
            if member.name == name:
                return member.server
        raise KeyError(f"no server {name!r} in this cluster; known: {[m.name for m in self.servers]}")

    @property
    def gateway(self) -> TritonServer:
        return self["gateway"]

    def names(self, role: str) -> list[str]:
        return [member.name for member in self.servers if member.role == role]

    def restart(self, name: str) -> TritonServer:
        """Starts server ``name`` again on its own ports (after a kill): the gateway finds it where it was."""
        old = self[name]
        old.stop()
        fresh = self._server(name, old.model_repository, (old.http_port, old.grpc_port, old.metrics_port))
        fresh.start()
        for member in self.servers:
            if member.name == name:
                member.server = fresh
        self.write_description()
        return fresh

    def describe(self) -> dict[str, Any]:
        return {
            "coded_model": self.coded,
            "f_model": self.f_model,
            "parity_models": list(self.parity_models),
            "servers": [member.describe() for member in self.servers],
        }

    def write_description(self) -> Path:
        path = self.out / CLUSTER_FILE
        path.write_text(json.dumps(self.describe(), indent=2) + "\n")
        return path


def run_cluster(
    out: str | os.PathLike[str],
    *,
    workers: int,
    parity_workers: int,
    repository: str | os.PathLike[str],
    host: str,
    netns: bool = False,
    stream: TextIO | None = None,
) -> int:
    """``parm cluster up``: starts a local cluster, prints its endpoints and stays in the foreground until SIGINT or
    SIGTERM (or a server's death), then stops everything it started. Returns the CLI's exit code."""
    stream = stream or sys.stdout
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    cluster = LocalCluster(
        out, workers=workers, parity_workers=parity_workers, repository=repository, host=host, netns=netns
    )
    try:
        cluster.start()
        if stop.is_set():
            return 130
        print(f"cluster ready: {cluster.out / CLUSTER_FILE}", file=stream)
        for member in cluster.servers:
            server = member.server
            print(
                f"  {member.name:<9} {member.role:<8} pid {server.pid:<7} http {server.http_url}"
                f"  grpc {server.grpc_url}  metrics {server.metrics_url}",
                file=stream,
            )
        print(f"clients call {cluster.coded} on the gateway; Ctrl-C stops the cluster", file=stream, flush=True)
        while not stop.wait(0.5):
            dead = [m.name for m in cluster.servers if not m.server.is_alive()]
            if dead:
                print(f"server(s) {dead} died; stopping the cluster", file=sys.stderr)
                return 1
        return 0
    except ServerError as error:
        print(f"the cluster could not start: {error}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

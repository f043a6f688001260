"""Network namespaces for a local cluster: each worker server in a namespace of its own, joined to this machine by a
veth pair on a bridge, so that its link can be cut for real (``ip link set <veth> down``: a silent partition, not a
refused connection).

The bridge has the subnet's first address in the root namespace, so the gateway (which stays in the root namespace,
on 127.0.0.1) and the launcher reach every worker at its own address; workers bind to theirs. Needs root and
iproute2; ``netns_available`` says whether this machine allows it. Traffic only ever goes to namespaces made here.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass, field

from parm.errors import ServerError

_IDS = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise ServerError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def netns_available() -> bool:
    """Whether network namespaces can be made here: root, iproute2, and a probe namespace that comes and goes."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"parm-probe-{os.getpid()}"
    if _ip("netns", "add", probe, check=False).returncode != 0:
        return False
    _ip("netns", "del", probe, check=False)
    return True


@dataclass
class Namespace:
    """One worker's namespace: its name, its address on the bridge, and the root side of its veth pair."""

    name: str
    address: str
    host_veth: str

    @property
    def command_prefix(self) -> list[str]:
        """Runs a command inside the namespace (``ip netns exec`` execs it: the pid is the command's own)."""
        return ["ip", "netns", "exec", self.name]

    def link(self, up: bool) -> None:
        """Cuts (``up`` False) or restores the namespace's link to the bridge."""
        _ip("link", "set", self.host_veth, "up" if up else "down")


@dataclass
class NetworkPlan:
    """A bridge and the namespaces on it; ``close`` removes everything it made (idempotent)."""

    bridge: str
    subnet: str
    """The first three octets, e.g. ``10.213.7``."""
    namespaces: dict[str, Namespace] = field(default_factory=dict)

    @classmethod
    def create(cls) -> NetworkPlan:
        tag = f"{os.getpid() % 10000}x{next(_IDS)}"
        octet = (os.getpid() + next(_IDS)) % 250 + 1
        plan = cls(bridge=f"pbr{tag}", subnet=f"10.213.{octet}")
        try:
            _ip("link", "add", plan.bridge, "type", "bridge")
            _ip("addr", "add", f"{plan.subnet}.1/24", "dev", plan.bridge)
            _ip("link", "set", plan.bridge, "up")
        except ServerError:
            plan.close()
            raise
        return plan

    def add(self, server: str) -> Namespace:
        """A namespace for ``server`` with the next free address, its veth pair attached to the bridge."""
        index = len(self.namespaces) + 10
        tag = self.bridge.removeprefix("pbr")
        namespace = Namespace(f"parm-{tag}-{server}", f"{self.subnet}.{index}", f"pv{tag}{index}")
        inner = f"pn{tag}{index}"
        self.namespaces[server] = namespace
        _ip("netns", "add", namespace.name)
        _ip("link", "add", namespace.host_veth, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", namespace.name)
        _ip("link", "set", namespace.host_veth, "master", self.bridge)
        _ip("link", "set", namespace.host_veth, "up")
        inside = ["netns", "exec", namespace.name, "ip"]
        _ip(*inside, "addr", "add", f"{namespace.address}/24", "dev", inner)
        _ip(*inside, "link", "set", inner, "up")
        _ip(*inside, "link", "set", "lo", "up")
        return namespace

    def close(self) -> None:
        for namespace in self.namespaces.values():
            with contextlib.suppress(ServerError):
                _ip("link", "del", namespace.host_veth, check=False)
                _ip("netns", "del", namespace.name, check=False)
        self.namespaces.clear()
        _ip("link", "del", self.bridge, check=False)

"""The coded endpoint across servers, on a real local cluster (3 F workers, 1 parity worker, a gateway, k = 2) with
real faults of whole servers: each test runs an open-loop gRPC load through the gateway, injects its fault, undoes
it whatever happens, and checks that every request got exactly one answer, what was rebuilt and what failed, the
gateway's view of its workers (its metrics), and that service is back to normal afterwards.

On 2 cores the servers share the CPUs: the failure domains are processes, not machines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient

from parm.backend.orchestrator.contract import RECONSTRUCTED_OUTPUT
from parm.cluster import LocalCluster
from parm.loadtest.faults import cgroup_quota_available
from parm.loadtest.server_faults import LinkCut, PortCut, ServerCpuQuota, ServerKill, ServerPause, nftables_available
from parm.netns import netns_available

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
RATE = 40.0
"""Requests per second of the test load: well inside what 5 servers on 2 cores serve."""
DEADLINE_S = 1.0
"""The committed endpoint's request_timeout_ms."""
QUERIES = 32
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Outcome:
    index: int
    sent: float
    latency: float
    rebuilt: bool | None = None
    logits: np.ndarray | None = None
    error: str | None = None


class GatewayLoad:
    """Calls the gateway's coded model at a fixed rate from a thread of its own, with one of ``QUERIES`` fixed
    queries each; every call's outcome is kept (a second callback for one call would be a failure)."""

    def __init__(self, cluster: LocalCluster, queries: np.ndarray, rate: float = RATE) -> None:
        self._client = grpcclient.InferenceServerClient(cluster.gateway.grpc_url)
        self._model = cluster.coded
        self._queries = queries
        self._interval = 1.0 / rate
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcomes: dict[int, list[Outcome]] = {}
        self.sent = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GatewayLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + 3 * DEADLINE_S
        while time.monotonic() < deadline and len(self.outcomes) < self.sent:
            time.sleep(0.05)
        time.sleep(0.2)  # a duplicate answer would show up by now
        self._client.close()

    def _run(self) -> None:
        next_at = time.perf_counter()
        while not self._stop.is_set():
            index = self.sent
            query = self._queries[index % len(self._queries)][None]
            tensor = grpcclient.InferInput("input", list(query.shape), "FP32")
            tensor.set_data_from_numpy(query)
            sent = time.perf_counter()
            self._client.async_infer(
                self._model, [tensor], callback=lambda result, error, i=index, t=sent: self._done(i, t, result, error)
            )
            self.sent += 1
            next_at += self._interval
            time.sleep(max(0.0, next_at - time.perf_counter()))

    def _done(self, index: int, sent: float, result, error) -> None:
        outcome = Outcome(index, sent, time.perf_counter() - sent)
        if error is not None:
            outcome.error = str(error)
        else:
            outcome.rebuilt = bool(result.as_numpy(RECONSTRUCTED_OUTPUT).all())
            outcome.logits = result.as_numpy("logits")[0]
        with self._lock:
            self.outcomes.setdefault(index, []).append(outcome)

    def results(self) -> list[Outcome]:
        """One outcome per request sent: asserts that none is missing and none came twice."""
        missing = [i for i in range(self.sent) if i not in self.outcomes]
        assert not missing, f"{len(missing)} of {self.sent} requests got no answer: {missing[:10]}"
        twice = {i: len(o) for i, o in self.outcomes.items() if len(o) != 1}
        assert not twice, f"requests answered more than once: {twice}"
        return [self.outcomes[i][0] for i in range(self.sent)]


def metrics(url: str) -> dict[tuple[str, frozenset], float]:
    """A Prometheus endpoint's samples: (name, labels) -> value."""
    samples = {}
    for line in _OPENER.open(url, timeout=5).read().decode().splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? ([0-9.eE+-]+|NaN)$", line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def worker_metric(cluster: LocalCluster, name: str, server: str) -> float | None:
    address = cluster[server].grpc_url
    for (metric, labels), value in metrics(cluster.gateway.metrics_url).items():
        if metric == name and ("worker", address) in labels:
            return value
    return None


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.25)


def wait_all_up(cluster: LocalCluster, timeout: float = 20.0) -> None:
    names = cluster.names("f") + cluster.names("parity")
    wait_for(
        lambda: all(worker_metric(cluster, "parm_worker_up", name) == 1.0 for name in names),
        timeout,
        f"every worker up on the gateway ({names})",
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Without hedging, so that what the code rebuilds is what these tests see (the cluster bench measures hedging).
    with LocalCluster(
        tmp_path_factory.mktemp("cluster"), workers=3, parity_workers=1, repository=REPOSITORY,
        gateway_parameters={"hedge_below_load": "0"},
    ) as c:  # fmt: skip
        yield c


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return np.random.default_rng(0).random((QUERIES, 1, 8, 8), dtype=np.float32)


@pytest.fixture(scope="module")
def reference(cluster: LocalCluster, queries: np.ndarray) -> np.ndarray:
    """F's own logits for each query, from a worker directly."""
    client = grpcclient.InferenceServerClient(cluster["f0"].grpc_url)
    try:
        tensor = grpcclient.InferInput("input", list(queries.shape), "FP32")
        tensor.set_data_from_numpy(queries)
        return client.infer(cluster.f_model, [tensor]).as_numpy("logits")
    finally:
        client.close()


@pytest.fixture
def healthy(cluster: LocalCluster, queries: np.ndarray) -> LocalCluster:
    """The cluster with every worker up on the gateway (a test may follow one that ejected a worker)."""
    with GatewayLoad(cluster, queries, rate=20.0):  # gives the gateway calls to flush metrics about
        time.sleep(0.5)
    wait_all_up(cluster)
    return cluster


def check_originals(outcomes: list[Outcome], reference: np.ndarray) -> None:
    """Every answer F gave is F's answer to that very query (no mix-ups across requests or workers)."""
    for outcome in outcomes:
        if outcome.error is None and not outcome.rebuilt:
            np.testing.assert_allclose(outcome.logits, reference[outcome.index % QUERIES], rtol=1e-4, atol=1e-4)
        if outcome.rebuilt:
            assert outcome.logits is not None and np.isfinite(outcome.logits).all()


def p50(outcomes: list[Outcome]) -> float:
    return float(np.median([o.latency for o in outcomes if o.error is None]))


def test_the_gateway_spreads_members_over_the_f_workers_and_answers_like_f(
    healthy: LocalCluster, queries: np.ndarray, reference: np.ndarray
) -> None:
    before = {name: _worker_inferences(healthy, name) for name in healthy.names("f")}
    spread_before = _group_spread(healthy)
    with GatewayLoad(healthy, queries) as load:
        time.sleep(3.0)
    outcomes = load.results()
    time.sleep(2.5)  # one metrics flush
    spread = {key: value - spread_before[key] for key, value in _group_spread(healthy).items()}
    assert spread["distinct"] > 0 and spread["shared"] == 0, f"every group on distinct workers: {spread}"
    assert not [o.error for o in outcomes if o.error], "no fault, no error"
    check_originals(outcomes, reference)
    calls = {name: _worker_inferences(healthy, name) - before[name] for name in before}
    total = sum(calls.values())
    assert total >= len(outcomes), calls
    assert all(count >= total / 6 for count in calls.values()), f"least-outstanding placement spreads F: {calls}"


def _group_spread(cluster: LocalCluster) -> dict[str, float]:
    samples = metrics(cluster.gateway.metrics_url)
    return {
        spread: sum(v for (name, labels), v in samples.items() if name == "parm_group_domains_total"
                    and ("spread", spread) in labels)
        for spread in ("distinct", "shared")
    }  # fmt: skip


def _worker_inferences(cluster: LocalCluster, name: str) -> float:
    samples = metrics(cluster[name].metrics_url)
    return sum(
        value
        for (metric, labels), value in samples.items()
        if metric == "nv_inference_request_success" and ("model", cluster.f_model) in labels
    )


def test_an_f_worker_stopped_for_3_s_is_ejected_its_calls_rebuilt_and_it_is_readmitted(
    healthy: LocalCluster, queries: np.ndarray, reference: np.ndarray
) -> None:
    with GatewayLoad(healthy, queries) as warm:
        time.sleep(1.5)
    normal = p50(warm.results())
    with GatewayLoad(healthy, queries) as load:
        time.sleep(1.0)
        with ServerPause(healthy["f1"].pid, max_seconds=10.0):
            wait_for(lambda: worker_metric(healthy, "parm_worker_up", "f1") == 0.0, 3.0, "f1 ejected while stopped")
            time.sleep(3.0)
        time.sleep(1.0)
    outcomes = load.results()
    errors = [o.error for o in outcomes if o.error]
    assert not errors, f"one stopped worker of three is within what the code rebuilds: {errors[:3]}"
    rebuilt = [o for o in outcomes if o.rebuilt]
    assert rebuilt, "the calls the stopped worker held were rebuilt"
    assert max(o.latency for o in rebuilt) < DEADLINE_S / 2, "rebuilt well before the deadline"
    check_originals(outcomes, reference)
    assert (worker_metric(healthy, "parm_worker_ejections_total", "f1") or 0) >= 1
    wait_for(lambda: worker_metric(healthy, "parm_worker_up", "f1") == 1.0, 15.0, "f1 readmitted after SIGCONT")
    with GatewayLoad(healthy, queries) as after:
        time.sleep(1.5)
    later = after.results()
    assert not [o for o in later if o.error or o.rebuilt], "service back to normal"
    assert p50(later) < 2 * normal + 0.005, f"latency back to normal: p50 {p50(later):.4f} s vs {normal:.4f} s"


def test_a_killed_f_worker_loses_no_request_and_is_readmitted_after_a_restart_on_its_port(
    healthy: LocalCluster, queries: np.ndarray, reference: np.ndarray
) -> None:
    with GatewayLoad(healthy, queries) as load:
        time.sleep(1.0)
        ServerKill(healthy["f2"].pid).apply()
        wait_for(lambda: worker_metric(healthy, "parm_worker_up", "f2") == 0.0, 5.0, "f2 ejected once killed")
        time.sleep(1.0)
    outcomes = load.results()
    assert not [o.error for o in outcomes if o.error], "calls to the dead worker are rebuilt, not failed"
    check_originals(outcomes, reference)
    healthy.restart("f2")
    wait_for(lambda: worker_metric(healthy, "parm_worker_up", "f2") == 1.0, 20.0, "f2 readmitted after its restart")
    before = _worker_inferences(healthy, "f2")
    with GatewayLoad(healthy, queries) as after:
        time.sleep(1.5)
    assert not [o for o in after.results() if o.error]
    assert _worker_inferences(healthy, "f2") > before, "the restarted worker takes members again"


@pytest.mark.skipif(not nftables_available(), reason="no nft here, or not root: a link cannot be cut for real")
def test_an_f_worker_cut_off_the_network_by_a_drop_rule_is_ejected_rebuilt_around_and_readmitted(
    healthy: LocalCluster, queries: np.ndarray, reference: np.ndarray
) -> None:
    server = healthy["f1"]
    with GatewayLoad(healthy, queries) as load:
        time.sleep(1.0)
        with PortCut(server.pid, [server.grpc_port, server.http_port], max_seconds=10.0):
            wait_for(lambda: worker_metric(healthy, "parm_worker_up", "f1") == 0.0, 3.0, "f1 ejected while cut off")
            time.sleep(3.0)
        time.sleep(1.0)
    outcomes = load.results()
    errors = [o.error for o in outcomes if o.error]
    assert not errors, f"a worker cut off is rebuilt around: {errors[:3]}"
    assert [o for o in outcomes if o.rebuilt], "the calls it held were rebuilt"
    check_originals(outcomes, reference)
    wait_for(lambda: worker_metric(healthy, "parm_worker_up", "f1") == 1.0, 15.0, "f1 readmitted once reconnected")


@pytest.mark.skipif(not cgroup_quota_available(), reason="no writable cgroup with the cpu controller here")
def test_a_throttled_f_worker_is_rebuilt_around_without_flapping(
    healthy: LocalCluster, queries: np.ndarray, reference: np.ndarray
) -> None:
    ejections = worker_metric(healthy, "parm_worker_ejections_total", "f0") or 0.0
    with GatewayLoad(healthy, queries) as load:
        time.sleep(0.5)
        with ServerCpuQuota(healthy["f0"].pid, cpus=0.02, max_seconds=20.0):
            time.sleep(6.0)
        time.sleep(0.5)
    outcomes = load.results()
    assert not [o.error for o in outcomes if o.error]
    check_originals(outcomes, reference)
    time.sleep(2.5)  # one metrics flush
    flaps = (worker_metric(healthy, "parm_worker_ejections_total", "f0") or 0.0) - ejections
    assert flaps <= 4, f"a slow worker's ejections back off (cooldown doubling), got {flaps} in 6 s"


def test_a_stopped_parity_worker_leaves_groups_unprotected_never_failed(
    healthy: LocalCluster, queries: np.ndarray, reference: np.ndarray
) -> None:
    with GatewayLoad(healthy, queries) as load:
        time.sleep(0.5)
        with ServerPause(healthy["parity0"].pid, max_seconds=10.0):
            time.sleep(3.0)
        time.sleep(0.5)
    outcomes = load.results()
    assert not [o.error for o in outcomes if o.error], "F answers every request while the parity worker is stopped"
    check_originals(outcomes, reference)


def test_two_f_workers_stopped_at_once_give_clear_deadline_errors_and_nothing_else(
    healthy: LocalCluster, queries: np.ndarray, reference: np.ndarray
) -> None:
    """k = 2, r = 1: a group with both members on stopped workers cannot be rebuilt."""
    with GatewayLoad(healthy, queries) as load:
        time.sleep(0.5)
        with ServerPause(healthy["f0"].pid, max_seconds=10.0), ServerPause(healthy["f1"].pid, max_seconds=10.0):
            time.sleep(3.0)
        time.sleep(1.5)
    outcomes = load.results()
    for outcome in outcomes:
        if outcome.error is not None:
            assert "no answer within request_timeout_ms" in outcome.error, outcome.error
            assert outcome.latency < DEADLINE_S + 0.5
    check_originals(outcomes, reference)
    time.sleep(2.5)  # one metrics flush
    samples = metrics(healthy.gateway.metrics_url)
    requests = sum(v for (name, _), v in samples.items() if name == "parm_requests_total")
    answers = sum(v for (name, _), v in samples.items() if name == "parm_answers_total")
    assert requests == answers, "the gateway answered each request exactly once"
    wait_all_up(healthy)
    with GatewayLoad(healthy, queries) as after:
        time.sleep(1.5)
    assert not [o for o in after.results() if o.error], "normal service once they resume"


def test_parm_cluster_up_serves_until_sigterm_then_stops_every_server_even_a_stopped_one(tmp_path: Path) -> None:
    out = tmp_path / "cluster"
    log = (tmp_path / "cluster.log").open("w")
    command = [sys.executable, "-m", "parm.cli", "cluster", "up", "--workers", "2", "--parity-workers", "1"]
    process = subprocess.Popen(
        [*command, "--out", str(out), "--model-repository", str(REPOSITORY)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: "Ctrl-C" in (tmp_path / "cluster.log").read_text(), 90.0, "the cluster is ready")
        description = json.loads((out / "cluster.json").read_text())
        roles = sorted(server["role"] for server in description["servers"])
        assert roles == ["f", "f", "gateway", "parity"]
        assert all(server["host"] == "127.0.0.1" for server in description["servers"])
        gateway = next(server for server in description["servers"] if server["role"] == "gateway")
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{gateway['grpc_port']}")
        try:
            assert client.is_model_ready(description["coded_model"])
        finally:
            client.close()
        pids = [server["pid"] for server in description["servers"]]
        os.killpg(pids[1], signal.SIGSTOP)  # a stalled worker must not outlive the cluster either
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    finally:
        if process.poll() is None:
            process.kill()
        log.close()


@pytest.mark.skipif(not netns_available(), reason="no network namespaces here (needs root and iproute2)")
def test_an_f_worker_in_its_own_network_namespace_whose_link_is_cut_is_rebuilt_around_and_readmitted(
    tmp_path: Path, queries: np.ndarray
) -> None:
    with LocalCluster(
        tmp_path / "cluster", workers=3, parity_workers=1, repository=REPOSITORY, netns=True,
        gateway_parameters={"hedge_below_load": "0"},
    ) as isolated:  # fmt: skip
        assert isolated["f1"].host.startswith("10.213."), "the workers live in namespaces of their own"
        wait_all_up(isolated)
        with GatewayLoad(isolated, queries) as load:
            time.sleep(1.0)
            namespace = isolated.network.namespaces["f1"]
            with LinkCut(isolated["f1"].pid, namespace, max_seconds=10.0):
                wait_for(lambda: worker_metric(isolated, "parm_worker_up", "f1") == 0.0, 3.0, "f1 ejected")
                time.sleep(3.0)
            time.sleep(1.0)
        outcomes = load.results()
        assert not [o.error for o in outcomes if o.error], "a worker cut off is rebuilt around"
        assert [o for o in outcomes if o.rebuilt], "the calls it held were rebuilt"
        wait_for(lambda: worker_metric(isolated, "parm_worker_up", "f1") == 1.0, 15.0, "f1 readmitted")
        network = isolated.network
    assert (
        isolated.network is None
        and network.bridge
        not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    ), "the bridge and namespaces are gone with the cluster"

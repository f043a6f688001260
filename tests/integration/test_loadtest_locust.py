"""A short smoke run of the Locust users (HTTP and gRPC) against the committed repository on the real server.

Checks the machinery: Locust runs headless in a child process and stops on its own (no hard stop), both protocols
send requests and get answers, rebuilt answers are reported under their own name while an F instance is paused,
the users follow a model's metadata (a plain F, without the flag output, works too), and no instance is left paused.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from parm.loadtest import faults
from parm.loadtest.configs import LoadtestConfig
from parm.loadtest.locustrun import LOCUSTFILE, REBUILT_SUFFIX, run_locust

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


@pytest.fixture(scope="module")
def server(start_session_server):
    return start_session_server(REPOSITORY)


def test_locust_http_and_grpc_users_run_and_stop_on_their_own(server, tmp_path: Path) -> None:
    config = LoadtestConfig(
        host=server.http_url,
        grpc_url=server.grpc_url,
        model="digits_coded",
        protocol="both",
        users=4,
        spawn_rate=4,
        duration_s=4,
        csv_prefix=tmp_path / "locust",
    )
    result = run_locust(config, server_pid=server.pid, pause_model="digits", pause_every_s=0.6, pause_s=0.4)
    assert result.returncode == 0, result.output_tail
    assert not result.hard_stopped
    assert result.wall_s < config.duration_s + 20
    rows = {(r.type, r.name): r for r in result.rows}
    for protocol in ("http", "grpc"):
        answered = sum(r.requests for (t, _), r in rows.items() if t == protocol)
        assert answered > 0, (protocol, result.rows)
    assert all(r.failures == 0 for r in result.rows), result.rows
    total = result.total
    assert total is not None and total.requests == sum(r.requests for r in result.rows if r.name != "Aggregated")
    assert result.pauses >= 2
    names = {name for _, name in rows}
    assert names <= {"digits_coded", "digits_coded" + REBUILT_SUFFIX, "Aggregated"}
    assert "digits_coded" + REBUILT_SUFFIX in names, "a paused instance's request must come back rebuilt"
    assert faults.active_faults() == []
    for pid in faults.find_instance_pids(server.pid, "digits").values():
        assert psutil.Process(pid).status() != psutil.STATUS_STOPPED


def test_the_locustfile_spells_the_same_rebuilt_suffix() -> None:
    # Not imported: importing Locust monkey-patches the test process with gevent.
    assert f'REBUILT_SUFFIX = "{REBUILT_SUFFIX}"' in LOCUSTFILE.read_text()


def test_locust_users_follow_the_metadata_of_a_plain_model(server, tmp_path: Path) -> None:
    config = LoadtestConfig(
        host=server.http_url,
        grpc_url=server.grpc_url,
        model="digits",
        protocol="grpc",
        users=2,
        spawn_rate=2,
        duration_s=4,  # CI's first gRPC call (gevent's thread pool, the metadata) can take seconds
        csv_prefix=tmp_path / "plain",
    )
    result = run_locust(config)
    assert result.returncode == 0 and not result.hard_stopped, result.output_tail
    rows = [r for r in result.rows if r.name != "Aggregated"]
    assert [(r.type, r.name) for r in rows] == [("grpc", "digits")]
    assert rows[0].requests > 0 and rows[0].failures == 0

"""The benchmark's parts that need no server: arrivals, fault schedules, statistics and target checks.

(They live beside the benchmark's smoke test; nothing here starts a server.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from parm.errors import FaultError
from parm.loadtest import faults
from parm.loadtest.accounting import REBUILDS, rebuild_key
from parm.loadtest.openloop import RequestRecord, RunResult, poisson_arrivals
from parm.loadtest.report import cell_stats, check_targets, rebuild_phase_table
from parm.loadtest.scenarios import FaultKind, kill_scenario, pause_scenario, starve_scenario


def test_poisson_arrivals_are_seeded_increasing_and_at_the_rate() -> None:
    a = poisson_arrivals(200.0, 50.0, seed=3)
    assert np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < 50.0
    assert abs(len(a) / 50.0 - 200.0) < 200.0 * 0.05
    np.testing.assert_array_equal(a, poisson_arrivals(200.0, 50.0, seed=3))
    gaps = np.diff(a)
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.1  # exponential gaps: coefficient of variation 1


def test_pause_schedule_stays_under_the_health_limit_and_scales_with_the_rate() -> None:
    slow = pause_scenario(60.0, 5.0, hit_fraction=0.02, seed=1)
    fast = pause_scenario(60.0, 100.0, hit_fraction=0.02, seed=1)
    assert len(fast.events) > 3 * max(1, len(slow.events))
    for scenario in (slow, fast):
        ends = 0.0
        for event in scenario.events:
            assert event.kind is FaultKind.PAUSE and event.duration_s < faults.PAUSE_HEALTH_LIMIT_S
            assert event.at_s >= ends  # never overlapping
            ends = event.at_s + event.duration_s
        assert ends <= 60.0
    assert pause_scenario(60.0, 100.0, seed=1) == pause_scenario(60.0, 100.0, seed=1)
    with pytest.raises(FaultError, match="unhealthy"):
        pause_scenario(10.0, 10.0, max_s=1.5)


def test_starve_and_kill_schedules() -> None:
    starve = starve_scenario(30.0, kind=FaultKind.CPU_QUOTA, amount=0.1, window_s=3.0, every_s=8.0)
    assert len(starve.events) >= 2 and all(e.duration_s == 3.0 and e.amount == 0.1 for e in starve.events)
    assert all(e.at_s + e.duration_s <= 30.0 for e in starve.events)
    kill = kill_scenario(20.0, at_fraction=0.25)
    assert kill.destructive and kill.events[0].at_s == 5.0 and not starve.destructive


def _result(latencies_ms: list[float], rebuilt: int = 0, errors: int = 0) -> RunResult:
    records = []
    for i, ms in enumerate(latencies_ms):
        records.append(RequestRecord(i, i % 3, i * 0.01, i * 0.01, ms / 1000, True, i < rebuilt, 1, 1, False, i % 3))
    for _ in range(errors):
        records.append(RequestRecord(len(records), 0, 1.0, 1.0, 0.001, False, copies=1, answers=1, error="boom 42"))
    return RunResult("m", 100.0, 1.0, time.time(), records)


def _cell(scheme: str, scenario: str, lat: list[float]):
    """One cell of 3 instances whose server counted every request."""
    return cell_stats(_result(lat), scenario=scenario, scheme=scheme, instances=3, server_requests=len(lat))


def test_cell_stats_count_every_request_once() -> None:
    stats = cell_stats(
        _result([5.0] * 98 + [500.0, 900.0], rebuilt=4, errors=2),
        scenario="pause",
        scheme="equal",
        instances=3,
        f_predictions=np.array([0, 1, 2]),
        server_requests=102,
    )
    assert (stats.count, stats.ok, stats.errors, stats.lost, stats.duplicated) == (102, 100, 2, 0, 0)
    assert stats.p50 == pytest.approx(5.0) and stats.max == pytest.approx(900.0)
    assert stats.rebuilt == 4 and stats.rebuilt_agree_with_f == 1.0
    assert stats.error_kinds == {"boom #": 2}
    assert stats.slow == 2


def test_the_coded_endpoints_counters_give_parities_per_reason_and_mean_rebuild_phases() -> None:
    counters = {"budget": 3.0, "straggler": 1.0, "withheld": 2.0, REBUILDS: 4.0}
    counters.update({rebuild_key("wait"): 0.060, rebuild_key("parity"): 0.040, rebuild_key("complete"): 0.004})
    stats = cell_stats(_result([5.0] * 100), scenario="pause", scheme="parm-k2", instances=3, coded_counters=counters)
    assert stats.parities == {"budget": 3.0, "straggler": 1.0, "withheld": 2.0}
    assert stats.rebuild_phases_ms == pytest.approx({"wait": 15.0, "parity": 10.0, "complete": 1.0, REBUILDS: 4.0})
    table = rebuild_phase_table([stats, _cell("equal", "pause", [5.0] * 100)])
    assert table.splitlines()[-1] == "| 100 | pause | parm-k2 | 4 | 15.0 | 10.0 | 1.0 | 26.0 |"
    assert len(table.splitlines()) == 3, "only cells that rebuilt get a row"


def test_target_checks_compare_parm_with_equal_resources_and_hedging_with_intervals() -> None:
    cells = [
        _cell("equal", "pause", [5.0] * 990 + [400.0] * 10),
        _cell("hedged", "pause", [5.0] * 990 + [60.0] * 10),
        _cell("parm-k2", "pause", [5.2] * 990 + [20.0] * 10),
        _cell("parm-k2", "no-fault", [5.2] * 990 + [20.0] * 10),
        _cell("equal", "no-fault", [5.0] * 1000),
        _cell("none", "no-fault", [5.0] * 1000),
        _cell("relay", "no-fault", [5.1] * 1000),
    ]
    checks = {c.name: c for c in check_targets(cells)}
    gap = checks["tail gap cut under pauses vs equal resources"]
    assert gap.met and gap.low >= 10 and gap.low <= gap.value <= gap.high
    assert checks["p99.9 under pauses vs hedging's"].met
    assert checks["requests lost or answered twice (all cells)"].met
    assert checks["generator lag (max ms) in cells below 70% CPU"].met
    own = checks["p99.9 under pauses vs own fault-free p99.9"]
    assert own.value == pytest.approx(1.0, abs=0.2)
    floor = checks["Python-backend floor: relay p50 over F direct, no fault"]
    above_floor = checks["orchestrator p50 over the relay, no fault"]
    assert floor.met is None and floor.value == pytest.approx(5.1 / 5.0)
    assert above_floor.met and above_floor.value == pytest.approx(5.2 / 5.1)


def test_every_coded_scheme_is_checked_on_its_own() -> None:
    """A variant of the coded endpoint (``parm-hedged``) gets its own target rows beside the default's, each with
    its own verdict; the checks of the whole run appear once."""

    cells = [
        _cell("equal", "pause", [5.0] * 990 + [400.0] * 10),
        _cell("hedged", "pause", [5.0] * 990 + [60.0] * 10),
        _cell("parm-hedged", "pause", [5.2] * 990 + [20.0] * 10),
        _cell("parm-k2", "pause", [5.2] * 990 + [90.0] * 10),
    ]
    checks = check_targets(cells)
    by_scheme = {(c.scheme, c.name): c for c in checks}
    assert [c.scheme for c in checks if c.name == "p99.9 under pauses vs hedging's"] == ["parm-k2", "parm-hedged"]
    assert by_scheme["parm-hedged", "p99.9 under pauses vs hedging's"].met
    assert not by_scheme["parm-k2", "p99.9 under pauses vs hedging's"].met
    assert [c.name for c in checks].count("requests lost or answered twice (all cells)") == 1
    assert by_scheme["", "requests lost or answered twice (all cells)"].met


def test_a_target_is_met_only_when_its_whole_interval_meets_it() -> None:
    """Three slow requests in 1,000 decide a p99.9: a cut that is large at the point but rests on them is not
    counted as met."""

    rng = np.random.default_rng(0)
    cells = [
        _cell("equal", "pause", [*(5.0 + rng.exponential(3.0, 998)), 300.0, 310.0]),
        _cell("parm-k2", "pause", [*(5.0 + rng.exponential(3.0, 998)), 30.0, 300.0]),
    ]
    gap = {c.name: c for c in check_targets(cells)}["tail gap cut under pauses vs equal resources"]
    assert gap.low < 10 < gap.high and not gap.met


def test_a_lagging_generator_flags_its_cell() -> None:
    result = _result([5.0] * 100)
    result.records[50].sent += 0.03
    result.max_send_lag_s = 0.03
    cell = cell_stats(result, scenario="no-fault", scheme="parm-k2", instances=3)
    assert cell.lagged and cell.lag_share_over_10ms == pytest.approx(0.01)
    check = {c.name: c for c in check_targets([cell])}["generator lag (max ms) in cells below 70% CPU"]
    assert not check.met and "no-fault/parm-k2" in check.detail


@pytest.fixture
def busy() -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield process
    process.kill()
    process.wait()


def _cpu_share(process: psutil.Process, seconds: float = 0.6) -> float:
    before = process.cpu_times()
    time.sleep(seconds)
    after = process.cpu_times()
    return (after.user + after.system - before.user - before.system) / seconds


@pytest.mark.skipif(not faults.cgroup_quota_available(), reason="no writable CPU cgroup here")
def test_cpu_quota_throttles_and_is_undone(busy: subprocess.Popen[bytes]) -> None:
    process = psutil.Process(busy.pid)
    with faults.CpuQuota(busy.pid, 0.05) as fault:
        assert faults.CGROUP_PREFIX in Path(f"/proc/{busy.pid}/cgroup").read_text()
        assert _cpu_share(process) < 0.15
    assert not fault.active and faults.CGROUP_PREFIX not in Path(f"/proc/{busy.pid}/cgroup").read_text()
    assert faults.remove_stale_cgroups() == []


def test_cpu_hog_pins_beside_the_process_and_is_undone(busy: subprocess.Popen[bytes]) -> None:
    before = psutil.Process(busy.pid).cpu_affinity()
    fault = faults.CpuHog(busy.pid, hogs=1, max_seconds=5.0)
    with fault:
        hogs = [psutil.Process(pid) for pid in fault.hog_pids]
        assert psutil.Process(busy.pid).cpu_affinity() == [fault.cpu]
        assert all(h.cpu_affinity() == [fault.cpu] for h in hogs)
    assert psutil.Process(busy.pid).cpu_affinity() == before
    assert not any(h.is_running() and h.status() != psutil.STATUS_ZOMBIE for h in hogs)
    assert faults.active_faults() == []

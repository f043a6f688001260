"""The soak run's parts that need no server: its fault schedule, memory trends, error attribution, windows, checks,
and the Prometheus text parser it cross-checks the endpoint's counters with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from parm.errors import FaultError
from parm.loadtest.openloop import RequestRecord, RunResult
from parm.loadtest.prometheus import metric_sum, parse_samples
from parm.loadtest.report import cell_stats
from parm.loadtest.scenarios import FaultKind, FaultLogEntry, soak_scenario
from parm.loadtest.soak import (
    MemorySample,
    SoakConfig,
    fault_windows,
    memory_trends,
    orchestrator_crashes,
    soak_checks,
    unexplained_errors,
    window_stats,
    wrong_originals,
)

TARGETS = {"deep": 2, "deep_parity": 1}


def test_soak_schedule_restarts_every_kill_and_never_overlaps_faults() -> None:
    scenario = soak_scenario(600.0, 40.0, TARGETS, kill_every_s=60.0, restart_after_s=5.0, seed=3)
    kills = [e for e in scenario.events if e.kind is FaultKind.KILL]
    restarts = [e for e in scenario.events if e.kind is FaultKind.RESTART]
    pauses = [e for e in scenario.events if e.kind is FaultKind.PAUSE]
    assert 7 <= len(kills) == len(restarts) <= 13 and len(pauses) > 100
    assert not scenario.destructive
    for kill, restart in zip(kills, restarts, strict=True):
        assert restart.model == kill.model and restart.at_s == pytest.approx(kill.at_s + 5.0)
        assert not [p for p in pauses if kill.at_s - 0.1 < p.at_s + p.duration_s and p.at_s < restart.at_s + 2.0]
    busy_until = 0.0
    for pause in pauses:  # at most one instance down at a time
        assert pause.at_s >= busy_until and pause.model in TARGETS and 0 <= pause.instance < TARGETS[pause.model]
        busy_until = pause.at_s + pause.duration_s
    assert {(e.model, e.instance) for e in pauses} == {("deep", 0), ("deep", 1), ("deep_parity", 0)}
    assert [e.at_s for e in scenario.events] == sorted(e.at_s for e in scenario.events)
    assert scenario == soak_scenario(600.0, 40.0, TARGETS, kill_every_s=60.0, restart_after_s=5.0, seed=3)


def test_soak_schedule_refuses_impossible_settings() -> None:
    with pytest.raises(FaultError, match="restart_after_s"):
        soak_scenario(60.0, 10.0, TARGETS, kill_every_s=5.0, restart_after_s=5.0)
    with pytest.raises(FaultError, match="at least one"):
        soak_scenario(60.0, 10.0, {"deep": 0})


def _samples(pid: int, name: str, rss: np.ndarray, start: float = 1000.0) -> list[MemorySample]:
    return [MemorySample(start + i, name, pid, float(v)) for i, v in enumerate(rss)]


def test_memory_trends_tell_a_leak_from_a_plateau() -> None:
    t = np.arange(600)
    plateau = 40 + 5 * (1 - np.exp(-t / 30.0))  # grows at first, then settles
    leak = 40 + 0.05 * t  # 3 MB per minute, forever
    trends = {
        m.process: m for m in memory_trends(_samples(1, "flat", plateau) + _samples(2, "leaky", leak), 1000.0, 1600.0)
    }
    assert abs(trends["flat"].second_half_growth_mb) < 0.1 and abs(trends["flat"].slope_mb_per_min) < 0.1
    assert trends["leaky"].second_half_growth_mb == pytest.approx(0.05 * 270, rel=0.05)
    assert trends["leaky"].slope_mb_per_min == pytest.approx(3.0, rel=0.01)
    assert trends["flat"].first_mb < trends["flat"].last_mb == pytest.approx(45.0, abs=0.01)


def test_a_restarted_process_gets_its_own_trend() -> None:
    samples = _samples(1, "deep_0_0", np.full(300, 90.0)) + _samples(2, "deep_0_0", np.full(300, 80.0), 1300.0)
    trends = memory_trends(samples, 1000.0, 1600.0)
    assert [(m.process, m.pid) for m in trends] == [("deep_0_0", 1), ("deep_0_0", 2)]
    assert np.isnan(trends[0].last_mb) and trends[1].last_mb == 80.0


def _record(index: int, scheduled: float, latency: float, ok: bool = True, **kw: object) -> RequestRecord:
    return RequestRecord(index, index % 4, scheduled, scheduled, latency, ok, copies=1, answers=1, **kw)


def _run(records: list[RequestRecord], started: float = 1000.0) -> RunResult:
    return RunResult("deep_coded", 10.0, 20.0, started, records, wall_s=20.0)


def test_errors_are_attributed_to_faults_in_flight() -> None:
    log = [
        FaultLogEntry("pause", "deep_0_0", 7, 1.0, 0.5, applied_at=1002.0, undone_at=1002.5, model="deep"),
        FaultLogEntry("kill", "deep_0_1", 8, 5.0, None, applied_at=1010.0, model="deep"),
        FaultLogEntry("restart", "deep", None, 9.0, None, applied_at=1014.0, undone_at=1015.0, model="deep"),
        FaultLogEntry("pause", "deep_parity_0_0", None, 9.0, 0.5, error="no instance", model="deep_parity"),
    ]
    windows = fault_windows(log, slack_s=1.0)
    assert windows == [(1002.0, 1003.5, "pause deep_0_0"), (1010.0, 1016.0, "kill deep_0_1")]
    records = [
        _record(0, 1.9, 1.0, ok=False, error="deadline"),  # in flight during the pause
        _record(1, 3.6, 0.1, ok=False, error="deadline"),  # after the pause's slack: unexplained
        _record(2, 15.5, 0.2, ok=False, error="stub not healthy"),  # before the restart's end + slack
        _record(3, 17.0, 0.01),
    ]
    unexplained = unexplained_errors(_run(records), windows)
    assert [e["index"] for e in unexplained] == [1]


def test_windows_and_wrong_answers() -> None:
    records = [_record(i, i * 0.5, 0.01 * (1 + i % 3), prediction=i % 4) for i in range(40)]
    records[5] = _record(5, 2.5, 0.2, ok=False, error="x")
    records[6] = _record(6, 3.0, 0.02, rebuilt=True, prediction=9)  # rebuilt answers may differ from F
    records[30] = _record(30, 15.0, 0.01, prediction=3)  # F's answer for query 2 is 2: a mixed-up answer
    predictions = np.arange(4)
    assert wrong_originals(_run(records), predictions) == 1
    windows = window_stats(_run(records), 10.0)
    assert [w.count for w in windows] == [20, 20] and windows[0].errors == 1 and windows[0].rebuilt == 1
    assert windows[1].max_ms == pytest.approx(30.0)


def test_soak_checks_fail_on_a_lost_request_and_on_a_miscount() -> None:
    records = [_record(i, i * 0.1, 0.01, prediction=i % 4) for i in range(10)]
    config = SoakConfig(out_dir="unused")
    stats = cell_stats(_run(records), scenario="soak", scheme="parm-k2", instances=3, server_requests=10)
    children = {"first": 9, "last": 9, "max": 10}
    good = soak_checks(config, stats, {"requests": 10, "answers": 10}, 0, [], [], "deep_coded", children)
    assert [c.name for c in good if not c.passed] == ["orchestrator memory bounded"]  # no memory samples at all
    crashed = soak_checks(
        config, stats, {"requests": 10, "answers": 10}, 0, [], [], "deep_coded", children, ["Exception in callback"]
    )
    assert "no orchestrator crash logged" in {c.name for c in crashed if not c.passed}
    records[3].answers = 0
    records[3].ok = False
    stats = cell_stats(_run(records), scenario="soak", scheme="parm-k2", instances=3, server_requests=11)
    leftover = {"first": 9, "last": 10, "max": 10}
    bad = {
        c.name for c in soak_checks(config, stats, {"requests": 10, "answers": 9}, 0, [], [], "deep_coded", leftover)
    }
    assert {
        "every request answered once",
        "server counted each request once",
        "endpoint counters agree",
        "restarts leave no process behind",
    } <= bad


def test_orchestrator_crashes_are_found_in_the_server_log(tmp_path: Path) -> None:
    log = tmp_path / "tritonserver.log"
    log.write_text(
        "I1129 model loaded\n"
        "E1129 deep_coded_0_0: orchestrator task crashed\n"
        "Exception in callback CodedDispatcher._close(<CodingGroup>)\n"
        "W1129 parity path failed, no parity for 5.0 s\n"
    )
    assert orchestrator_crashes(log) == [
        "E1129 deep_coded_0_0: orchestrator task crashed",
        "Exception in callback CodedDispatcher._close(<CodingGroup>)",
    ]
    assert orchestrator_crashes(tmp_path / "missing.log") == [] and orchestrator_crashes(None) == []


def test_prometheus_text_is_parsed_and_summed_by_labels() -> None:
    text = """# HELP parm_answers_total Answers
# TYPE parm_answers_total counter
parm_answers_total{model="deep_coded",source="original"} 90
parm_answers_total{model="deep_coded",source="rebuilt"} 7
parm_answers_total{model="other",source="original"} 5
nv_inference_count{model="deep",version="1"} 1.5e+03
not a sample line
"""
    samples = parse_samples(text)
    assert metric_sum(samples, "parm_answers_total", model="deep_coded") == 97
    assert metric_sum(samples, "parm_answers_total", source="original") == 95
    assert metric_sum(samples, "nv_inference_count") == 1500
    assert metric_sum(samples, "missing") == 0

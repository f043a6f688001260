"""A short smoke run of ``parm bench`` on the real server: the machinery, not the performance.

A tiny F (quick training), a tiny rate and ~1.5 s cells: every scheme meets every fault kind; the test checks that
the files are written, that the counts are consistent (every scheduled request sent and answered once, the server's
count equal to the copies sent) and that every fault was undone.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import psutil
import pytest

from parm.loadtest import faults
from parm.loadtest.bench import run_bench
from parm.loadtest.configs import BenchConfig
from parm.loadtest.openloop import poisson_arrivals

from .conftest import BENCH_SPEC

pytestmark = pytest.mark.integration

SCHEMES = ("none", "equal", "hedged", "parm", "parm-eager", "parm-hedged", "relay")
SCENARIOS = ("no-fault", "pause")
SWEEP_SCENARIOS = ("starve", "kill")


def test_bench_smoke_run_writes_consistent_reports_and_undoes_every_fault(bench_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    config = BenchConfig(
        out_dir=out,
        models_dir=bench_models,
        model_spec=BENCH_SPEC,
        rate=20.0,
        duration_s=1.2,
        warmup_s=0.2,
        rounds=2,
        schemes=SCHEMES,
        scenarios=SCENARIOS,
        sweep_rates=(10.0,),
        sweep_schemes=("equal", "parm"),
        sweep_scenarios=SWEEP_SCENARIOS,
        hit_fraction=0.3,
        pause_min_s=0.1,
        pause_max_s=0.2,
        starve_window_s=0.4,
        starve_every_s=0.8,
        timeout_s=5.0,
        profile_s=1.0,
    )
    outcome = run_bench(config)

    for name in ("summary.json", "summary.md", "requests.csv", "faults.jsonl", "cdf.png", "cdf_rate10.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    cells = summary["cells"]
    schemes = {"none", "equal", "hedged", "parm-k2", "parm-eager", "parm-hedged", "relay"}
    expected = {(20.0, scenario, scheme) for scenario in SCENARIOS for scheme in schemes}
    expected |= {(10.0, scenario, scheme) for scenario in SWEEP_SCENARIOS for scheme in ("equal", "parm-k2")}
    assert {(c["rate"], c["scenario"], c["scheme"]) for c in cells} == expected
    assert len(outcome.cells) == len(expected)

    with open(out / "requests.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = [(r["rate"], r["scenario"], r["scheme"], r["index"]) for r in rows]
    assert len(keys) == len(set(keys)), "a request appears twice"
    assert len(rows) == sum(c["count"] for c in cells)

    for c in cells:
        where = f"{c['rate']}/{c['scenario']}/{c['scheme']}"
        scheduled = poisson_arrivals(c["rate"], config.duration_s, config.seed + int(c["rate"] * 1000))
        assert c["count"] == len(scheduled) > 0, where
        assert c["ok"] + c["errors"] == c["count"], where
        assert c["lost"] == 0 and c["duplicated"] == 0, where
        assert c["copies"] == c["answers"], where
        assert c["server_requests"] == c["copies"], where
        assert c["faults_undone"], where
        assert sum(c["error_kinds"].values()) == c["errors"], where
        if c["scenario"] != "no-fault":
            assert c["faults"] >= 1 and c["fault_errors"] == 0, where
        if c["scheme"] == "hedged":
            assert c["copies"] >= c["count"] and c["hedge_delay_ms"] > 0, where
        else:
            assert c["copies"] == c["count"], where
        if c["scenario"] != "kill":
            assert c["errors"] == 0, (where, c["error_kinds"])

    faults_logged = [json.loads(line) for line in (out / "faults.jsonl").read_text().splitlines()]
    kinds = {f["kind"] for f in faults_logged}
    assert {"pause", "kill"} <= kinds and kinds & {"cpu-quota", "cpu-hog"}
    for f in faults_logged:
        assert f["error"] is None and f["applied_at"] is not None
        if f["kind"] != "kill":
            assert f["undone_at"] is not None and f["undone_at"] >= f["applied_at"]
    assert faults.active_faults() == []
    for child in psutil.Process().children(recursive=True):
        assert child.status() != psutil.STATUS_STOPPED
    targets = {t["name"]: t for t in summary["targets"] if t["scheme"] in ("parm-k2", "")}
    relay = targets["orchestrator p50 over the relay, no fault"]
    assert {t["scheme"] for t in summary["targets"]} >= {"parm-k2", "parm-eager", "parm-hedged"}, "one set per scheme"
    assert relay["low"] <= relay["value"] <= relay["high"] and relay["rounds"], relay
    assert "generator lag (max ms) in cells below 70% CPU" in targets, targets
    assert any(c["parities"] for c in cells if c["scheme"].startswith("parm")), "coded cells count their parities"
    rebuilding = [c for c in cells if c["scheme"].startswith("parm") and c["rebuilt"]]
    assert rebuilding, "a coded cell rebuilt answers"
    for c in rebuilding:  # the endpoint timed each phase of its rebuilt answers
        phases = c["rebuild_phases_ms"]
        assert phases["rebuilds"] >= 1 and all(phases[p] >= 0 for p in ("wait", "parity", "complete")), c
    assert "## Where a rebuilt answer's time went" in (out / "summary.md").read_text()
    profile = summary["profile"]  # an extra unmeasured run: no measured cell is slowed by the profiler
    assert profile is not None and ("summary" in profile or "error" in profile), profile
    if "summary" in profile:
        assert 0 <= profile["summary"]["busy"] <= 2 and "--gil" in profile["command"]
    assert "| rate/s |" in (out / "summary.md").read_text()

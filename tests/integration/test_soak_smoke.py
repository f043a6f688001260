"""A short smoke run of ``parm soak`` on the real server: seconds of load with pauses, two kills and their
restarts; every check of the soak must pass and the files must agree with each other."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import psutil
import pytest

from parm.loadtest import faults
from parm.loadtest.configs import SoakConfig
from parm.loadtest.soak import run_soak

from .conftest import BENCH_SPEC

pytestmark = pytest.mark.integration


def test_soak_smoke_run_answers_everything_through_pauses_kills_and_restarts(
    bench_models: Path, tmp_path: Path
) -> None:
    out = tmp_path / "soak"
    config = SoakConfig(
        out_dir=out,
        models_dir=bench_models,
        model_spec=BENCH_SPEC,
        rate=25.0,
        duration_s=12.0,
        warmup_s=0.5,
        hit_fraction=0.15,
        pause_min_s=0.1,
        pause_max_s=0.3,
        kill_every_s=4.0,
        restart_after_s=1.0,
        reap_after_s=0.5,
        sample_every_s=0.25,
        window_s=5.0,
        timeout_s=10.0,
        seed=1,
    )
    outcome = run_soak(config)

    failed = [(c.name, c.detail) for c in outcome.checks if not c.passed]
    assert not failed, failed
    for name in ("soak.json", "soak.md", "soak.png", "requests.csv", "faults.jsonl", "memory.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "soak.json").read_text())
    assert summary["passed"] and summary["stats"]["count"] == outcome.stats.count > 150
    with open(out / "requests.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len({r["index"] for r in rows}) == outcome.stats.count
    assert sum(w.count for w in outcome.windows) == outcome.stats.count

    logged = [json.loads(line) for line in (out / "faults.jsonl").read_text().splitlines()]
    kills = [f for f in logged if f["kind"] == "kill"]
    restarts = [f for f in logged if f["kind"] == "restart"]
    assert len(kills) == len(restarts) >= 1 and any(f["kind"] == "pause" for f in logged)
    assert all(f["error"] is None and f["applied_at"] is not None for f in logged)
    assert all(r["undone_at"] >= r["applied_at"] for r in restarts)

    with open(out / "memory.csv", newline="") as f:
        memory = list(csv.DictReader(f))
    processes = {row["process"] for row in memory}
    assert {"tritonserver", "deep_coded_0_0"} <= processes
    killed = {k["instance"]: k["pid"] for k in kills}
    for instance, pid in killed.items():  # the restarted instance is sampled under its new pid
        assert {int(r["pid"]) for r in memory if r["process"] == instance} - {pid}
    assert faults.active_faults() == []
    for child in psutil.Process().children(recursive=True):
        assert child.status() != psutil.STATUS_STOPPED

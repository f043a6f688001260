"""Short smoke runs of ``parm cluster bench`` and ``parm cluster soak`` on a real local cluster (the committed
digits repository): the machinery runs end to end, faults and all, and its checks pass. The measurements themselves
come from full runs (README), not from here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parm.loadtest.clusterbench import SCHEMES, ClusterBenchConfig, run_cluster_bench
from parm.loadtest.clustersoak import ClusterSoakConfig, run_cluster_soak

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


def test_the_cluster_bench_measures_every_scheme_with_and_without_faults(tmp_path: Path) -> None:
    config = ClusterBenchConfig(
        out=tmp_path, repository=REPOSITORY, rate=20.0, duration_s=4.0, rounds=1, warmup_s=0.5, pause_s=(0.5, 1.0)
    )
    report = run_cluster_bench(config)
    summary = json.loads((tmp_path / "summary.json").read_text())
    cells = {(cell["scenario"], cell["scheme"]): cell for cell in summary["cells"]}
    assert set(cells) == {(scenario, scheme) for scenario in ("no-fault", "faults") for scheme in SCHEMES}
    for (scenario, _), cell in cells.items():
        assert cell["lost"] == 0 and cell["duplicated"] == 0
        if scenario == "no-fault":
            assert cell["errors"] == 0, cell
    assert all(cells[("faults", scheme)]["faults"] >= 1 for scheme in SCHEMES), "every scheme saw the faults"
    assert all(cell["faults_undone"] for cell in cells.values())
    assert "tail gap cut" in report.read_text()


def test_the_cluster_soak_passes_its_checks_under_stalls_kills_and_throttling(tmp_path: Path) -> None:
    config = ClusterSoakConfig(
        out=tmp_path, repository=REPOSITORY, rate=40.0, duration_s=20.0, gap_s=(1.0, 2.0), pause_max_s=2.0,
        restart_after_s=1.0, kill_share=0.3, seed=3,
    )  # fmt: skip
    summary = run_cluster_soak(config)
    assert summary["faults"], "faults were injected"
    assert summary["passed"], summary["checks"]

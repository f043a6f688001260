"""Short smoke runs of ``parm cluster bench``, ``parm cluster crossover`` and ``parm cluster soak`` on a real local
cluster (the committed digits repository): the machinery runs end to end, faults and all, and its checks pass. The
measurements themselves come from full runs (README), not from here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from parm.loadtest import crossover
from parm.loadtest.clusterbench import SCHEMES, ClusterBenchConfig, run_cluster_bench
from parm.loadtest.clustersoak import ClusterSoakConfig, run_cluster_soak
from parm.loadtest.configs import ClusterCrossoverConfig

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


def test_the_crossover_measures_every_scheme_at_every_grid_point_under_faults(tmp_path: Path) -> None:
    config = ClusterCrossoverConfig(
        out=tmp_path, repository=REPOSITORY, rates=(10.0, 30.0), faulty_shares=(0.3,), duration_s=4.0, rounds=1,
        warmup_s=0.5, pause_s=(0.5, 1.0),
    )  # fmt: skip
    paths = crossover.run_crossover(config)
    summary = json.loads(paths["json"].read_text())
    cells = {(cell["rate"], cell["faulty_share"], cell["scheme"]): cell for cell in summary["cells"]}
    assert set(cells) == {(rate, 0.3, scheme) for rate in config.rates for scheme in crossover.SCHEMES}
    for cell in cells.values():
        assert cell["requests"] > 0 and cell["detail"]["lost"] == 0 and cell["detail"]["duplicated"] == 0
        assert cell["detail"]["faults"] >= 1 and cell["detail"]["faults_undone"], cell
        assert len(cell["rounds"]) == 1
    assert set(summary["hedge_delay_ms"]) == {"10", "30"} and len(summary["winners"]) == 2
    assert "faulty 30% of the time" in paths["md"].read_text()
    with Image.open(paths["png"]) as image:
        assert image.width > 0 and image.height > 0


def test_the_cluster_soak_passes_its_checks_under_stalls_kills_and_throttling(tmp_path: Path) -> None:
    config = ClusterSoakConfig(
        out=tmp_path, repository=REPOSITORY, rate=40.0, duration_s=20.0, gap_s=(1.0, 2.0), pause_max_s=2.0,
        restart_after_s=1.0, kill_share=0.3, seed=3,
    )  # fmt: skip
    summary = run_cluster_soak(config)
    assert summary["faults"], "faults were injected"
    assert summary["passed"], summary["checks"]

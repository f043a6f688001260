"""The crossover sweep's parts that need no server: the winner decision, the run order, the grid, the plot, and the
three output files from synthetic cells."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parm.cli import build_parser
from parm.errors import ConfigError
from parm.loadtest.cli import from_options
from parm.loadtest.configs import ClusterCrossoverConfig
from parm.loadtest.crossover import (
    COLOURS,
    SCHEMES,
    Measured,
    draw_crossover,
    grid_cells,
    interleaved,
    winner,
    write_outputs,
)
from parm.loadtest.openloop import RequestRecord, RunResult
from parm.loadtest.report import cell_stats


def _latencies(scale_ms: float, n: int = 3000, seed: int = 0) -> np.ndarray:
    return scale_ms * np.random.default_rng(seed).lognormal(0.0, 0.5, size=n)


def test_the_lower_tail_wins_only_when_the_ratios_interval_excludes_one() -> None:
    fast, slow = _latencies(10.0, seed=1), _latencies(30.0, seed=2)
    coded_wins = winner(fast, slow)
    assert coded_wins.winner == "parm-k2" and coded_wins.ratio.high < 1
    assert winner(slow, fast).winner == "hedged"
    same = winner(_latencies(10.0, seed=3), _latencies(10.0, seed=4))
    assert same.winner == "tie" and same.ratio.low <= 1 <= same.ratio.high


def test_a_verdict_without_answers_is_a_tie_and_rounds_give_the_ratio_per_round() -> None:
    assert winner(np.zeros(0), _latencies(10.0)).winner == "tie"
    fast, slow = _latencies(10.0, seed=1), _latencies(30.0, seed=2)
    verdict = winner(fast, slow, [(fast[:1500], slow[:1500]), (fast[1500:], slow[1500:])])
    assert len(verdict.rounds) == 2 and all(r < 1 for r in verdict.rounds)


def test_every_round_runs_every_cell_once_in_its_own_seeded_order() -> None:
    cells = [f"cell{i}" for i in range(12)]
    order = interleaved(cells, rounds=3, seed=5)
    assert [round_ for round_, _ in order] == [0] * 12 + [1] * 12 + [2] * 12
    rounds = [[cell for r, cell in order if r == round_] for round_ in range(3)]
    assert all(sorted(mine) == sorted(cells) for mine in rounds)
    assert rounds[0] != rounds[1] and rounds[0] != cells, "shuffled, and not the same way every round"
    assert order == interleaved(cells, rounds=3, seed=5)
    assert order != interleaved(cells, rounds=3, seed=6)


def test_the_grid_has_every_scheme_at_every_rate_and_faulty_share_under_faults() -> None:
    config = ClusterCrossoverConfig()
    cells = grid_cells(config)
    assert len(cells) == len(config.rates) * len(config.faulty_shares) * len(SCHEMES)
    assert {(c.rate, c.faulty_share, c.scheme) for c in cells} == {
        (r, s, scheme) for r in config.rates for s in config.faulty_shares for scheme in SCHEMES
    }
    assert {c.scenario for c in cells} == {"faults"}


def test_the_cli_builds_the_configs_defaults_and_refuses_a_repeated_rate() -> None:
    args = build_parser().parse_args(["cluster", "crossover"])
    assert from_options(ClusterCrossoverConfig, args) == ClusterCrossoverConfig()
    args = build_parser().parse_args(["cluster", "crossover", "--rates", "10,40", "--faulty-shares", "0.2"])
    config = from_options(ClusterCrossoverConfig, args)
    assert (config.rates, config.faulty_shares) == ((10.0, 40.0), (0.2,))
    with pytest.raises(ConfigError, match="rates"):
        ClusterCrossoverConfig(rates=(10.0, 10.0))
    with pytest.raises(ConfigError, match="faulty shares"):
        ClusterCrossoverConfig(faulty_shares=(0.0,))


def _colour_counts(image: Image.Image) -> dict[tuple[int, int, int], int]:
    return {colour: count for count, colour in image.convert("RGB").getcolors(1 << 20)}


def test_the_plot_draws_a_line_per_scheme_and_colours_the_winner_map(tmp_path: Path) -> None:
    shares, rates = (0.05, 0.3), (20.0, 50.0, 100.0)
    p999 = {
        (s, r, scheme): 20.0 * (1 + i) * (r / 20) for s in shares for r in rates for i, scheme in enumerate(SCHEMES)
    }
    p999[(0.3, 100.0, "equal")] = float("nan")  # a cell without answers is left out, not drawn at 0
    winners = {(0.05, 20.0): "hedged", (0.05, 50.0): "tie", (0.3, 100.0): "parm-k2"}
    image = draw_crossover(p999, winners)
    image.save(tmp_path / "crossover.png")
    reopened = Image.open(tmp_path / "crossover.png")
    assert reopened.size == image.size and reopened.width > reopened.height
    counts = _colour_counts(reopened)
    assert all(counts.get(COLOURS[name], 0) > 100 for name in (*SCHEMES, "tie")), "every scheme's line and every winner"


def _run(scheme: str, rate: float, scale_ms: float, seed: int) -> RunResult:
    latencies = _latencies(scale_ms, n=400, seed=seed) / 1000
    records = [
        RequestRecord(i, 0, i / rate, sent=i / rate, latency=float(v), ok=True, copies=1, answers=1)
        for i, v in enumerate(latencies)
    ]
    return RunResult(scheme, rate, len(records) / rate, 0.0, records)


def _measured(share: float, rate: float, scheme: str, scale_ms: float) -> Measured:
    rounds = [_run(scheme, rate, scale_ms, seed) for seed in (1, 2)]
    merged = _run(scheme, rate, scale_ms, 1)
    merged.records = rounds[0].records + rounds[1].records
    stats = cell_stats(merged, scenario="faults", scheme=scheme, instances=4, cpu_s={"servers": 8.0}, rounds=rounds)
    return Measured(share, stats)


def test_the_outputs_hold_every_cell_a_table_per_fault_rate_and_a_plot(tmp_path: Path) -> None:
    config = ClusterCrossoverConfig(out=tmp_path, rates=(20.0, 50.0), faulty_shares=(0.1, 0.3), rounds=2)
    scales = {"equal": 40.0, "hedged": 25.0, "parm-k2": 10.0}
    measured = [_measured(s, r, scheme, scales[scheme]) for s in (0.1, 0.3) for r in (20.0, 50.0) for scheme in SCHEMES]
    paths = write_outputs(config, measured, [], {20.0: 0.012, 50.0: 0.015})
    summary = json.loads(paths["json"].read_text())
    cells = {(c["faulty_share"], c["rate"], c["scheme"]) for c in summary["cells"]}
    assert cells == {(s, r, scheme) for s in (0.1, 0.3) for r in (20.0, 50.0) for scheme in SCHEMES}
    cell = summary["cells"][0]
    assert cell["requests"] == 800 and len(cell["rounds"]) == 2 and cell["server_cpu_ms_per_request"] == 10.0
    assert cell["p99.9"]["low"] <= cell["p99.9"]["value"] <= cell["p99.9"]["high"]
    assert {w["winner"] for w in summary["winners"]} == {"parm-k2"} and len(summary["winners"]) == 4
    assert summary["hedge_delay_ms"] == {"20": 12.0, "50": 15.0} and "rate" not in summary["config"]
    markdown = paths["md"].read_text()
    assert "faulty 10% of the time" in markdown and "faulty 30% of the time" in markdown
    assert markdown.count("| parm-k2 | ok |") == 4
    assert Image.open(paths["png"]).size[0] > 0

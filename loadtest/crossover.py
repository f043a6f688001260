"""Where hedging and coding cross over (``parm cluster crossover``): the tail of client-side hedging against the
gateway's coded endpoint over offered load x fault rate, in one run on one local cluster.

Hedging sends a backup copy of each slow request: cheap while the servers have spare capacity, a load of its own
when they have none. The coded endpoint (``parm-k2``, the gateway's default) hedges a late member on another F worker
only while the workers have spare capacity (``hedge_below_load``) and otherwise rebuilds it from a parity. Which
tail is lower therefore depends on the load and on how often a worker is faulty; this sweep maps it.

The run starts one cluster (``ClusterBench``: its servers, clients, faults, statistics and CPU accounting) and first
runs one fault-free ``equal`` cell per rate, whose p95 is hedging's delay at that rate, as in ``parm cluster
bench``. Then, under the bench's whole-server faults, every (rate, faulty share) grid point measures ``equal`` (no
redundancy, the reference), ``hedged`` and ``parm-k2``, interleaved over rounds: round r runs every cell once, in an
order shuffled by the seed, so a drift of the shared machine falls on every cell alike; at one grid point and round
every scheme gets the same arrivals and the same fault schedule (``ClusterBench.run_cell``'s seed is the round's).

A grid point's winner is the scheme with the lower p99.9 when the 95% bootstrap interval of parm-k2's p99.9 over
hedged's excludes 1, else a tie.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import intervals
from .clusterbench import BenchCell, ClusterBench
from .configs import ClusterCrossoverConfig
from .report import LAG_FLAG_MS, PERCENTILES, CellStats, percentile, write_summary

SCHEMES = ("equal", "hedged", "parm-k2")
CODED, HEDGED = "parm-k2", "hedged"
TIE = "tie"
REPORTED = ("p50", "p99", "p99.9")
COLOURS = {"equal": (150, 150, 150), HEDGED: (230, 130, 30), CODED: (50, 100, 190), TIE: (205, 205, 205)}
T = TypeVar("T")


@dataclass(frozen=True)
class Measured:
    """One grid cell's outcome: a scheme's statistics (every round merged) at a rate and share of faulty time."""

    faulty_share: float
    stats: CellStats

    @property
    def key(self) -> tuple[float, float, str]:
        return self.faulty_share, self.stats.rate, self.stats.scheme

    @cached_property
    def percentiles(self) -> dict[str, intervals.Interval]:
        """p50, p99 and p99.9 with their bootstrap intervals (computed once: the report and the JSON share them)."""
        return {name: quantile_interval(self.stats.latencies_ms, PERCENTILES[name]) for name in REPORTED}


@dataclass(frozen=True)
class Verdict:
    """A grid point's winner, from the interval of parm-k2's p99.9 over hedged's and that ratio in each round."""

    winner: str
    ratio: intervals.Interval
    rounds: tuple[float, ...]


def interleaved(cells: Sequence[T], rounds: int, seed: int) -> list[tuple[int, T]]:
    """(round, cell) in run order: every round runs every cell once, each round in its own order shuffled by
    ``seed``, so neither a scheme nor a grid point always runs first, or after the same neighbour."""
    rng = np.random.default_rng(seed)
    return [(round_, cells[i]) for round_ in range(rounds) for i in rng.permutation(len(cells))]


def grid_cells(config: ClusterCrossoverConfig) -> list[BenchCell]:
    """Every scheme at every (rate, faulty share), under the cluster bench's ``faults`` scenario."""
    return [
        BenchCell(scheme, "faults", rate, share)
        for share in config.faulty_shares
        for rate in config.rates
        for scheme in SCHEMES
    ]


def winner(
    coded_ms: np.ndarray, hedged_ms: np.ndarray, rounds: Sequence[tuple[np.ndarray, np.ndarray]] = ()
) -> Verdict:
    """The scheme whose p99.9 is lower when the bootstrap interval of coded's p99.9 over hedged's excludes 1 (a
    ratio whose interval straddles 1 is no evidence either way: a tie). ``rounds``: per-round latency pairs, for the
    ratio's spread over rounds."""
    p999 = intervals.quantile(99.9)
    ratio = intervals.ratio(p999, p999, coded_ms, hedged_ms)
    per_round = intervals.per_round(p999, p999, [c for c, _ in rounds], [h for _, h in rounds])
    name = CODED if ratio.high < 1 else HEDGED if ratio.low > 1 else TIE
    return Verdict(name, ratio, tuple(per_round))


def quantile_interval(latencies_ms: np.ndarray, q: float) -> intervals.Interval:
    """The ``q``-th percentile of a cell with its bootstrap interval: ``intervals.ratio`` of it over a constant 1
    (the same resampling the ratios get)."""
    return intervals.ratio(intervals.quantile(q), _ones, latencies_ms, np.ones(1))


def _ones(samples: np.ndarray) -> np.ndarray:
    return np.ones(samples.shape[0])


def verdicts(measured: Sequence[Measured]) -> dict[tuple[float, float], Verdict]:
    """(faulty share, rate) -> the winner there, for every grid point where both parm-k2 and hedged were measured."""
    by_key = {m.key: m.stats for m in measured}
    points = [(share, rate) for share, rate, scheme in by_key if scheme == CODED and (share, rate, HEDGED) in by_key]
    out = {}
    for share, rate in points:
        coded, hedged = by_key[(share, rate, CODED)], by_key[(share, rate, HEDGED)]
        pairs = list(zip(coded.round_latencies_ms, hedged.round_latencies_ms, strict=False))
        out[(share, rate)] = winner(coded.latencies_ms, hedged.latencies_ms, pairs)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------


def run_crossover(config: ClusterCrossoverConfig) -> dict[str, Path]:
    """Runs the sweep on one local cluster; writes ``crossover.json``, ``crossover.md`` and ``crossover.png`` under
    ``config.out`` and returns their paths by suffix."""
    config.out.mkdir(parents=True, exist_ok=True)
    bench = ClusterBench(config)
    calibration = [BenchCell("equal", "no-fault", rate, 0.0) for rate in config.rates]
    cells = grid_cells(config)
    bench.run_cells([(0, cell) for cell in calibration] + interleaved(cells, config.rounds, config.seed))
    measured = [Measured(cell.faulty_share, bench.stats(cell)) for cell in cells]
    return write_outputs(config, measured, [bench.stats(cell) for cell in calibration], bench.hedge_delays_s)


def write_outputs(
    config: ClusterCrossoverConfig,
    measured: Sequence[Measured],
    calibration: Sequence[CellStats],
    hedge_delays_s: Mapping[float, float],
) -> dict[str, Path]:
    """The three files of a run, from its measured cells and calibration cells."""
    found = verdicts(measured)
    paths = {suffix: config.out / f"crossover.{suffix}" for suffix in ("json", "md", "png")}
    write_summary(paths["json"], crossover_json(config, measured, calibration, hedge_delays_s, found))
    paths["md"].write_text(crossover_markdown(config, measured, hedge_delays_s, found))
    p999 = {m.key: m.stats.p999 for m in measured}
    draw_crossover(p999, {key: verdict.winner for key, verdict in found.items()}).save(paths["png"])
    return paths


# ---------------------------------------------------------------------------------------------------------------------
# crossover.json
# ---------------------------------------------------------------------------------------------------------------------


def crossover_json(
    config: ClusterCrossoverConfig,
    measured: Sequence[Measured],
    calibration: Sequence[CellStats],
    hedge_delays_s: Mapping[float, float],
    found: Mapping[tuple[float, float], Verdict],
) -> dict[str, Any]:
    unused = ("rate", "faulty_share")  # the grid's rates and shares replace them
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items() if k not in unused},
        "hedge_delay_ms": {f"{rate:g}": round(1000 * delay, 3) for rate, delay in sorted(hedge_delays_s.items())},
        "calibration": [cell.as_json() for cell in calibration],
        "cells": [cell_json(m) for m in measured],
        "winners": [
            {
                "faulty_share": share,
                "rate": rate,
                "winner": verdict.winner,
                "p99.9_ratio_parm_k2_over_hedged": _interval_json(verdict.ratio),
                "ratio_per_round": list(verdict.rounds),
            }
            for (share, rate), verdict in sorted(found.items())
        ],
    }


def _interval_json(interval: intervals.Interval) -> dict[str, float | None]:
    """``value``, ``low``, ``high``; None where unknown (no answers), as JSON has no NaN."""
    return {key: _rounded(value) for key, value in asdict(interval).items()}


def cell_json(measured: Measured) -> dict[str, Any]:
    """A cell's headline numbers with their intervals and per-round values; ``detail``: every statistic."""
    stats = measured.stats
    out: dict[str, Any] = {
        "rate": stats.rate,
        "faulty_share": measured.faulty_share,
        "scheme": stats.scheme,
        "requests": stats.count,
        "errors": stats.errors,
        "server_cpu_ms_per_request": round(stats.server_cpu_ms_per_request, 3),
        "generator_lag_max_ms": round(stats.max_send_lag_ms, 3),
        "generator_lag_share_over_10ms": round(stats.lag_share_over_10ms, 4),
        "lagged": stats.lagged,
    }
    out.update({name: _interval_json(interval) for name, interval in measured.percentiles.items()})
    out["rounds"] = [_round_json(i, latencies) for i, latencies in enumerate(stats.round_latencies_ms)]
    out["detail"] = stats.as_json()
    return out


def _round_json(index: int, latencies_ms: np.ndarray) -> dict[str, Any]:
    percentiles = {name: _rounded(percentile(latencies_ms, PERCENTILES[name])) for name in REPORTED}
    return {"round": index + 1, "answered": len(latencies_ms), **percentiles}


def _rounded(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------------------------------
# crossover.md
# ---------------------------------------------------------------------------------------------------------------------


def crossover_markdown(
    config: ClusterCrossoverConfig,
    measured: Sequence[Measured],
    hedge_delays_s: Mapping[float, float],
    found: Mapping[tuple[float, float], Verdict],
) -> str:
    """One table per fault rate: a row per offered rate, each scheme's p99.9 and p99 with their 95% intervals and
    its server CPU per request, then the ratio parm-k2 / hedged and the winner."""
    delays = ", ".join(f"{1000 * d:.1f} ms at {r:g}/s" for r, d in sorted(hedge_delays_s.items())) or "-"
    lines = [
        "# Hedging vs coding: the crossover over load and fault rate",
        "",
        f"Cluster: {config.workers} F workers, {config.parity_workers} parity workers (serving F too, for equal "
        f"resources) and a gateway; {config.duration_s:g} s x {config.rounds} interleaved rounds per cell. Faults: "
        f"whole F-worker pauses of {config.pause_s[0]:g}-{config.pause_s[1]:g} s and throttling to "
        f"{config.throttle_cpus:g} CPU for {config.throttle_s[0]:g}-{config.throttle_s[1]:g} s, one at a time, the "
        f"same schedule for every scheme of a grid point and round. Hedge delay (equal's fault-free p95): {delays}.",
    ]
    by_key = {m.key: m for m in measured}
    for share in config.faulty_shares:
        lines += ["", f"## One F worker faulty {share:.0%} of the time", "", *_table(config, share, by_key, found)]
    lines += [
        "",
        "p99.9 and p99 in ms with 95% bootstrap intervals (requests resampled within each cell); CPU: server CPU ms "
        "per request (every server and model instance). Winner: the scheme with the lower p99.9 when the interval of "
        "the ratio parm-k2 / hedged excludes 1, else tie. LAGGED names the cells whose load generator fell more than "
        f"{LAG_FLAG_MS:g} ms behind its schedule at least once: their tail may be the generator's.",
    ]
    failed = [m for m in measured if m.stats.errors]
    if failed:
        counts = ", ".join(
            f"{m.stats.rate:g}/s {m.faulty_share:.0%} {m.stats.scheme}: {m.stats.errors}" for m in failed
        )
        lines += [
            "",
            f"Errors (not in the percentiles, which cover answered requests; causes in crossover.json): {counts}.",
        ]
    return "\n".join(lines) + "\n"


def _table(
    config: ClusterCrossoverConfig,
    share: float,
    by_key: Mapping[tuple[float, float, str], Measured],
    found: Mapping[tuple[float, float], Verdict],
) -> list[str]:
    head = " | ".join(f"{s} p99.9 | {s} p99 | {s} CPU" for s in SCHEMES)
    lines = [
        f"| rate/s | {head} | p99.9 parm-k2 / hedged | winner | generator |",
        "|---:|" + "---:|---:|---:|" * len(SCHEMES) + "---:|---|---|",
    ]
    for rate in config.rates:
        cells = [by_key.get((share, rate, scheme)) for scheme in SCHEMES]
        values = " | ".join(_scheme_columns(cell) for cell in cells)
        verdict = found.get((share, rate))
        ratio = "-" if verdict is None else _interval(verdict.ratio, "{:.2f}")
        lagged = [cell.stats.scheme for cell in cells if cell is not None and cell.stats.lagged]
        generator = f"LAGGED: {', '.join(lagged)}" if lagged else "ok"
        lines.append(f"| {rate:g} | {values} | {ratio} | {verdict.winner if verdict else '-'} | {generator} |")
    return lines


def _scheme_columns(cell: Measured | None) -> str:
    if cell is None:
        return "- | - | -"
    p999, p99 = cell.percentiles["p99.9"], cell.percentiles["p99"]
    return f"{_interval(p999)} | {_interval(p99)} | {cell.stats.server_cpu_ms_per_request:.2f}"


def _interval(interval: intervals.Interval, form: str = "{:.1f}") -> str:
    if not math.isfinite(interval.value):
        return "-"
    return f"{form.format(interval.value)} [{form.format(interval.low)}, {form.format(interval.high)}]"


# ---------------------------------------------------------------------------------------------------------------------
# crossover.png
# ---------------------------------------------------------------------------------------------------------------------

PANEL_W, PANEL_H, LEFT, TOP, GAP = 300, 260, 64, 70, 36
MAP_W, MAP_H = 44, 30
"""A winner map square."""
GRID, FINE_GRID = (190, 190, 190), (228, 228, 228)


class _Canvas:
    """A Pillow drawing with one font and text placed by anchor (two letters, as Pillow's: l/m/r then t/m/b),
    computed from the text's box so that Pillow's bitmap font (no anchors of its own before 10.1) places it too."""

    def __init__(self, width: int, height: int) -> None:
        self.image = Image.new("RGB", (width, height), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.font = ImageFont.load_default()

    def text(self, xy: tuple[float, float], text: str, anchor: str = "lt") -> None:
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=self.font)
        dx = {"l": 0.0, "m": 0.5, "r": 1.0}[anchor[0]] * (right - left)
        dy = {"t": 0.0, "m": 0.5, "b": 1.0}[anchor[1]] * (bottom - top)
        self.draw.text((xy[0] - dx - left, xy[1] - dy - top), text, fill="black", font=self.font)


def draw_crossover(
    p999_ms: Mapping[tuple[float, float, str], float], winners: Mapping[tuple[float, float], str]
) -> Image.Image:
    """p99.9 (log scale) against offered rate, one panel per faulty share, one line per scheme; to the right, the
    winner map (offered rate x faulty share, coloured by winner). ``p999_ms``: (faulty share, rate, scheme) -> ms;
    ``winners``: (faulty share, rate) -> scheme or ``tie``. Drawn with Pillow, as ``parm eval``'s chart is."""
    shares = sorted({share for share, _, _ in p999_ms})
    rates = sorted({rate for _, rate, _ in p999_ms})
    y_range = _log_range([v for v in p999_ms.values() if math.isfinite(v) and v > 0])
    map_left = LEFT + len(shares) * (PANEL_W + GAP) + 20
    canvas = _Canvas(map_left + 60 + MAP_W * len(rates) + 30, TOP + max(PANEL_H, MAP_H * len(shares)) + 60)
    canvas.text((10, 8), "p99.9 under whole-server faults against offered load, per share of faulty time")
    _legend(canvas, (10, 28), [*SCHEMES, TIE])
    for i, share in enumerate(shares):
        mine = {(rate, scheme): v for (s, rate, scheme), v in p999_ms.items() if s == share}
        _panel(canvas, (LEFT + i * (PANEL_W + GAP), TOP), f"one F worker faulty {share:.0%} of the time", rates, mine,
               y_range, ticks=i == 0)  # fmt: skip
    _winner_map(canvas, (map_left, TOP), shares, rates, winners)
    return canvas.image


def _log_range(values: Sequence[float]) -> tuple[float, float]:
    """Whole decades around ``values`` (1-1000 ms when there are none)."""
    if not values:
        return 1.0, 1000.0
    low, high = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    return 10.0**low, 10.0 ** max(high, low + 1)


def _legend(canvas: _Canvas, at: tuple[int, int], names: Sequence[str]) -> None:
    x, y = at
    for name in names:
        canvas.draw.rectangle([x, y, x + 14, y + 10], fill=COLOURS[name])
        canvas.text((x + 18, y + 5), name, "lm")
        x += 40 + 7 * len(name)


def _panel(
    canvas: _Canvas,
    origin: tuple[int, int],
    title: str,
    rates: Sequence[float],
    p999_ms: Mapping[tuple[float, str], float],
    y_range: tuple[float, float],
    *,
    ticks: bool,
) -> None:
    """One faulty share: the frame, grid lines at 1, 2 and 5 per decade, one polyline per scheme (a point whose
    p99.9 is unknown is left out)."""
    left, top = origin
    low, high = math.log10(y_range[0]), math.log10(y_range[1])
    span = (rates[-1] - rates[0]) or 1.0

    def x_of(rate: float) -> float:
        return left + PANEL_W / 2 if len(rates) == 1 else left + 16 + (PANEL_W - 32) * (rate - rates[0]) / span

    def y_of(ms: float) -> float:
        return top + PANEL_H * (high - math.log10(ms)) / (high - low)

    draw = canvas.draw
    for decade, factor in ((d, f) for d in range(round(low), round(high) + 1) for f in (1, 2, 5)):
        ms = factor * 10.0**decade
        if ms <= y_range[1]:
            draw.line([(left, y_of(ms)), (left + PANEL_W, y_of(ms))], fill=GRID if factor == 1 else FINE_GRID)
            if ticks:
                canvas.text((left - 6, y_of(ms)), f"{ms:g}", "rm")
    draw.rectangle([left, top, left + PANEL_W, top + PANEL_H], outline="black")
    for rate in rates:
        canvas.text((x_of(rate), top + PANEL_H + 6), f"{rate:g}", "mt")
    canvas.text((left + PANEL_W / 2, top + PANEL_H + 22), "offered load (requests/s)", "mt")
    canvas.text((left + PANEL_W / 2, top - 6), title, "mb")
    if ticks:
        canvas.text((left - 6, top - 6), "p99.9 ms", "rb")
    for scheme in SCHEMES:
        values = [(rate, p999_ms.get((rate, scheme), math.nan)) for rate in rates]
        points = [(x_of(rate), y_of(v)) for rate, v in values if math.isfinite(v) and v > 0]
        if len(points) > 1:
            draw.line(points, fill=COLOURS[scheme], width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=COLOURS[scheme])


def _winner_map(
    canvas: _Canvas,
    origin: tuple[int, int],
    shares: Sequence[float],
    rates: Sequence[float],
    winners: Mapping[tuple[float, float], str],
) -> None:
    """Offered rate across, faulty share down, each square coloured by its winner (white: not measured)."""
    left, top = origin[0] + 40, origin[1] + 16
    canvas.text((origin[0], origin[1] - 6), "winner by p99.9", "lb")
    for j, rate in enumerate(rates):
        canvas.text((left + MAP_W * (j + 0.5), top - 3), f"{rate:g}", "mb")
    for i, share in enumerate(shares):
        y = top + MAP_H * i
        canvas.text((left - 6, y + MAP_H / 2), f"{share:.0%}", "rm")
        for j, rate in enumerate(rates):
            fill = COLOURS.get(winners.get((share, rate), ""), (255, 255, 255))
            x = left + MAP_W * j
            canvas.draw.rectangle([x, y, x + MAP_W - 2, y + MAP_H - 2], fill=fill, outline=(120, 120, 120))
    canvas.text((origin[0], top + MAP_H * len(shares) + 8), "requests/s across,")
    canvas.text((origin[0], top + MAP_H * len(shares) + 22), "faulty share down")

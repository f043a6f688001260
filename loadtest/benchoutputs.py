"""A benchmark run's outputs: requests.csv, faults.jsonl, generator_gc.csv, the plots, summary.md and
summary.json."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .benchrepo import BenchRepository
from .cells import Cell
from .configs import BenchConfig
from .report import CellStats, check_targets, markdown_report, plot_cdfs, plot_sweep, write_requests_csv, write_summary

logger = logging.getLogger(__name__)


@dataclass
class BenchOutcome:
    out_dir: Path
    cells: list[CellStats]
    checks: list[Any]
    markdown: str
    files: dict[str, Path]


def write_outputs(
    config: BenchConfig,
    repo: BenchRepository,
    cells: list[Cell],
    wall_s: float,
    hedge_delay_s: dict[float, float],
    notes: list[str],
    profile: dict[str, Any] | None,
) -> BenchOutcome:
    out = Path(config.out_dir)
    measured = [c for c in cells if c.stats is not None and not c.calibration]
    stats = [c.stats for c in measured if c.stats is not None]
    checks = check_targets(stats)
    errors: Counter[str] = Counter()
    for s in stats:
        for message, n in s.error_kinds.items():
            errors[f"{s.rate:g}/{s.scenario}/{s.scheme}: {message}"] += n
    files: dict[str, Path] = {}
    files["requests"] = out / "requests.csv"
    write_requests_csv(
        files["requests"],
        ((c.rate, c.scenario.name, c.scheme.name, c.result) for c in measured if c.result is not None),
    )
    files["faults"] = out / "faults.jsonl"
    with open(files["faults"], "w") as f:
        for c in measured:
            for entry, offset in zip(c.fault_log, c.fault_offsets, strict=True):
                record = dataclasses.asdict(entry)
                record.update(rate=c.rate, scenario=c.scenario.name, scheme=c.scheme.name)
                record["planned_at_s"] = round(entry.planned_at_s + offset, 4)
                record["duration_s"] = entry.duration_s
                f.write(json.dumps(record) + "\n")
    files["generator_gc"] = out / "generator_gc.csv"
    with open(files["generator_gc"], "w") as f:
        f.write("rate,scenario,scheme,at_s,duration_ms,generation\n")
        for c in measured:
            for pause in c.result.gc_pauses if c.result is not None else ():
                f.write(
                    f"{c.rate:g},{c.scenario.name},{c.scheme.name},{pause.at_s:.4f},"
                    f"{1000 * pause.duration_s:.3f},{pause.generation}\n"
                )
    for rate in sorted({c.rate for c in measured}):
        name = "cdf.png" if rate == config.rate else f"cdf_rate{rate:g}.png"
        chosen = [(c.scenario.name, c.scheme.name, c.result) for c in measured if c.rate == rate and c.result]
        title = (
            f"{repo.manifest.get('f_architecture')} ({repo.f_inference_ms:.1f} ms/query), {rate:g} requests/s "
            f"(Poisson, open loop), {measured[0].duration_s:g} s per cell"
        )
        files[name] = plot_cdfs(out / name, chosen, title)
    sweep = plot_sweep(out / "sweep.png", stats)
    if sweep is not None:
        files["sweep.png"] = sweep
    rate0 = config.rate
    header = [
        f"F: {repo.manifest.get('f_architecture')}, {repo.f_inference_ms:.2f} ms per query (onnxruntime, 1 thread); "
        f"ParM parity models: same architecture; instances: F {repo.f_instances}, parity {repo.parity_instances}, "
        f"equal resources {repo.total_instances}.",
        f"Machine: {os.cpu_count()} CPUs shared by the server, every instance and the load generator. "
        f"Open-loop Poisson load, {config.duration_s:g} s per cell after {config.warmup_s:g} s of warm-up; "
        f"hedging delay (ms) per rate: "
        + (", ".join(f"{r:g}/s: {1000 * d:.1f}" for r, d in sorted(hedge_delay_s.items())) or "-")
        + (f" (fixed {config.hedge_delay_ms:g})" if config.hedge_delay_ms is not None else " (equal's fault-free p95)"),
        "Scenarios at the main rate: "
        + "; ".join(sorted({f"{c.scenario.name}: {c.scenario.description}" for c in measured if c.rate == rate0})),
        f"Wall time {wall_s / 60:.1f} min.",
    ]  # fmt: skip
    markdown = markdown_report(stats, checks, header, dict(errors.most_common(30)))
    if profile and "summary" in profile:
        summary = profile["summary"]
        markdown += (
            "\n## Where the coded endpoint's Python time goes (py-spy --gil, unmeasured run at the main rate)\n\n"
            f"Some thread of the orchestrator held the GIL {100 * (summary.get('busy') or 0):.1f}% of the wall time "
            f"({summary['samples']} samples); shares below are of those samples.\n\n"
        )
        markdown += "| share | function (inclusive) |\n|---:|---|\n"
        markdown += "\n".join(
            f"| {100 * v:.1f}% | `{k}` |" for k, v in list(profile["summary"]["inclusive"].items())[:15]
        )
        markdown += "\n"
    files["summary.md"] = out / "summary.md"
    files["summary.md"].write_text(markdown)
    files["summary.json"] = out / "summary.json"
    write_summary(
        files["summary.json"],
        {
            "config": config.as_json(),
            "f": {
                "architecture": repo.manifest.get("f_architecture"),
                "inference_ms": repo.f_inference_ms,
                "parameters": repo.manifest.get("f_parameters"),
                "accuracy": repo.manifest.get("accuracy"),
                "instances": {"f": repo.f_instances, "parity": repo.parity_instances},
            },
            "machine": {"cpus": os.cpu_count(), "loadavg_at_end": list(os.getloadavg())},
            "hedge_delay_ms": {f"{r:g}": round(1000 * d, 3) for r, d in hedge_delay_s.items()},
            "scenarios": {f"{c.rate:g}/{c.scenario.name}": c.scenario.as_json() for c in measured},
            "cells": [s.as_json() for s in stats],
            "targets": [c.as_json() for c in checks],
            "notes": notes,
            "profile": None
            if profile is None
            else {k: (str(v) if isinstance(v, Path) else v) for k, v in profile.items()},
            "wall_s": round(wall_s, 1),
        },
    )
    logger.info("benchmark written to %s", out)
    return BenchOutcome(out, stats, checks, markdown, files)

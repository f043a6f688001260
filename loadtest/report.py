"""Benchmark reports: per-cell latency statistics, the checks on them, ``summary.json``, a Markdown table, plots.

A *cell* is one (offered rate, scenario, scheme) run. Its statistics cover every scheduled request: latency
percentiles over the answered ones, and errors counted and grouped by message. The consistency checks hold for every
cell: each scheduled request was sent and got exactly one outcome (``lost`` counts requests with none), and each copy
sent got exactly one answer (``duplicated`` counts answers beyond that; the server-side count of answers, where
known, must match the copies sent).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .openloop import RunResult

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


@dataclass
class CellStats:
    """One cell's numbers; latencies in milliseconds."""

    rate: float
    scenario: str
    scheme: str
    model: str
    instances: int
    offered_rate: float
    count: int
    ok: int
    errors: int
    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    mean: float
    rebuilt: int
    rebuilt_fraction: float
    rebuilt_agree_with_f: float | None
    """Of rebuilt answers, the fraction whose predicted class equals F's own (None when nothing was rebuilt)."""
    copies: int
    backups: int
    backup_won: int
    answers: int
    lost: int
    duplicated: int
    server_requests: int | None
    slow: int
    """Answered requests slower than ``slow_ms``."""
    slow_ms: float
    max_send_lag_ms: float
    achieved_rate: float
    hedge_delay_ms: float | None
    faults: int
    fault_errors: int
    faults_undone: bool
    error_kinds: dict[str, int] = field(default_factory=dict)
    other_load_cpus: float | None = None
    """CPUs kept busy on average by processes other than the server, its instances and the load generator
    (other work on a shared machine) during the cell."""
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    """CPU milliseconds per request by component (tritonserver, each model's instances, the load generator)."""

    @property
    def gap(self) -> float:
        """p99.9 - p50, ParM's measure of the tail."""
        return self.p999 - self.p50

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["p99.9"] = out.pop("p999")
        out["gap_p999_p50"] = self.gap
        return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in out.items()}


def percentile(values: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (numpy's default linear interpolation); NaN for no values."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


def cell_stats(
    result: RunResult,
    *,
    scenario: str,
    scheme: str,
    instances: int,
    f_predictions: np.ndarray | None = None,
    server_requests: int | None = None,
    fault_log: Sequence[Any] = (),
    faults_undone: bool = True,
    slow_ms: float = 50.0,
    cpu_s: dict[str, float] | None = None,
    cpu_wall_s: float = 0.0,
) -> CellStats:
    records = result.records
    latencies = 1000 * np.array([r.latency for r in records if r.ok])
    rebuilt = [r for r in records if r.ok and r.rebuilt]
    agree = None
    if rebuilt and f_predictions is not None:
        agree = float(np.mean([r.prediction == f_predictions[r.query] for r in rebuilt]))
    copies = sum(r.copies for r in records)
    answers = sum(r.answers for r in records)
    errors = [r for r in records if not r.ok]
    kinds = Counter(_error_kind(r.error or "no answer") for r in errors)
    first = min((r.sent for r in records), default=0.0)
    last = max((r.sent for r in records), default=0.0)
    return CellStats(
        rate=result.rate,
        scenario=scenario,
        scheme=scheme,
        model=result.model,
        instances=instances,
        offered_rate=len(records) / result.duration_s,
        count=len(records),
        ok=len(latencies),
        errors=len(errors),
        p50=percentile(latencies, 50),
        p90=percentile(latencies, 90),
        p99=percentile(latencies, 99),
        p999=percentile(latencies, 99.9),
        max=float(latencies.max()) if len(latencies) else float("nan"),
        mean=float(latencies.mean()) if len(latencies) else float("nan"),
        rebuilt=len(rebuilt),
        rebuilt_fraction=len(rebuilt) / max(1, len(latencies)),
        rebuilt_agree_with_f=agree,
        copies=copies,
        backups=sum(r.copies - 1 for r in records),
        backup_won=sum(r.backup_won for r in records),
        answers=answers,
        lost=sum(1 for r in records if _lost(r)),
        duplicated=max(0, answers - copies),
        server_requests=server_requests,
        slow=int((latencies > slow_ms).sum()),
        slow_ms=slow_ms,
        max_send_lag_ms=1000 * result.max_send_lag_s,
        achieved_rate=(len(records) - 1) / (last - first) if last > first else float("nan"),
        hedge_delay_ms=None if result.hedge_delay_s is None else 1000 * result.hedge_delay_s,
        faults=sum(1 for e in fault_log if getattr(e, "applied_at", None) is not None),
        fault_errors=sum(1 for e in fault_log if getattr(e, "error", None)),
        faults_undone=faults_undone,
        error_kinds=dict(kinds.most_common()),
        other_load_cpus=_other_load(cpu_s, cpu_wall_s),
        cpu_ms_per_request={
            key: round(1000 * value / max(1, len(records)), 3)
            for key, value in sorted((cpu_s or {}).items())
            if value > 0 and key != "machine busy"
        },
    )


def _other_load(cpu_s: dict[str, float] | None, wall_s: float) -> float | None:
    if not cpu_s or "machine busy" not in cpu_s or wall_s <= 0:
        return None
    ours = sum(v for k, v in cpu_s.items() if k != "machine busy")
    return round(max(0.0, cpu_s["machine busy"] - ours) / wall_s, 3)


def _lost(record: Any) -> bool:
    """No response at all came back for this request: never sent, or every copy timed out or went unanswered."""
    if record.ok:
        return False
    return (
        record.copies == 0
        or record.answers == 0
        or any(marker in (record.error or "") for marker in ("unfinished", "client timeout", "Deadline Exceeded"))
    )


def _error_kind(message: str) -> str:
    """An error message without the parts that differ per request (ids, numbers), to group errors by cause."""
    words = []
    for word in message.split():
        words.append("#" if any(c.isdigit() for c in word) and not word.isalpha() else word)
    return " ".join(words)[:200]


# ---------------------------------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetCheck:
    rate: float
    name: str
    value: float
    target: str
    met: bool | None
    """None for a reference measurement that has no target of its own."""
    detail: str

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["value"] = round(self.value, 4) if math.isfinite(self.value) else None
        return out


def _find(cells: Iterable[CellStats], rate: float, scenario: str, scheme: str) -> CellStats | None:
    return next((c for c in cells if c.rate == rate and c.scenario == scenario and c.scheme == scheme), None)


def check_targets(cells: Sequence[CellStats], parm: str = "parm-k2", equal: str = "equal") -> list[TargetCheck]:
    """The issue's targets, per offered rate where the needed cells exist."""
    checks = []
    for rate in sorted({c.rate for c in cells}):
        pause_p, pause_e = _find(cells, rate, "pause", parm), _find(cells, rate, "pause", equal)
        free_p, free_e = _find(cells, rate, "no-fault", parm), _find(cells, rate, "no-fault", equal)
        free_none = _find(cells, rate, "no-fault", "none")
        free_relay = _find(cells, rate, "no-fault", "relay")
        if pause_p and pause_e:
            ratio = pause_e.gap / pause_p.gap if pause_p.gap > 0 else float("inf")
            checks.append(
                TargetCheck(
                    rate,
                    "tail gap cut under pauses",
                    ratio,
                    ">= 5x (aim 10x)",
                    ratio >= 5,
                    f"{equal} gap {pause_e.gap:.1f} ms / {parm} gap {pause_p.gap:.1f} ms",
                )
            )
            p50_ratio = pause_p.p50 / pause_e.p50
            checks.append(
                TargetCheck(
                    rate,
                    "p50 vs equal resources under pauses",
                    p50_ratio,
                    "<= 1.10",
                    p50_ratio <= 1.10,
                    f"{parm} p50 {pause_p.p50:.2f} ms, {equal} p50 {pause_e.p50:.2f} ms",
                )
            )
        if pause_p and free_p:
            own = pause_p.p999 / free_p.p999
            checks.append(
                TargetCheck(
                    rate,
                    "p99.9 under pauses vs own fault-free p99.9",
                    own,
                    "<= 1.5",
                    own <= 1.5,
                    f"{parm} p99.9 {pause_p.p999:.1f} ms with pauses, {free_p.p999:.1f} ms without",
                )
            )
        if free_p and free_none:
            overhead = free_p.p50 / free_none.p50
            checks.append(
                TargetCheck(
                    rate,
                    "orchestrator p50 overhead over F direct, no fault",
                    overhead,
                    "<= 1.10",
                    overhead <= 1.10,
                    f"{parm} p50 {free_p.p50:.2f} ms, F direct (none) p50 {free_none.p50:.2f} ms",
                )
            )
        if free_relay and free_none:
            checks.append(
                TargetCheck(
                    rate,
                    "Python-backend floor: relay p50 over F direct, no fault",
                    free_relay.p50 / free_none.p50,
                    "reference",
                    None,
                    f"relay p50 {free_relay.p50:.2f} ms (a BLS pass-through to F), F direct p50 {free_none.p50:.2f} ms",
                )
            )
        if free_relay and free_p:
            checks.append(
                TargetCheck(
                    rate,
                    "orchestrator p50 over the floor (relay), no fault",
                    free_p.p50 / free_relay.p50,
                    "reference",
                    None,
                    f"{parm} p50 {free_p.p50:.2f} ms, relay p50 {free_relay.p50:.2f} ms",
                )
            )
        if free_p and free_e:
            p50_ratio = free_p.p50 / free_e.p50
            checks.append(
                TargetCheck(
                    rate,
                    "p50 vs equal resources, no fault",
                    p50_ratio,
                    "<= 1.10",
                    p50_ratio <= 1.10,
                    f"{parm} p50 {free_p.p50:.2f} ms, {equal} p50 {free_e.p50:.2f} ms",
                )
            )
    lost = sum(c.lost for c in cells)
    duplicated = sum(c.duplicated for c in cells)
    mismatched = [c for c in cells if c.server_requests is not None and c.server_requests != c.copies]
    checks.append(
        TargetCheck(
            float("nan"),
            "requests lost or answered twice (all cells)",
            float(lost + duplicated + len(mismatched)),
            "0",
            lost + duplicated + len(mismatched) == 0,
            f"lost {lost}, duplicated {duplicated}, cells whose server-side count differs: "
            f"{[f'{c.rate:g}/{c.scenario}/{c.scheme}' for c in mismatched] or 'none'}",
        )
    )
    return checks


# ---------------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------------


def _met(met: bool | None) -> str:
    return "-" if met is None else "yes" if met else "NO"


def _ms(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def markdown_table(cells: Sequence[CellStats]) -> str:
    header = (
        "| rate/s | scenario | scheme | inst. | count | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | "
        "gap ms | rebuilt | errors | other load |\n"
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for c in cells:
        extra = f" (+{c.backups} backups)" if c.backups else ""
        rows.append(
            f"| {c.offered_rate:.1f} | {c.scenario} | {c.scheme}{extra} | {c.instances} | {c.count} | {_ms(c.p50)} | "
            f"{_ms(c.p90)} | {_ms(c.p99)} | {_ms(c.p999)} | {_ms(c.max)} | {_ms(c.gap)} | "
            f"{100 * c.rebuilt_fraction:.1f}% | {c.errors} | "
            + ("-" if c.other_load_cpus is None else f"{c.other_load_cpus:.2f} CPU")
            + " |"
        )
    return header + "\n".join(rows) + "\n"


def cpu_table(cells: Sequence[CellStats]) -> str:
    """CPU milliseconds per request by process, one row per cell."""
    chosen = [c for c in cells if c.cpu_ms_per_request]
    if not chosen:
        return ""
    columns = sorted({k for c in chosen for k in c.cpu_ms_per_request})
    lines = [
        "| rate/s | scenario | scheme | " + " | ".join(k.removeprefix("model ") for k in columns) + " | server side |",
        "|---:|---|---|" + "---:|" * (len(columns) + 1),
    ]
    for c in chosen:
        cpu = c.cpu_ms_per_request
        server_side = sum(v for k, v in cpu.items() if k != "load generator")
        values = " | ".join(f"{cpu[k]:.2f}" if k in cpu else "" for k in columns)
        lines.append(f"| {c.rate:g} | {c.scenario} | {c.scheme} | {values} | {server_side:.2f} |")
    return "\n".join(lines) + "\n"


def markdown_report(
    cells: Sequence[CellStats], checks: Sequence[TargetCheck], header: Sequence[str], errors: dict[str, int]
) -> str:
    lines = ["# Tail latency under real faults", "", *header, "", markdown_table(cells), "## Targets", ""]
    lines.append("| rate/s | check | value | target | met | detail |")
    lines.append("|---:|---|---:|---|---|---|")
    for check in checks:
        rate = "all" if not math.isfinite(check.rate) else f"{check.rate:g}"
        lines.append(
            f"| {rate} | {check.name} | {check.value:.2f} | {check.target} | {_met(check.met)} | {check.detail} |"
        )
    cpu = cpu_table([c for c in cells if c.scenario == "no-fault"])
    if cpu:
        lines += [
            "",
            "## CPU per request (ms), fault-free cells",
            "",
            "Measured per process from /proc over each cell; 'server side' is tritonserver plus every model instance "
            "(the load generator runs on the same CPUs).",
            "",
            cpu,
        ]
    if errors:
        lines += ["", "## Errors", "", "| count | error |", "|---:|---|"]
        lines += [f"| {n} | {message} |" for message, n in errors.items()]
    return "\n".join(lines) + "\n"


def write_requests_csv(path: Path, rows: Iterable[tuple[float, str, str, RunResult]]) -> None:
    """Every request of every cell, one line each (latencies in ms from the scheduled send time)."""
    with open(path, "w") as f:
        f.write(
            "rate,scenario,scheme,model,index,query,scheduled_s,sent_s,latency_ms,ok,rebuilt,copies,answers,"
            "backup_won,prediction,error\n"
        )
        for rate, scenario, scheme, result in rows:
            for r in result.records:
                error = (r.error or "").replace('"', "'")
                f.write(
                    f"{rate:g},{scenario},{scheme},{result.model},{r.index},{r.query},{r.scheduled:.6f},"
                    f"{r.sent:.6f},{1000 * r.latency:.4f},{int(r.ok)},{int(r.rebuilt)},{r.copies},{r.answers},"
                    f'{int(r.backup_won)},{r.prediction},"{error}"\n'
                )


def write_summary(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------------


def plot_cdfs(path: Path, results: Sequence[tuple[str, str, RunResult]], title: str) -> Path:
    """Latency tails, one panel per scenario, one line per scheme: 1 - CDF on a log axis against latency on a log
    axis, so p90, p99 and p99.9 are the horizontal grid lines at 0.1, 0.01 and 0.001."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    scenarios = list(dict.fromkeys(scenario for scenario, _, _ in results))
    schemes = list(dict.fromkeys(scheme for _, scheme, _ in results))
    colors = {scheme: plt.get_cmap("tab10")(i % 10) for i, scheme in enumerate(schemes)}
    fig, axes = plt.subplots(
        1, len(scenarios), figsize=(5.2 * len(scenarios), 4.8), sharey=True, squeeze=False, layout="constrained"
    )
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        lowest = 1.0
        for sc, scheme, result in results:
            if sc != scenario:
                continue
            # Errors count as infinitely slow: they stay in the tail instead of vanishing from it.
            lat = np.sort(1000 * np.array([r.latency if r.ok else np.inf for r in result.records]))
            if not len(lat):
                continue
            n = len(lat)
            survival = 1.0 - np.arange(n) / n
            finite = np.isfinite(lat)
            ax.step(lat[finite], survival[finite], where="post", color=colors[scheme], label=scheme, lw=1.4)
            lowest = min(lowest, 1.0 / n)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        bottom = max(lowest * 0.8, 1e-5)
        ax.set_ylim(bottom, 1.05)
        for level, label in ((0.5, "p50"), (0.1, "p90"), (0.01, "p99"), (0.001, "p99.9")):
            if level < bottom:
                continue
            ax.axhline(level, color="0.7", lw=0.6, ls="--")
            ax.text(
                0.99, level, label, ha="right", va="bottom", fontsize=7, color="0.4", transform=ax.get_yaxis_transform()
            )
        ax.set_title(scenario)
        ax.set_xlabel("latency (ms, log)")
        ax.grid(True, which="major", axis="x", color="0.9")
    axes[0][0].set_ylabel("fraction of requests slower (1 - CDF, log)")
    axes[0][-1].legend(loc="lower left", fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, width=int(24 * len(scenarios)))), fontsize=9)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sweep(path: Path, cells: Sequence[CellStats], scenario: str = "pause") -> Path | None:
    """p50 and p99.9 against offered rate, one line per scheme, for ``scenario`` (the rate sweep at a glance)."""
    chosen = [c for c in cells if c.scenario == scenario]
    rates = sorted({c.rate for c in chosen})
    if len(rates) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    schemes = list(dict.fromkeys(c.scheme for c in chosen))
    for i, scheme in enumerate(schemes):
        mine = sorted((c for c in chosen if c.scheme == scheme), key=lambda c: c.rate)
        color = plt.get_cmap("tab10")(i % 10)
        ax.plot([c.offered_rate for c in mine], [c.p999 for c in mine], "o-", color=color, label=f"{scheme} p99.9")
        ax.plot([c.offered_rate for c in mine], [c.p50 for c in mine], "s--", color=color, label=f"{scheme} p50",
                alpha=0.7)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title(f"rate sweep, scenario: {scenario}")
    ax.grid(True, which="both", color="0.9")
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

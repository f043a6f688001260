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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from parm.backend.orchestrator.stats import REBUILD_PHASES

from . import intervals
from .accounting import PARITY_COLUMNS, REBUILDS, rebuild_key
from .openloop import RunResult

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
LAG_FLAG_MS = 20.0
"""A cell whose load generator sent any request this much behind schedule is flagged ``lagged``: its tail may be
the generator's, not the server's."""
LAG_SHARE_MS = 10.0
LOAD_GENERATOR = "load generator"
"""The generator's key in ``CellStats.cpu_ms_per_request`` (``bench.cpu_snapshot``)."""
SAMPLE_FIELDS = ("latencies_ms", "round_latencies_ms")


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
    lag_share_over_10ms: float
    """Share of requests the generator sent more than ``LAG_SHARE_MS`` behind their schedule."""
    lagged: bool
    """The generator fell more than ``LAG_FLAG_MS`` behind schedule at least once (see ``LAG_FLAG_MS``)."""
    generator_gc_ms: float
    """Milliseconds the generator's own garbage collector stopped its event loop during the cell, in total..."""
    generator_gc_max_ms: float
    """...and at the longest."""
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
    parities: dict[str, float] = field(default_factory=dict)
    """A coded scheme's parity computations by reason (``parm_parities_total``) and groups whose parity was
    withheld, from the endpoint's own metrics."""
    rebuild_phases_ms: dict[str, float] = field(default_factory=dict)
    """A coded scheme's mean milliseconds per rebuilt answer in each rebuild phase (``parm_rebuild_phase_seconds``),
    and how many rebuilt answers (``rebuilds``) they average over."""
    cpu_utilization: float | None = None
    """Share of the machine's CPUs that the server, its instances and the generator kept busy during the cell."""
    latencies_ms: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    """Latencies of the answered requests (the samples behind the percentiles and the bootstrap intervals)."""
    round_latencies_ms: list[np.ndarray] = field(default_factory=list, repr=False)
    """The same, per interleaved round."""

    @property
    def gap(self) -> float:
        """p99.9 - p50, ParM's measure of the tail."""
        return self.p999 - self.p50

    @property
    def server_cpu_ms_per_request(self) -> float:
        """CPU milliseconds per request spent by tritonserver and every model instance (not the generator)."""
        return sum(v for k, v in self.cpu_ms_per_request.items() if k != LOAD_GENERATOR)

    def as_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in SAMPLE_FIELDS}
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
    cpus: int | None = None,
    rounds: Sequence[RunResult] = (),
    coded_counters: dict[str, float] | None = None,
) -> CellStats:
    """``result``: the whole cell; ``rounds``: its interleaved slices, for the per-round spread of the ratios."""
    records = result.records
    latencies = _latencies_ms(result)
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
    lags = 1000 * np.array([r.sent - r.scheduled for r in records if math.isfinite(r.sent)])
    gc_ms = 1000 * np.array([p.duration_s for p in result.gc_pauses])
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
        lag_share_over_10ms=float((lags > LAG_SHARE_MS).mean()) if len(lags) else 0.0,
        lagged=1000 * result.max_send_lag_s > LAG_FLAG_MS,
        generator_gc_ms=float(gc_ms.sum()),
        generator_gc_max_ms=float(gc_ms.max()) if len(gc_ms) else 0.0,
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
        parities=_parities(coded_counters or {}),
        rebuild_phases_ms=_rebuild_phases_ms(coded_counters or {}),
        cpu_utilization=_utilization(cpu_s, cpu_wall_s, cpus),
        latencies_ms=latencies,
        round_latencies_ms=[_latencies_ms(part) for part in rounds],
    )


def _parities(counters: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in counters.items() if key in PARITY_COLUMNS}


def _rebuild_phases_ms(counters: dict[str, float]) -> dict[str, float]:
    rebuilds = counters.get(REBUILDS, 0.0)
    if rebuilds <= 0:
        return {}
    means = {phase: 1000 * counters.get(rebuild_key(phase), 0.0) / rebuilds for phase in REBUILD_PHASES}
    return {**means, REBUILDS: rebuilds}


def _latencies_ms(result: RunResult) -> np.ndarray:
    return 1000 * np.array([r.latency for r in result.records if r.ok])


def _utilization(cpu_s: dict[str, float] | None, wall_s: float, cpus: int | None) -> float | None:
    if not cpu_s or wall_s <= 0 or not cpus:
        return None
    ours = sum(v for k, v in cpu_s.items() if k != "machine busy")
    return round(ours / wall_s / cpus, 3)


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
    """Whether the whole interval meets the target (a point value alone never does); None for a reference
    measurement that has no target of its own."""
    detail: str
    low: float = float("nan")
    high: float = float("nan")
    """The value's 95% bootstrap interval (``intervals``); NaN for a count."""
    rounds: tuple[float, ...] = ()
    """The value within each interleaved round."""
    scheme: str = ""
    """The coded scheme the check is about; empty for a check of the whole run."""

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("value", "low", "high"):
            value = getattr(self, key)
            out[key] = round(value, 4) if math.isfinite(value) else None
        out["rounds"] = list(self.rounds)
        return out


P50, P999 = intervals.quantile(50.0), intervals.quantile(99.9)


def _find(cells: Iterable[CellStats], rate: float, scenario: str, scheme: str) -> CellStats | None:
    return next((c for c in cells if c.rate == rate and c.scenario == scenario and c.scheme == scheme), None)


@dataclass(frozen=True)
class _Ratio:
    """One target ratio: statistic of cell ``top`` over statistic of cell ``bottom``."""

    name: str
    top: CellStats
    bottom: CellStats
    numerator: Callable[[np.ndarray], np.ndarray]
    denominator: Callable[[np.ndarray], np.ndarray]
    target: str
    bound: float | None
    """Met when the interval is at most ``bound`` (``at_least`` False) or at least it; None: a reference."""
    at_least: bool = False

    def check(self, rate: float, detail: str, scheme: str = "") -> TargetCheck:
        interval = intervals.ratio(self.numerator, self.denominator, self.top.latencies_ms, self.bottom.latencies_ms)
        rounds = intervals.per_round(
            self.numerator, self.denominator, self.top.round_latencies_ms, self.bottom.round_latencies_ms
        )
        met = None
        if self.bound is not None:
            met = interval.at_least(self.bound) if self.at_least else interval.at_most(self.bound)
        return TargetCheck(
            rate, self.name, interval.value, self.target, met, detail, interval.low, interval.high, tuple(rounds),
            scheme,
        )  # fmt: skip


def coded_schemes(cells: Iterable[CellStats]) -> list[str]:
    """The coded schemes measured (``parm-k2`` first, then the other k and the variants), each checked on its own."""
    names = {c.scheme for c in cells if c.scheme.startswith("parm")}
    return sorted(names, key=lambda name: (name != "parm-k2", name))


def check_targets(
    cells: Sequence[CellStats],
    parms: Sequence[str] | None = None,
    equal: str = "equal",
    hedged: str = "hedged",
    relay: str = "relay",
    capacity_share: float = 0.7,
    faulty: str = "pause",
) -> list[TargetCheck]:
    """The targets of the tail benchmark, per offered rate where the needed cells exist, each ratio with its
    bootstrap interval and per-round values (``intervals``): under pauses, the coded endpoint cuts the p99.9 - p50
    gap >= 10x against equal resources, keeps its p99.9 within 1.5x of its own fault-free one and at most hedging's
    (for no more server CPU per request); with no fault its p50 is at most 1.05x the relay's (the Python backend's
    own floor). Every coded scheme in ``parms`` (default: each one measured, ``coded_schemes``) is checked on its own.
    Then the generator's lag, and requests lost or answered twice."""
    checks = []
    for rate in sorted({c.rate for c in cells}):
        free_relay, free_none = _find(cells, rate, "no-fault", relay), _find(cells, rate, "no-fault", "none")
        if free_relay and free_none:
            ratio = _Ratio("Python-backend floor: relay p50 over F direct, no fault", free_relay, free_none, P50, P50,
                           "reference", None)  # fmt: skip
            checks.append(ratio.check(rate, f"relay p50 {free_relay.p50:.2f} ms (a BLS pass-through to F), F direct "
                                            f"p50 {free_none.p50:.2f} ms"))  # fmt: skip
        for parm in coded_schemes(cells) if parms is None else parms:
            checks += _scheme_checks(cells, rate, parm, equal, hedged, relay, faulty)
    checks.append(_lag_check(cells, capacity_share))
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


def _scheme_checks(
    cells: Sequence[CellStats], rate: float, parm: str, equal: str, hedged: str, relay: str, faulty: str
) -> list[TargetCheck]:
    """One coded scheme's target ratios at one rate, where the cells they need exist."""
    pause_p, pause_e, pause_h = (_find(cells, rate, faulty, s) for s in (parm, equal, hedged))
    free_p, free_e, free_relay = (_find(cells, rate, "no-fault", s) for s in (parm, equal, relay))
    ratios: list[tuple[_Ratio, str]] = []
    if pause_p and pause_e:
        ratio = _Ratio("tail gap cut under pauses vs equal resources", pause_e, pause_p, intervals.gap,
                       intervals.gap, ">= 10x", 10.0, at_least=True)  # fmt: skip
        ratios.append((ratio, f"{equal} gap {pause_e.gap:.1f} ms / {parm} gap {pause_p.gap:.1f} ms"))
    if pause_p and free_p:
        ratio = _Ratio("p99.9 under pauses vs own fault-free p99.9", pause_p, free_p, P999, P999, "<= 1.5", 1.5)
        ratios.append((ratio, f"{parm} p99.9 {pause_p.p999:.1f} ms with pauses, {free_p.p999:.1f} ms without"))
    if pause_p and pause_h:
        cpu_p, cpu_h = pause_p.server_cpu_ms_per_request, pause_h.server_cpu_ms_per_request
        ratio = _Ratio("p99.9 under pauses vs hedging's", pause_p, pause_h, P999, P999, "<= 1.0", 1.0)
        detail = (
            f"{parm} p99.9 {pause_p.p999:.1f} ms, {hedged} {pause_h.p999:.1f} ms (+{pause_h.backups} backups); "
            f"server CPU per request {cpu_p:.2f} vs {cpu_h:.2f} ms"
        )
        ratios.append((ratio, detail))
    if free_p and free_relay:
        ratio = _Ratio("orchestrator p50 over the relay, no fault", free_p, free_relay, P50, P50, "<= 1.05", 1.05)
        ratios.append((ratio, f"{parm} p50 {free_p.p50:.2f} ms, {relay} p50 {free_relay.p50:.2f} ms"))
    if free_p and free_e:
        ratio = _Ratio("p50 vs equal resources, no fault", free_p, free_e, P50, P50, "reference", None)
        ratios.append((ratio, f"{parm} p50 {free_p.p50:.2f} ms, {equal} p50 {free_e.p50:.2f} ms"))
    return [ratio.check(rate, detail, parm) for ratio, detail in ratios]


def _lag_check(cells: Sequence[CellStats], capacity_share: float) -> TargetCheck:
    """No cell below ``capacity_share`` of the machine's CPU may have a lagging generator; a lag above it is the
    server's own CPU use crowding the generator out, and is named as such."""
    light = [c for c in cells if c.cpu_utilization is None or c.cpu_utilization < capacity_share]
    lagged = [c for c in light if c.lagged]
    busy_lagged = [c for c in cells if c.lagged and c not in light]
    worst = max((c.max_send_lag_ms for c in light), default=0.0)
    detail = f"lagged: {[f'{c.rate:g}/{c.scenario}/{c.scheme}' for c in lagged] or 'none'}"
    if busy_lagged:
        detail += (
            f"; above {100 * capacity_share:.0f}% CPU (the server's own load): "
            f"{[f'{c.rate:g}/{c.scenario}/{c.scheme}' for c in busy_lagged]}"
        )
    return TargetCheck(
        float("nan"),
        f"generator lag (max ms) in cells below {100 * capacity_share:.0f}% CPU",
        worst,
        f"<= {LAG_FLAG_MS:g}",
        not lagged,
        detail,
    )


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
        "gap ms | rebuilt | errors | generator lag ms (max) | other load |\n"
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for c in cells:
        extra = f" (+{c.backups} backups)" if c.backups else ""
        rows.append(
            f"| {c.offered_rate:.1f} | {c.scenario} | {c.scheme}{extra} | {c.instances} | {c.count} | {_ms(c.p50)} | "
            f"{_ms(c.p90)} | {_ms(c.p99)} | {_ms(c.p999)} | {_ms(c.max)} | {_ms(c.gap)} | "
            f"{100 * c.rebuilt_fraction:.1f}% | {c.errors} | {_ms(c.max_send_lag_ms)}"
            + (" LAGGED" if c.lagged else "")
            + " | "
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


def parity_table(cells: Sequence[CellStats]) -> str:
    """Parities per 100 requests by reason, one row per coded cell."""
    chosen = [c for c in cells if c.parities]
    if not chosen:
        return ""
    columns = list(dict.fromkeys(k for c in chosen for k in c.parities))
    lines = ["| rate/s | scenario | scheme | " + " | ".join(columns) + " |", "|---:|---|---|" + "---:|" * len(columns)]
    for c in chosen:
        values = " | ".join(f"{100 * c.parities.get(k, 0.0) / max(1, c.count):.2f}" for k in columns)
        lines.append(f"| {c.rate:g} | {c.scenario} | {c.scheme} | {values} |")
    return "\n".join(lines) + "\n"


def rebuild_phase_table(cells: Sequence[CellStats]) -> str:
    """Mean milliseconds per rebuilt answer in each rebuild phase, one row per coded cell that rebuilt any."""
    chosen = [c for c in cells if c.rebuild_phases_ms]
    if not chosen:
        return ""
    lines = [
        "| rate/s | scenario | scheme | rebuilt answers | " + " | ".join(REBUILD_PHASES) + " | total |",
        "|---:|---|---|---:|" + "---:|" * (len(REBUILD_PHASES) + 1),
    ]
    for c in chosen:
        phases = [c.rebuild_phases_ms[phase] for phase in REBUILD_PHASES]
        values = " | ".join(f"{ms:.1f}" for ms in phases)
        lines.append(
            f"| {c.rate:g} | {c.scenario} | {c.scheme} | {c.rebuild_phases_ms[REBUILDS]:.0f} | {values} | "
            f"{sum(phases):.1f} |"
        )
    return "\n".join(lines) + "\n"


def markdown_report(
    cells: Sequence[CellStats], checks: Sequence[TargetCheck], header: Sequence[str], errors: dict[str, int]
) -> str:
    lines = ["# Tail latency under real faults", "", *header, "", markdown_table(cells), "## Targets", ""]
    lines.append("| rate/s | scheme | check | value [95% interval] | per round | target | met | detail |")
    lines.append("|---:|---|---|---|---|---|---|---|")
    for check in checks:
        rate = "all" if not math.isfinite(check.rate) else f"{check.rate:g}"
        value = f"{check.value:.2f}"
        if math.isfinite(check.low) and math.isfinite(check.high):
            value += f" [{check.low:.2f}, {check.high:.2f}]"
        rounds = ", ".join(f"{v:.2f}" for v in check.rounds) or "-"
        lines.append(
            f"| {rate} | {check.scheme or '-'} | {check.name} | {value} | {rounds} | {check.target} | "
            f"{_met(check.met)} | {check.detail} |"
        )
    lines += [
        "",
        "A target is met only when its whole 95% bootstrap interval (requests resampled within each cell) meets it. "
        "A cell marked LAGGED had its load generator fall more than "
        f"{LAG_FLAG_MS:g} ms behind its schedule at least once.",
    ]
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
    parity = parity_table(cells)
    if parity:
        lines += [
            "",
            "## Parity computations per 100 requests, by why (the coded endpoint's own metrics)",
            "",
            "eager: every group (ParM); failure: an F call failed; straggler: overtaken by later answers; "
            "budget: late, within the parity budget; withheld: late, but neither (no parity).",
            "",
            parity,
        ]
    phases = rebuild_phase_table(cells)
    if phases:
        lines += [
            "",
            "## Where a rebuilt answer's time went (mean ms per rebuilt answer, the coded endpoint's own metrics)",
            "",
            "wait: from the request's arrival at the endpoint until its group's parity was sent; parity: until the "
            "parity output arrived; complete: until the rebuilt answer was sent (the other members' F answers, the "
            "decode). The client also sees the hops into and out of the endpoint.",
            "",
            phases,
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

"""The accuracy report of ``parm eval``: one row per code (and per baseline), as JSON, a Markdown table and a PNG
bar chart.

Numbers are on the test split, which nothing is tuned on (checkpoints are chosen on the validation split). A row's
headline is its degraded-mode accuracy with one member's answer rebuilt (each slot of each group in turn), against
labels and against F's own argmax; codes with r > 1 also list the accuracy with 2..r answers rebuilt. The chart is
drawn with Pillow (already a dependency), so no plotting library is needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .degraded import DegradedAccuracy


@dataclass(frozen=True)
class ReportRow:
    """One code or baseline. ``extra_per_query``: F-sized evaluations spent on redundancy per query (r/k for a
    code, whatever answers its parities); ``None`` for baselines, whose cost ``note`` states."""

    name: str
    kind: str
    k: int | None
    r: int | None
    accuracy: float | None
    agreement_with_f: float
    extra_per_query: float | None = None
    by_erasures: tuple[tuple[int, int, float | None, float], ...] = ()
    """(erased members, lost parities, accuracy, agreement with F) for every count the code tolerates."""
    train_seconds: float | None = None
    note: str = ""
    gap_stderr: float | None = None
    """Standard error of the gap to F, in points, paired per query (``degraded.paired_gap_stderr``)."""

    @classmethod
    def for_code(
        cls, name: str, k: int, r: int, degraded: DegradedAccuracy, train_seconds: float | None, note: str = ""
    ) -> ReportRow:
        return cls(
            name=name,
            kind="code",
            k=k,
            r=r,
            accuracy=degraded.degraded_accuracy,
            agreement_with_f=degraded.degraded_agreement_with_f,
            extra_per_query=r / k,
            by_erasures=tuple(
                (e.erased, e.lost_parities, e.accuracy, e.agreement_with_f) for e in degraded.by_erasures
            ),
            train_seconds=train_seconds,
            note=note,
            gap_stderr=degraded.by_erasures[0].gap_stderr if degraded.by_erasures else None,
        )


@dataclass(frozen=True)
class Report:
    """F's accuracy with every answer available, and every row, on one data split."""

    f_description: str
    data_description: str
    split: str
    queries: int
    seed: int
    f_accuracy: float | None
    rows: tuple[ReportRow, ...] = field(default_factory=tuple)
    wall_seconds: float | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    """(code, why) for the codes of the default set that cannot apply to this F (an image code on a flat F...)."""

    def gap_points(self, row: ReportRow) -> float | None:
        """How many accuracy points the row loses against F with every answer available."""
        if self.f_accuracy is None or row.accuracy is None:
            return None
        return 100 * (self.f_accuracy - row.accuracy)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        for row, entry in zip(self.rows, data["rows"], strict=True):
            entry["gap_points"] = self.gap_points(row)
        return json.dumps(data, indent=2) + "\n"

    def to_markdown(self) -> str:
        f_acc = _pct(self.f_accuracy)
        lines = [
            f"F: {self.f_description}; data: {self.data_description}, {self.split} split ({self.queries} queries), "
            f"seed {self.seed}. F's accuracy with every answer available: **{f_acc}**.",
            "",
            "| code | k | r | extra F-evals / query | degraded accuracy (1 rebuilt) | gap to F (points, ± 95%) "
            "| agrees with F | more erasures | train s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            gap = self.gap_points(row)
            more = "; ".join(f"{_erasure_label(e, lost)}: {_pct(acc)}" for e, lost, acc, _ in row.by_erasures[1:])
            lines.append(
                "| "
                + " | ".join(
                    [
                        row.name + (f" ({row.note})" if row.note else ""),
                        "-" if row.k is None else str(row.k),
                        "-" if row.r is None else str(row.r),
                        _cost(row.extra_per_query),
                        _pct(row.accuracy),
                        _gap(gap, row.gap_stderr),
                        _pct(row.agreement_with_f),
                        more or "-",
                        "-" if row.train_seconds is None else f"{row.train_seconds:.0f}",
                    ]
                )
                + " |"
            )
        if self.skipped:
            lines += ["", "Skipped, since they cannot apply to this F:"]
            lines += [f"- {code}: {why}" for code, why in self.skipped]
        if self.wall_seconds is not None and any(row.train_seconds is not None for row in self.rows):
            lines += [
                "",
                f"Wall time of this evaluation: {self.wall_seconds:.0f} s, training included; a checkpoint reused from "
                "an earlier run is not retrained (its training time is in the 'train s' column).",
            ]
        elif self.wall_seconds is not None:
            lines += ["", f"Wall time of this evaluation: {self.wall_seconds:.0f} s."]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: Path, stem: str = "report") -> dict[str, Path]:
        """Writes ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` under ``out_dir``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {suffix: out_dir / f"{stem}.{suffix}" for suffix in ("json", "md", "png")}
        paths["json"].write_text(self.to_json())
        paths["md"].write_text(self.to_markdown())
        self.draw().save(paths["png"])
        return paths

    def draw(self) -> Image.Image:
        """A horizontal bar chart: degraded-mode accuracy per row (codes blue, baselines grey), F's as a red line."""
        font = _font(14)
        small = _font(12)
        label_width, bar_width, row_height, top, bottom = 440, 520, 26, 56, 40
        height = top + row_height * len(self.rows) + bottom
        image = Image.new("RGB", (label_width + bar_width + 90, height), "white")
        draw = ImageDraw.Draw(image)
        title = f"Degraded-mode accuracy, one answer rebuilt ({self.split} split, {self.queries} queries)"
        draw.text((10, 10), title, fill="black", font=font)
        x0 = label_width

        def x_of(value: float) -> float:
            return x0 + bar_width * value

        for tick in range(0, 11, 2):
            x = x_of(tick / 10)
            draw.line([(x, top - 6), (x, height - bottom)], fill=(225, 225, 225))
            draw.text((x - 10, height - bottom + 6), f"{tick * 10}%", fill="black", font=small)
        for i, row in enumerate(self.rows):
            y = top + i * row_height
            label = row.name if row.k is None else f"{row.name}, k={row.k}" + (f", r={row.r}" if row.r != 1 else "")
            if row.note and row.kind == "code":
                label += f" ({row.note})"
            draw.text((10, y + 5), label[:64], fill="black", font=small)
            value = row.accuracy if row.accuracy is not None else row.agreement_with_f
            colour = (70, 110, 190) if row.kind == "code" else (150, 150, 150)
            draw.rectangle([x0, y + 4, x_of(value), y + row_height - 4], fill=colour)
            draw.text((x_of(value) + 4, y + 5), f"{100 * value:.1f}%", fill="black", font=small)
        if self.f_accuracy is not None:
            x = x_of(self.f_accuracy)
            draw.line([(x, top - 10), (x, height - bottom)], fill=(200, 40, 40), width=2)
            draw.text(
                (x - 60, top - 26), f"F, all answers: {100 * self.f_accuracy:.1f}%", fill=(200, 40, 40), font=small
            )
        return image


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _cost(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value >= 0.1 or value == 0 else f"{value:.3f}"


def _gap(points: float | None, stderr: float | None) -> str:
    if points is None:
        return "-"
    if stderr is None or math.isnan(stderr):
        return f"{points:.2f}"
    return f"{points:.2f} ± {1.96 * stderr:.2f}"


def _erasure_label(erased: int, lost_parities: int) -> str:
    lost = f", {lost_parities} parit{'y' if lost_parities == 1 else 'ies'} lost" if lost_parities else ""
    return f"{erased} rebuilt{lost}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"

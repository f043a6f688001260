"""The accuracy report: a quick ``evaluate_codes`` run gives one row per code and baseline, in JSON, Markdown, PNG."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from parm.export.code_training import CodeConfig
from parm.export.evaluate import count_macs, evaluate_codes
from parm.export.models import BackupMLP


def test_quick_report_has_every_row_and_all_three_files(tmp_path: Path) -> None:
    codes = [CodeConfig("sum", 3), CodeConfig("linear", 2, 2), CodeConfig("learned-conv", 2), CodeConfig("berrut", 4)]
    report = evaluate_codes(codes, tmp_path / "work", quick=True)
    names = [row.name for row in report.rows]
    assert names == [
        "ParM sum",
        "ParM, r weighted sums",
        "learned code (conv encoder)",
        "Berrut (ApproxIFER)",
        "default answer",
        "backup model",
    ]
    sum_row, linear_row, learned_row, berrut_row = report.rows[:4]
    assert sum_row.extra_per_query == 1 / 3  # one F-sized parity model per 3 queries; the sum costs nothing
    assert [(e, lost) for e, lost, _, _ in linear_row.by_erasures] == [(1, 0), (2, 0), (1, 1)]
    assert berrut_row.extra_per_query == 1 / 4  # F answers one parity query per 4; the fixed maps cost nothing
    assert 0.5 < learned_row.extra_per_query < 0.7  # F per 2 queries, plus the small conv encoder and MLP decoder
    assert report.f_accuracy is not None and report.queries == 360
    paths = report.save(tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert [row["name"] for row in data["rows"]] == names and "gap_points" in data["rows"][0]
    markdown = paths["md"].read_text()
    assert markdown.count("\n| ") == len(names) + 1 and "2 rebuilt:" in markdown
    assert "1 rebuilt, 1 parity lost:" in markdown
    with Image.open(paths["png"]) as image:
        assert image.size[0] > 600 and image.size[1] > 100 + 20 * len(names)


def test_count_macs() -> None:
    import torch

    assert count_macs(BackupMLP((1, 8, 8), 10), torch.zeros(1, 1, 8, 8)) == 64 * 32 + 32 * 10

"""Long work shows a bar on a terminal and plain lines elsewhere; people never see a dataclass's repr."""

from __future__ import annotations

import logging

from parm.export.degraded import DegradedAccuracy, ErasureAccuracy
from parm.progress import Progress

logger = logging.getLogger("parm.test_progress")


def test_plain_lines_when_not_on_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="parm"), Progress("parity model epoch", 3, logger, bar=False) as p:
        p.step(loss=0.25, val=0.9)
        p.step("best so far", loss=0.125, val=0.95)
        p.write("a finished cell")
    assert [r.getMessage() for r in caplog.records] == [
        "parity model epoch 1/3: loss 0.25, val 0.9",
        "parity model epoch 2/3: loss 0.125, val 0.95; best so far",
        "a finished cell",
    ]


def test_a_bar_on_a_terminal_carries_the_count_and_the_latest_numbers(capsys, caplog):
    with Progress("parm bench", 2, logger, unit="slice", bar=True) as p:
        p.step("first", loss=0.5)
        p.write("  10/s no-fault/equal: p50 3.00 ms")
        p.step("second")
    err = capsys.readouterr().err
    assert "parm bench" in err and "2/2" in err and "loss=0.5" in err
    assert "  10/s no-fault/equal: p50 3.00 ms" in err
    assert not [r for r in caplog.records if r.name == logger.name]  # the bar replaces the plain lines


def test_a_resumed_run_starts_where_it_was():
    with Progress("x", 5, logger, initial=3, bar=False) as p:
        p.step()
        assert p.done == 4


def test_degraded_accuracy_reads_as_a_sentence():
    report = DegradedAccuracy(
        f_accuracy=0.98,
        degraded_accuracy=0.9653,
        degraded_agreement_with_f=0.9764,
        erasures=720,
        by_erasures=(ErasureAccuracy(erased=1, accuracy=0.9653, agreement_with_f=0.9764, rebuilt=720),),
    )
    assert report.summary() == "F 98.00%; 1 rebuilt: 96.53% (agrees with F 97.64%)"
    assert "DegradedAccuracy(" not in report.summary()

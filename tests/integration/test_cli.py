"""The README's main job, ``parm demo``, end to end as a user runs it (quick training, real server, real pause)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from parm.export.repository import read_config
from parm.server import free_ports

pytestmark = pytest.mark.integration


def test_parm_demo_runs_end_to_end(tmp_path: Path):
    http, grpc, metrics = free_ports(3)
    command = [sys.executable, "-m", "parm.cli", "demo", "--quick", "--work-dir", str(tmp_path)]
    command += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    identical = re.search(r"(\d+)/(\d+) answers computed by F identical to F's own", out)
    assert identical is not None and identical[1] == identical[2] and int(identical[2]) >= 150, out
    assert "identical answers" in out
    assert "60 answered" in out
    assert "Server stopped" in out
    repository = tmp_path / "model_repository"
    assert read_config(repository / "digits_coded" / "config.pbtxt").backend == "python"
    assert (tmp_path / "training" / "training.json").exists()

"""py-spy on a coded endpoint's process: start it, collect it, and summarise where the samples go."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

PROFILE_RATE = 250
"""py-spy samples per second."""


def py_spy_binary() -> str | None:
    """py-spy on PATH or beside this Python, or None."""
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if os.path.exists(found) else None


def start_profiler(py_spy: str, pid: int, path: Path, seconds: int) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Starts ``py-spy record --gil`` on ``pid`` for ``seconds``: the process, and the record ``finish_profiler``
    completes. ``--gil`` keeps only the samples where a thread holds the GIL: the CPU time spent in Python."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(PROFILE_RATE),
               "--format", "raw", "--threads", "--gil", "--nonblocking", "--output", str(path)]  # fmt: skip
    profile = {"pid": pid, "command": command, "path": path, "seconds": seconds, "rate": PROFILE_RATE}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), profile


def finish_profiler(process: subprocess.Popen[bytes], profile: dict[str, Any]) -> None:
    """Waits for py-spy and adds its return code, and its summary or error, to ``profile``."""
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    profile["returncode"] = process.returncode
    if process.returncode != 0:
        profile["error"] = stderr.decode(errors="replace")[-500:]
        return
    profile["summary"] = summarise_profile(Path(profile["path"]), possible=profile["seconds"] * profile["rate"])


def summarise_profile(path: Path, top: int = 25, possible: int | None = None) -> dict[str, Any]:
    """py-spy's collapsed stacks -> where the samples go: by thread, and the functions with the most samples
    (inclusive: on the stack; self: at its top). ``possible``: the samples one always-busy thread would give
    (seconds x rate), so that ``busy`` says which share of the wall time the samples cover."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        names = [f.split(" (")[0] + (" " + f.split(" (")[1].rstrip(")").rsplit("/", 1)[-1] if " (" in f else "")
                 for f in frames[1:]]  # fmt: skip
        for name in set(names):
            inclusive[name] += count
        if names:
            own[names[-1]] += count
    share = {name: round(n / max(1, total), 4) for name, n in inclusive.most_common(top)}
    return {
        "samples": total,
        "busy": None if not possible else round(total / possible, 4),
        "threads": {name: round(n / max(1, total), 4) for name, n in threads.most_common(8)},
        "inclusive": share,
        "self": {name: round(n / max(1, total), 4) for name, n in own.most_common(top)},
    }

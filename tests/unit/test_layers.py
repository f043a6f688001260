"""Layers import one way: ``parm`` (the CLI and its jobs) on top; ``export`` and ``loadtest`` below it never import
the CLI, its jobs or the demo; the orchestrator core imports nothing of the package (it is copied into
repositories)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP = ("parm.cli", "parm.jobs", "parm.demo")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("folder", ["export", "loadtest"])
def test_lower_layers_never_import_the_cli(folder):
    offenders = {
        str(path.relative_to(ROOT)): sorted(name for name in _imports(path) if name.startswith(TOP))
        for path in (ROOT / folder).glob("*.py")
    }
    assert not {path: names for path, names in offenders.items() if names}


def test_the_orchestrator_core_imports_nothing_of_the_package():
    offenders = {
        str(path.relative_to(ROOT)): sorted(name for name in _imports(path) if name.split(".")[0] == "parm")
        for path in (ROOT / "python_backend" / "orchestrator").glob("*.py")
    }
    assert not {path: names for path, names in offenders.items() if names}

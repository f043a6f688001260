#!/usr/bin/env bash
# Creates .venv and installs the project with everything it needs to train, export, serve and test.
# torch==2.13.0 goes in first: it is a CPU build, and once it is there the project's torch requirement is met,
# so pip never reaches for a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e '.[test]'
bash scripts/install_deploy_tools.sh

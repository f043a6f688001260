#!/usr/bin/env bash
# Installs what the tests need (scripts/setup.sh) and runs the whole suite, unit and integration
# (the integration tests start a real Triton server on free local ports).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"

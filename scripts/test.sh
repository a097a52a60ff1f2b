#!/usr/bin/env bash
# Installs what the tests need (pip only, so far: no apt package is needed) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/python -m pytest -p no:dash -q tests "$@"

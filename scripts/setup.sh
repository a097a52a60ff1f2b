#!/usr/bin/env bash
# Installs tview into .venv (torch pinned to the CPU wheel first, see README) and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0          # before anything that depends on torch
# the pin again as a constraint: no extra (lightning, torchmetrics, ...) may move torch off the CPU wheel
.venv/bin/pip install -q -e ".[${1:-train,app}]" -c <(echo "torch==2.13.0")

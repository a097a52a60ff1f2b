#!/usr/bin/env bash
# Installs tview into .venv (torch pinned to the CPU wheel first, see README) with the extras the README's commands
# use (train: `tview demo`; app: `tview dashboard`; export: `tview export`), or those named: setup.sh test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0          # before anything that depends on torch
# the pin again as a constraint: no extra (lightning, torchmetrics, ...) may move torch off the CPU wheel
.venv/bin/pip install -q -e ".[${1:-train,app,export}]" -c <(echo "torch==2.13.0")

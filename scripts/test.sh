#!/usr/bin/env bash
# Installs what the tests need (Debian's chromium for the browser tests; tview with its test extra)
# and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
bash scripts/setup.sh test
.venv/bin/python -m pytest -p no:dash -q tests "$@"

#!/usr/bin/env bash
# Installs what the tests need -- Debian's chromium (browser tests), ParaView with Xvfb and Open MPI
# (plugin tests), then tview with its test extra -- checks the code with ruff and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES="chromium paraview python3-paraview python3-h5py python3-numpy xvfb xauth openmpi-bin"
if [ ! -x /usr/bin/chromium ] || ! command -v pvbatch >/dev/null || ! command -v xvfb-run >/dev/null \
        || ! command -v mpirun >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
fi
bash scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/python -m pytest -p no:dash -q tests "$@"

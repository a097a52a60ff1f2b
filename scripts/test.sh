#!/usr/bin/env bash
# Installs what the tests need -- Debian's chromium (browser tests), ParaView with Xvfb and Open MPI
# (plugin tests), openbox, Qt's SVG module (ParaView's toolbar icons) and imagemagick (screenshots of the GUI
# test), then tview with its test extra -- checks the code with ruff and runs the whole test suite, in two processes
# (pytest-xdist: tests/conftest.py keeps each file's tests, and tests/app/'s, in one of them, the longest files first
# and the tests marked alone last; TVIEW_TEST_PROCESSES=0 runs it in this one).
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES="chromium paraview python3-paraview python3-h5py python3-numpy xvfb xauth openmpi-bin openbox
libqt5svg5 imagemagick"
if [ ! -x /usr/bin/chromium ] || ! command -v pvbatch >/dev/null || ! command -v xvfb-run >/dev/null \
        || ! command -v mpirun >/dev/null || ! command -v openbox >/dev/null || ! command -v import >/dev/null \
        || ! dpkg -s libqt5svg5 >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
fi
bash scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/python -m pytest -p no:dash -q -n "${TVIEW_TEST_PROCESSES:-2}" --dist loadfile --no-loadscope-reorder tests "$@"

"""The fault zoo's scenarios as tests, a few of each family: real DDP runs over gloo recorded with the default preset,
one injected fault each; diagnose's first finding must name it (kind, rank, layer, step within one recorded step)."""

import importlib.util
import os
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

import tview  # noqa: E402
from tests.conftest import REPO  # noqa: E402

pytestmark = pytest.mark.slow


def _faults():
    spec = importlib.util.spec_from_file_location("faults", os.path.join(REPO, "benchmarks", "faults.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["faults"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    from tview.demo import load_digits_tensors
    mod.DATA["digits"] = load_digits_tensors()
    return mod


# (the stragglers are left to benchmarks/faults.py: on cores shared with other jobs their onset, read from
# measured times, moved by up to 2 steps from run to run, beyond the one-step tolerance)
@pytest.mark.parametrize("name", ["nan-input", "dead-filter", "replicas-differ", "lr-spike"])
def test_fault_is_named_first(tmp_path, name):
    faults = _faults()
    sc = next(s for s in faults.SCENARIOS if s.name == name)
    out = str(tmp_path / name)
    faults.run_scenario(sc, out)
    with tview.open_run(out) as run:
        found = tview_diagnose(run)
    assert faults.correct(sc, found), f"expected {faults.expected_text(sc)}, found {faults.found_text(found)}"


def tview_diagnose(run):
    from tview.diagnose import diagnose
    return diagnose(run)

"""Shared test helpers: a tiny CNN, a training loop, and a recorded run made on the spot."""

import contextlib
import os
import pathlib
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import tview  # noqa: E402

# One torch thread in the test process: on this 2-core machine shared with other work, torch's default pool of
# 2 spinning threads made a 300-step TinyCNN run take 37 s instead of 2 s. Processes the tests start get the
# same (python_env). No test measures speed.
torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TinyCNN(nn.Module):
    """conv -> bn -> relu -> conv -> relu (the same ReLU module twice) -> linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def make_data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def train(model, rec, steps, x, y, lr=0.1, opt=None):
    opt = opt or torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if rec is not None:
            rec.step(loss=loss)
    return opt


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyCNN()


@pytest.fixture
def small_run(tmp_path):
    """A 12-step run of TinyCNN recorded every 2 steps (full preset), snapshots every 4."""
    torch.manual_seed(0)
    model = TinyCNN()
    x, y = make_data()
    path = str(tmp_path / "run")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tview.Recorder(model, path, every=2, snapshot_every=4, preset="full", probe_batch=x[:4], optimizer=opt) as rec:
        train(model, rec, 12, x, y, opt=opt)
    return path, model, x


@pytest.fixture
def nan_conv2_run(tmp_path):
    """A one-step run of TinyCNN whose conv2 outputs NaN (every later layer's output, and every gradient, too)."""
    torch.manual_seed(0)
    model, (x, y) = TinyCNN(), make_data()
    model.conv2.register_forward_hook(lambda m, i, out: out * float("nan"))
    path = str(tmp_path / "nan")
    with tview.Recorder(model, path, every=1) as rec:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        rec.step(loss=loss)
    return path


def python_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")  # as torch.set_num_threads(1) above
    return env


PY = sys.executable


@pytest.fixture(scope="session")
def runs_root(request, tmp_path_factory):
    """A folder of runs: a 2-rank demo run, a copy whose rank 1 shard is cut short, one with no steps yet."""
    return made_once(request, tmp_path_factory, "runs", make_runs)


def make_runs(root):
    import json
    import shutil

    from tview.demo import run_demo
    run_demo(str(root / "demo"), ranks=2, steps=300, every=2, snapshot_every=50, batch=32, mode="new")
    shutil.copytree(root / "demo", root / "broken")
    shard = root / "broken" / "rank-00001.h5"
    shard.write_bytes(shard.read_bytes()[:4096])  # cut short, as a full disk would
    (root / "empty").mkdir()
    manifest = json.loads((root / "demo" / "run.tview").read_text())
    (root / "empty" / "run.tview").write_text(json.dumps(manifest))  # started, nothing recorded yet


def made_once(request, tmp_path_factory, name: str, make):
    """A folder `make(folder)` fills, made once per test session: under pytest-xdist by the first worker that asks
    (the others wait on a lock, then share it: tests only read it or add folders of their own beside its runs)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    import fcntl
    import shutil
    shared = workers_folder(request.config)
    folder, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # left by a worker that failed while making it
            folder.mkdir()
            make(folder)
            done.touch()
        else:  # made by another worker: what it started counts for `--check-slow` here too
            PROCESS_FIXTURES.setdefault(request.fixturename, f"{make.__name__}, in another pytest-xdist worker")
    return folder


@contextlib.contextmanager
def live_writer(run_dir, delay: float = 0.02):
    """A real training process recording every step into run_dir (its shard exists on entry) until the
    block ends; then it is killed."""
    import subprocess
    import time
    writer = subprocess.Popen([PY, os.path.join(REPO, "tests", "store", "writer_script.py"), str(run_dir), "100000",
                               str(delay), "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=python_env())
    try:
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(str(run_dir), "rank-00000.h5")) and time.time() < deadline:
            time.sleep(0.2)
        yield writer
    finally:
        writer.kill()
        writer.wait()


# -- `pytest --check-slow`: a test not marked slow that starts a process (subprocess or fork), itself or through a
# fixture it uses (a session fixture that started one once counts for every test that uses it), fails ---------------
PROCESS_FIXTURES: dict[str, str] = {}  # fixture name -> the process it started


def pytest_addoption(parser):
    parser.addoption("--check-slow", action="store_true",
                     help="fail each test not marked slow that starts a process (subprocess, fork, multiprocessing), "
                          "itself or through its fixtures")


@contextlib.contextmanager
def noting_processes():
    """A list that gets a line for each process started (subprocess, fork, multiprocessing) inside the block."""
    import multiprocessing.process
    import subprocess
    started = []
    process = multiprocessing.process.BaseProcess
    popen_init, fork, mp_start = subprocess.Popen.__init__, os.fork, process.start

    def noting_popen(self, args, *a, **k):
        started.append(str(args)[:200])
        return popen_init(self, args, *a, **k)

    def noting_fork():
        pid = fork()
        if pid:
            started.append("fork")
        return pid

    def noting_start(self):
        started.append(f"multiprocessing {self.name}")
        return mp_start(self)
    subprocess.Popen.__init__, os.fork, process.start = noting_popen, noting_fork, noting_start
    try:
        yield started
    finally:
        subprocess.Popen.__init__, os.fork, process.start = popen_init, fork, mp_start


class ProcessFixtures:
    """Notes the fixtures whose set-up started a process. A plugin of its own: a conftest's hooks do not see the
    set-up of session fixtures, which belongs to the session, outside the conftest's folder."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        with noting_processes() as started:
            yield
        if started:
            PROCESS_FIXTURES[fixturedef.argname] = started[0]


def pytest_configure(config):
    if config.getoption("--check-slow"):
        config.pluginmanager.register(ProcessFixtures(), "tview-process-fixtures")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if not item.config.getoption("--check-slow") or item.get_closest_marker("slow"):
        yield
        return
    with noting_processes() as started:
        yield
    started += [f"fixture {name}: {what}" for name, what in PROCESS_FIXTURES.items() if name in item.fixturenames]
    if started:
        pytest.fail(f"starts a process ({started[0]}) but is not marked slow", pytrace=False)


# -- pytest-xdist (scripts/test.sh: `-n 2 --dist loadfile --no-loadscope-reorder`): a test file is a unit of work, so
# a module fixture is made once and a file's tests keep their order; tests/app/ is one unit (its tests add runs to
# runs_root that its one dashboard server lists). The longest units go first (their times in the whole suite at load
# 4, 2026-12-03 19:18: 273, 208, 142, 121, 65, 56, 55, 46, 40 s), so that the two workers end together rather than
# one running a long file alone at the end; but test_paraview.py not beside tests/app at the start: both need
# runs_root, which one worker makes while the other waits for it (50 s at 19:34). The tests marked `alone` are one
# unit of their own, handed out last: an `alone` test waits for the other worker's test to end, and the last units
# are short (in the middle of the suite the live dashboard test waited 27 s for compare.py's smoke run). (Not
# `--dist loadgroup` with xdist_group marks: on pytest 9.2 it silently stops grouping, pytest-xdist issue 1386.)
LONGEST_FIRST = ["tests/app", "tests/test_benchmarks.py", "tests/paraview/test_paraview.py",
                 "tests/hooks/test_training_stack.py", "tests/test_demo_progress.py", "tests/store/test_kill.py",
                 "tests/test_ddp_and_cli.py", "tests/test_diagnose_faults.py", "tests/store/test_fuzz.py",
                 "tests/test_diagnose.py", "tests/paraview/test_gui.py", "tests/store/test_store.py",
                 "tests/test_wheel.py", "tests/hooks/test_param_stats.py", "tests/integrations/test_lightning.py"]
ALONE_UNIT = "tests marked alone"


def work_unit(nodeid: str, alone: frozenset = frozenset()) -> str:
    """The unit of work a test belongs to under pytest-xdist: its file, tests/app for the dashboard's tests, or
    ALONE_UNIT for a test marked `alone` (`alone`: the node ids of those)."""
    path = nodeid.split("::")[0]
    if nodeid in alone:
        return ALONE_UNIT
    return "tests/app" if path.startswith("tests/app/") else path


def workers_folder(config) -> pathlib.Path:
    """Under pytest-xdist, the session's temporary folder that holds each worker's own (what the workers share)."""
    return pathlib.Path(config.getoption("basetemp")).parent


def alone_tests_file(shared) -> str:
    """Where the workers write the node ids of the tests marked `alone`, for the main process's scheduler."""
    return os.path.join(str(shared), "alone.tests")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        alone = None

        def _split_scope(self, nodeid: str) -> str:
            if self.alone is None:  # written by every worker while collecting, before any asks for work
                with open(alone_tests_file(config._tmp_path_factory.getbasetemp())) as f:  # the workers' basetemp's
                    self.alone = frozenset(f.read().splitlines())  # parent, as pytest-xdist makes it
            return work_unit(nodeid, self.alone)
    return ByWorkUnit(config, log)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the order the workers report is the order units are handed out
        alone = frozenset(item.nodeid for item in items if item.get_closest_marker("alone"))
        shared = workers_folder(config)
        written = pathlib.Path(alone_tests_file(shared) + "." + os.environ["PYTEST_XDIST_WORKER"])
        written.write_text("".join(f"{nodeid}\n" for nodeid in sorted(alone)))
        written.replace(alone_tests_file(shared))  # whole, whichever worker writes last
        rank = {unit: k for k, unit in enumerate(LONGEST_FIRST)}
        rank[ALONE_UNIT] = len(rank) + 1
        items.sort(key=lambda item: rank.get(work_unit(item.nodeid, alone), len(LONGEST_FIRST)))  # stable


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item):
    """Under pytest-xdist, a test marked `alone` runs while the other worker waits between two of its tests: each
    test holds a shared lock, an `alone` one the exclusive lock (a turnstile first, so that it is not starved)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    import fcntl
    import time
    shared = workers_folder(item.config)
    alone = item.get_closest_marker("alone") is not None
    with open(shared / "alone.turnstile", "w") as turnstile, open(shared / "alone.lock", "w") as lock:
        asked = time.monotonic()
        fcntl.flock(turnstile, fcntl.LOCK_EX)  # waits while an `alone` test waits or runs
        if not alone:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        item.user_properties.append((WAITED, (time.monotonic() - asked, alone)))  # reported to the main process
        yield  # both locks are released when their files close


WAITED = "waited for the other worker (s), alone"
WAITS: list[tuple[float, bool, str]] = []  # in the main process: (seconds, alone, test) of each test that waited


def pytest_runtest_logreport(report):
    if report.when == "setup":
        WAITS.extend((s, alone, report.nodeid) for name, (s, alone) in report.user_properties if name == WAITED)


def pytest_terminal_summary(terminalreporter):
    """The time lost to `alone` tests: an `alone` test waits for the other worker's test to end, then the other
    worker waits for it."""
    if WAITS:
        alone = [(s, test) for s, is_alone, test in WAITS if is_alone]
        others = sum(s for s, is_alone, _ in WAITS if not is_alone)
        terminalreporter.write_line(f"`alone` tests: {', '.join(f'{test} waited {s:.1f} s' for s, test in alone)}; "
                                    f"other tests waited {others:.1f} s for them")


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium through Playwright, one for the whole session (a second sync_playwright in the
    same process fails: its event loop is still running)."""
    from tview_app.testing import CHROMIUM, CHROMIUM_FLAGS
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium")
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def documented_sample(out, per_channel: int = 256, thin_above: int | None = None):
    """The activation sample the README describes, by plain indexing, as [examples, channels, positions]:
    whole examples from the batch's start, enough for `per_channel` values per channel; where one example
    holds more than `thin_above` (on the CPU: per_channel) per channel, every k-th position of the first."""
    n = out[0, 0].numel()
    e = min(out.shape[0], max(1, -(-per_channel // n)))
    x = out[:e].reshape(e, out.shape[1], -1)
    if e == 1 and n > (per_channel if thin_above is None else thin_above):
        x = x[:, :, :: n // per_channel]
    return x

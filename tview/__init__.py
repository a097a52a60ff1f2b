"""tview: see inside the training of convolutional networks, on every rank.

`tview.Recorder` (needs torch) is imported on first use, so `tview.open_run` and `tview.store`
work with only numpy and h5py (as inside ParaView's Python).
"""

from tview.diagnose import diagnose  # numpy only, like the store
from tview.errors import (
    ConfigError,
    CorruptShardError,
    NotARunError,
    RunExistsError,
    SchemaVersionError,
    StoreWriteError,
    TviewError,
)
from tview.store.reader import Run, find_runs, open_run

__version__ = "0.1.0"

_LAZY = {"Recorder": "tview.hooks.recorder", "every": "tview.hooks.schedules",
         "log_spaced": "tview.hooks.schedules", "at_steps": "tview.hooks.schedules",
         "PRESETS": "tview.hooks.schedules", "Preset": "tview.hooks.schedules"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tview' has no attribute {name!r}")


__all__ = ["Recorder", "open_run", "find_runs", "Run", "diagnose", "every", "log_spaced", "at_steps", "PRESETS",
           "Preset", "TviewError", "NotARunError", "CorruptShardError", "SchemaVersionError", "RunExistsError",
           "StoreWriteError", "ConfigError"]

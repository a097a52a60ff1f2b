"""Work-around for Debian's ParaView 5.11 on Python 3.11: its pythonalgorithm module imports
inspect.getargspec, removed in Python 3.11, so no Python plugin loads. Put this folder on the
PYTHONPATH of pvpython/pvbatch/paraview (tview's launcher does)."""

import inspect

if not hasattr(inspect, "getargspec"):
    inspect.getargspec = inspect.getfullargspec

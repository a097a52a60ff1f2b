"""This ParaView process's share of a run's ranks and the MPI exchanges of what it made of them (VTK's MPI
controller; vtk imported lazily): used by the reader of paraview_plugins/tview_plugin.py."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from tview.errors import TviewError
from tview.render import scene, vtk_data

Report = Callable[..., None]  # report(message, error=True): ParaView's output messages


class RankShare:
    """This ParaView process's share of the run's ranks, and the MPI exchange of what it made of them: under
    `mpirun pvbatch` (one piece per process) the ranks (process 0's list) are dealt round robin and partial
    reductions and rank rows travel over VTK's MPI controller; in one process (the GUI, plain pvbatch) process 0
    reads every rank. Every process makes the same exchanges in the same order, whatever it could read."""

    def __init__(self, controller, piece: int, n_pieces: int, report: Report):
        self.controller = controller
        self.report = report
        self.root = piece == 0
        self.piece, self.n_pieces = piece, (n_pieces if controller is not None else 1)
        self.all_ranks, self.ranks = [], []
        self.read = set()
        self.skipped = []

    @classmethod
    def make(cls, run, piece: int, n_pieces: int, collective: bool, report: Report) -> RankShare | None:
        """The share, or None where the run could not be opened (on any process, under MPI)."""
        share = cls(_controller(piece, n_pieces) if collective else None, piece, n_pieces, report)
        if share.controller is None:
            if run is None:
                return None
            share.all_ranks = list(run.ranks)
            share.ranks = share.all_ranks if share.root else []
            return share
        opened = share._all_reduce([1.0 if run is not None else 0.0], "min")[0]
        ranks = share.from_root(run.ranks if run is not None and share.root else [])
        if not opened:
            return None
        share.all_ranks = [int(r) for r in ranks]
        share.ranks = scene.pieces(share.all_ranks, piece, n_pieces)
        share._catch_up(run)
        return share

    @property
    def n_ranks(self):
        return len(self.all_ranks)

    def _catch_up(self, run, seconds=3.0):
        """Look again for shards of this process's ranks that it found not ready while process 0 found them (a
        shard another process was opening just then reads as one being created)."""
        deadline = time.monotonic() + seconds
        while set(self.ranks) - set(run.ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
            run.refresh()

    def done_reading(self):
        self.read.update(self.ranks)
        for rank, why in self.skipped:
            self.report(f"rank {rank} left out: {why}", error=False)
        self.skipped.clear()

    def record(self, output):
        """The ranks this process read, as field data of its output (which process read what is visible)."""
        vtk_data.add_field(output, "tview_ranks_read", np.array(sorted(self.read), dtype=np.int32))

    def on_root(self, make):
        """make() on process 0 (None where it fails, reported), None on the others."""
        if not self.root:
            return None
        try:
            return make()
        except (TviewError, OSError, KeyError, ValueError) as exc:
            self.report(str(exc))
            return None

    def _exchange(self, values, op):
        from vtkmodules.util import numpy_support
        from vtkmodules.vtkCommonCore import vtkDoubleArray
        comm = _communicator()
        send = numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float64), deep=True)
        recv = vtkDoubleArray()
        if op == "gather":
            self.controller.Gather(send, recv, 0)
        elif op in ("min", "max", "sum"):
            self.controller.AllReduce(send, recv, {"min": comm.MIN_OP, "max": comm.MAX_OP, "sum": comm.SUM_OP}[op])
        else:
            self.controller.Reduce(send, recv, op, 0)
        return numpy_support.vtk_to_numpy(recv).copy() if recv.GetNumberOfTuples() else np.zeros(0)

    def _all_reduce(self, values, op):
        return self._exchange(np.asarray(values, dtype=np.float64), op)

    def from_root(self, values):
        """Process 0's values (a 1D array, None: empty) on every process."""
        values = np.zeros(0) if values is None else np.asarray(values, dtype=np.float64).ravel()
        if self.controller is None:
            return values
        n = int(self._all_reduce([len(values) if self.root else 0], "max")[0])
        if not n:
            return np.zeros(0)
        return self._all_reduce(values if self.root else np.zeros(n), "sum")

    def reduce(self, part):
        """The Partial of every process's ranks, on process 0 (None on the others)."""
        if self.controller is None or not part.count.size:
            return part if self.root else None
        comm = _communicator()
        sums, low, high = scene.pack(part)
        out = [self._exchange(sums, comm.SUM_OP), self._exchange(low, comm.MIN_OP),
               self._exchange(high, comm.MAX_OP)]
        return scene.unpack(*out, part.shape) if self.root else None

    def gather(self, rows):
        """Every rank's rows [2, ranks, steps] in rank order on process 0 (None on the others)."""
        if self.controller is None:
            return rows if self.root else None
        block = scene.padded(rows, scene.share_size(self.n_ranks, self.n_pieces))
        flat = self._exchange(block.ravel(), "gather")
        if not self.root:
            return None
        return scene.gathered_rows(list(flat.reshape((self.n_pieces,) + block.shape)), self.n_ranks)


def _communicator():
    from vtkmodules.vtkParallelCore import vtkCommunicator
    return vtkCommunicator


def _controller(piece: int, n_pieces: int):
    """VTK's MPI controller when each of `n_pieces` ParaView processes asks for its own piece; else None."""
    if n_pieces < 2:
        return None
    try:
        from vtkmodules.vtkParallelCore import vtkMultiProcessController
    except ImportError:
        return None
    c = vtkMultiProcessController.GetGlobalController()
    if c is None or c.GetNumberOfProcesses() != n_pieces or c.GetLocalProcessId() != piece:
        return None
    return c

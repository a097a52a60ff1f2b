"""ParaView plugin: a reader for tview runs (training steps as time steps) and two filters
(filter-similarity groups, spread between ranks). Thin proxies over tview.store and tview.render.scene.

Load it with Tools > Manage Plugins > Load New (this file; `tview paraview --plugin-path` prints its folder),
or PV_PLUGIN_PATH=<this folder>, or `tview paraview RUN`. It imports the tview package it ships with (this
folder's parent in an installed tview, or the source tree's tview/ beside it) by its path alone, so ParaView's
own numpy and h5py are used, never a virtualenv's.
"""

import importlib.util
import os
import sys
import time


def _import_tview():
    """Import the tview package next to this plugin without putting its site-packages on sys.path."""
    if "tview" in sys.modules:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    parent = os.path.dirname(here)
    for package in (parent, os.path.join(parent, "tview")):  # installed: tview/paraview_plugins; source tree
        init = os.path.join(package, "__init__.py")
        if os.path.basename(package) == "tview" and os.path.isfile(init):
            spec = importlib.util.spec_from_file_location("tview", init, submodule_search_locations=[package])
            module = importlib.util.module_from_spec(spec)
            sys.modules["tview"] = module
            spec.loader.exec_module(module)
            return
    raise ImportError(f"tview plugin: no tview package found beside {here}")


_import_tview()

import numpy as np  # noqa: E402
from paraview.util.vtkAlgorithm import smdomain, smhint, smproperty, smproxy  # noqa: E402
from vtkmodules.util.vtkAlgorithm import VTKPythonAlgorithmBase  # noqa: E402
from vtkmodules.vtkCommonCore import vtkDataArraySelection  # noqa: E402
from vtkmodules.vtkCommonDataModel import vtkDataObject, vtkMultiBlockDataSet  # noqa: E402
from vtkmodules.vtkCommonExecutionModel import vtkAlgorithm, vtkStreamingDemandDrivenPipeline  # noqa: E402

from tview.errors import TviewError  # noqa: E402
from tview.render import scene, vtk_data  # noqa: E402
from tview.store.reader import open_run  # noqa: E402

BLOCKS = ("network", "trajectories", "filters", "feature_maps", "fields", "feature_volumes", "rank_fields")
RANK_MODE_XML = """<IntVectorProperty name="RankMode" command="SetRankMode" number_of_elements="1" default_values="0">
  <EnumerationDomain name="enum">
    <Entry value="0" text="one rank"/>
    <Entry value="1" text="all ranks (a block each)"/>
    <Entry value="2" text="mean across ranks"/>
    <Entry value="3" text="spread across ranks (max - min)"/>
    <Entry value="4" text="standard deviation across ranks"/>
  </EnumerationDomain>
  <Documentation>How ranks are shown in the network view and the fields (mean, spread and deviation are
  reduced over MPI under mpirun pvbatch: each process reads its share of the ranks).</Documentation>
</IntVectorProperty>"""


def _report(message: str, error: bool = True):
    """An error or warning in ParaView's output messages (and on stderr for pvbatch)."""
    try:
        from paraview import print_error, print_warning
        (print_error if error else print_warning)(f"tview: {message}")
    except ImportError:
        print(f"tview: {message}", file=sys.stderr)


def _modified_callback(algorithm):
    import weakref
    ref = weakref.ref(algorithm)

    def modified(*_):
        a = ref()
        if a is not None:
            a.Modified()
    return modified


def _piece(out_info) -> tuple[int, int]:
    sddp = vtkStreamingDemandDrivenPipeline
    piece = out_info.Get(sddp.UPDATE_PIECE_NUMBER()) if out_info.Has(sddp.UPDATE_PIECE_NUMBER()) else 0
    n = out_info.Get(sddp.UPDATE_NUMBER_OF_PIECES()) if out_info.Has(sddp.UPDATE_NUMBER_OF_PIECES()) else 1
    return int(piece), int(n)


def _tag(data, run, rank, piece, step=None):
    vtk_data.add_field(data, "tview_run", run.path)
    vtk_data.add_field(data, "tview_rank", int(rank))
    vtk_data.add_field(data, "paraview_piece", int(piece))
    if step is not None:
        vtk_data.add_field(data, "tview_step", float(step))
    return data


@smproxy.reader(name="TviewRunReader", label="tview Run Reader", extensions="tview",
                file_description="tview training run")
class TviewRunReader(VTKPythonAlgorithmBase):
    """Reads a tview run (its run.tview manifest): blocks network, trajectories, filters, feature_maps, fields
    (2D ones as cell data, one cell per weight, pixel or layer x step), feature_volumes and rank_fields (a rank x step
    field per selected layer statistic; both on request). Under `mpirun pvbatch` the ranks are shared out among the
    processes: each reads only its own ranks' shards, reductions across ranks and rank rows travel over MPI."""

    def __init__(self):
        VTKPythonAlgorithmBase.__init__(self, nInputPorts=0, nOutputPorts=1, outputType="vtkMultiBlockDataSet")
        self._filename = None
        self._run = None
        self._steps = np.zeros(0)
        self._rank_mode = 0
        self._rank = 0
        self._example = 0
        self._volumes = False
        self._rank_fields = False
        self._field_layer = ""
        self._layers = vtkDataArraySelection()
        self._layers.AddObserver("ModifiedEvent", _modified_callback(self))
        self._stats = vtkDataArraySelection()
        self._stats.AddObserver("ModifiedEvent", _modified_callback(self))

    # -- properties -----------------------------------------------------------------------
    @smproperty.stringvector(name="FileName")
    @smdomain.filelist()
    @smhint.filechooser(extensions="tview", file_description="tview run manifest (run.tview)")
    def SetFileName(self, name):
        if name != self._filename:
            self._filename = name
            if self._run is not None:
                self._run.close()
            self._run = None
            self.Modified()

    @smproperty.doublevector(name="TimestepValues", information_only="1", si_class="vtkSITimeStepsProperty")
    def GetTimestepValues(self):
        return [float(s) for s in self._steps]

    @smproperty.xml(RANK_MODE_XML)
    def SetRankMode(self, mode):
        if int(mode) != self._rank_mode:
            self._rank_mode = int(mode)
            self.Modified()

    @smproperty.intvector(name="Rank", default_values=0)
    @smdomain.intrange(min=0, max=1024)
    def SetRank(self, rank):
        if int(rank) != self._rank:
            self._rank = int(rank)
            self.Modified()

    @smproperty.intvector(name="ProbeExample", default_values=0)
    def SetProbeExample(self, example):
        if int(example) != self._example:
            self._example = int(example)
            self.Modified()

    @smproperty.xml('<IntVectorProperty name="FeatureVolumes" command="SetFeatureVolumes" number_of_elements="1" '
                    'default_values="0"><BooleanDomain name="bool"/><Documentation>Also the probe example\'s '
                    'feature maps as W x H x C volumes (block feature_volumes).</Documentation></IntVectorProperty>')
    def SetFeatureVolumes(self, on):
        if bool(on) != self._volumes:
            self._volumes = bool(on)
            self.Modified()

    @smproperty.xml('<IntVectorProperty name="RankFields" command="SetRankFields" number_of_elements="1" '
                    'default_values="0"><BooleanDomain name="bool"/><Documentation>Also a rank x step field of each '
                    'selected layer statistic (block rank_fields: a row per rank) of the layer RankFieldLayer.'
                    '</Documentation></IntVectorProperty>')
    def SetRankFields(self, on):
        if bool(on) != self._rank_fields:
            self._rank_fields = bool(on)
            self.Modified()

    @smproperty.stringvector(name="RankFieldLayer", default_values="")
    def SetRankFieldLayer(self, layer):
        if layer != self._field_layer:
            self._field_layer = layer
            self.Modified()

    @smproperty.dataarrayselection(name="Layers")
    def GetLayerSelection(self):
        return self._layers

    @smproperty.dataarrayselection(name="Statistics")
    def GetStatisticSelection(self):
        return self._stats

    # -- pipeline -------------------------------------------------------------------------
    def _open(self, strict=True):
        if self._run is None:
            if not self._filename:
                raise TviewError("no run file given")
            self._run = open_run(self._filename, skip_bad_shards=True)
            for rank, why in sorted(self._run.problems.items()):
                _report(f"rank {rank} left out: {why}", error=False)
            for name in self._run.layers:
                if not self._layers.ArrayExists(name):
                    self._layers.AddArray(name)
            for name in scene.statistic_arrays(self._run):
                if not self._stats.ArrayExists(name):
                    self._stats.AddArray(name)
        else:
            self._run.refresh()  # a live run: shards that appeared since, rows are read fresh
        if strict and not self._run.ranks:
            raise TviewError(f"{self._run.path}: no readable shard: " + "; ".join(self._run.problems.values()))
        return self._run

    def RequestInformation(self, request, in_info, out_info):
        sddp = vtkStreamingDemandDrivenPipeline
        info = out_info.GetInformationObject(0)
        info.Remove(sddp.TIME_STEPS())
        info.Remove(sddp.TIME_RANGE())
        info.Set(vtkAlgorithm.CAN_HANDLE_PIECE_REQUEST(), 1)
        try:
            run = self._open()
        except (TviewError, OSError, KeyError, ValueError) as exc:
            _report(str(exc))
            self._steps = np.zeros(0)
            return 1  # ParaView shows the message; the (empty) reader stays usable
        self._steps = scene.time_steps(run).astype(np.float64)
        if len(self._steps):
            info.Set(sddp.TIME_STEPS(), list(self._steps), len(self._steps))
            info.Set(sddp.TIME_RANGE(), [self._steps[0], self._steps[-1]], 2)
        return 1

    def _update_step(self, info):
        sddp = vtkStreamingDemandDrivenPipeline
        if info.Has(sddp.UPDATE_TIME_STEP()) and len(self._steps):
            return float(info.Get(sddp.UPDATE_TIME_STEP()))
        return float(self._steps[-1]) if len(self._steps) else None

    def RequestData(self, request, in_info, out_info):
        info = out_info.GetInformationObject(0)
        output = vtkMultiBlockDataSet.GetData(out_info, 0)
        piece, n_pieces = _piece(info)
        collective = scene.RANK_MODES[self._rank_mode] in scene.REDUCED or self._rank_fields
        run = None
        try:  # under MPI every process goes on to the exchange below, whatever happened here
            run = self._open(strict=not collective)
        except (TviewError, OSError, KeyError, ValueError) as exc:
            _report(str(exc))
        share = _Share.make(run, piece, n_pieces, collective)
        if share is None:
            return 1  # an empty output, a message, no crash
        if not share.all_ranks:
            if share.root:
                _report(f"{run.path}: no readable shard: " + "; ".join(run.problems.values()))
            return 1
        try:
            step = self._update_step(info)
            self._fill(output, run, step, piece, n_pieces, share)
            if step is not None:
                output.GetInformation().Set(vtkDataObject.DATA_TIME_STEP(), step)
        except (TviewError, OSError, KeyError, ValueError) as exc:
            _report(str(exc))
        return 1

    def _selected(self, selection, names):
        return [n for n in names if selection.ArrayIsEnabled(n)]

    def _fill(self, output, run, step, piece, n_pieces, share):
        layers = self._selected(self._layers, run.layers)
        stats = self._selected(self._stats, list(scene.statistic_arrays(run)))
        output.SetNumberOfBlocks(len(BLOCKS))
        for i, name in enumerate(BLOCKS):
            output.GetMetaData(i).Set(vtkMultiBlockDataSet.NAME(), name)
        mode = scene.RANK_MODES[self._rank_mode]
        rank = self._rank if self._rank in share.all_ranks else share.all_ranks[0]
        if mode == "one" and self._rank not in share.all_ranks and share.root:
            _report(f"rank {self._rank} is not readable in {run.path}; showing rank {rank}", error=False)
        tag = lambda data, at=step: _tag(data, run, rank, piece, at)  # noqa: E731
        # blocks every process takes part in (its own ranks; reductions and rows exchanged), in one order
        network = self._network(run, step, layers, stats, mode, rank, piece, n_pieces, share)
        if network is not None:
            output.SetBlock(0, network)
        output.SetBlock(4, self._fields(run, layers, stats, rank, tag, mode, share))
        output.SetBlock(6, self._rank_field_blocks(run, stats, tag, share))
        share.record(output)
        if piece != 0:
            return  # the other views are small: the first process makes them
        builders = ((1, self._trajectories, (run, layers, rank)),
                    (2, self._filters, (run, step, rank)),
                    (3, self._feature_maps, (run, step, rank)),
                    (5, self._feature_volumes, (run, step, rank)))
        for index, build, args in builders:
            output.SetBlock(index, build(*args, tag))

    def _network(self, run, step, layers, stats, mode, rank, piece, n_pieces, share):
        """The network block: this process's share of the ranks when each rank is a block; the reduction of
        every process's share across ranks; else on piece 0."""
        def polydata(p, r):
            data = vtk_data.points_to_polydata(p.positions, p.arrays)
            vtk_data.add_labels(data, p.labels)
            return _tag(data, run, r, piece, step)
        if mode == "all":
            net = vtkMultiBlockDataSet()
            net.SetNumberOfBlocks(len(run.ranks))
            mine = scene.pieces(run.ranks, piece, n_pieces)
            for i, r in enumerate(run.ranks):
                net.GetMetaData(i).Set(vtkMultiBlockDataSet.NAME(), f"rank {r}")
                if r in mine:
                    net.SetBlock(i, polydata(scene.network(run, r, step, layers, stats), r))
            return net
        if mode in scene.REDUCED:
            skeleton = share.on_root(lambda: scene.skeleton(run, share.all_ranks[0], layers))
            points = share.from_root([len(skeleton.positions)] if skeleton is not None else [])
            part = scene.network_partial(run, share.ranks, step, layers, stats, int(points[0]) if len(points) else 0,
                                         share.skipped)
            share.done_reading()
            merged = share.reduce(part)
            if merged is None or skeleton is None:
                return None
            return polydata(scene.network_of(skeleton, stats, merged, mode), rank)
        if piece != 0:
            return None
        return polydata(scene.network(run, rank, step, layers, stats), rank)

    @staticmethod
    def _group(named_blocks):
        group = vtkMultiBlockDataSet()
        group.SetNumberOfBlocks(len(named_blocks))
        for i, (name, block) in enumerate(named_blocks):
            group.GetMetaData(i).Set(vtkMultiBlockDataSet.NAME(), name)
            if block is not None:
                group.SetBlock(i, block)
        return group

    def _trajectories(self, run, layers, rank, tag):
        def path(layer):
            p = scene.trajectory(run, layer, rank)
            if not len(p.positions):
                return None
            data = vtk_data.points_to_polydata(p.positions, p.arrays, line=True)
            vtk_data.add_labels(data, p.labels)
            return tag(data, None)
        return self._group([(layer, path(layer)) for layer in layers])

    @staticmethod
    def _snapshot_ready(run, step, rank):
        snaps = run.snapshot_steps(rank)
        return len(snaps) and snaps[0] <= (step if step is not None else snaps[-1])

    def _filters(self, run, step, rank, tag):
        def block(layer):
            at, g = scene.filter_grid(run, layer, step, rank)
            data = vtk_data.grid(g.values, g.hidden, g.x_edges, g.y_edges, g.name, g.labels)
            vtk_data.add_field(data, "snapshot_step", float(at))
            return tag(data)
        ready = self._snapshot_ready(run, step, rank)
        names = run.manifest.get("filter_layers", [])
        return self._group([(layer, block(layer) if ready else None) for layer in names])

    def _feature_maps(self, run, step, rank, tag):
        """A tile per channel of the probe example, per layer; the example's input picture as block 'input'."""
        names, blocks, picture = run.manifest.get("probe_layers", []), [], None
        ready = self._snapshot_ready(run, step, rank)
        for layer in names:
            block = None
            if ready:
                at, g, picture = scene.feature_grid(run, layer, step, rank, self._example)
                block = vtk_data.grid(g.values, g.hidden, g.x_edges, g.y_edges, g.name, g.labels)
                vtk_data.add_field(block, "snapshot_step", float(at))
                vtk_data.add_field(block, "tview_layer", layer)
                block = tag(block)
            blocks.append((layer, block))
        if picture is not None:
            blocks.append(("input", tag(vtk_data.grid(picture.values, picture.hidden, picture.x_edges,
                                                      picture.y_edges, picture.name, picture.labels))))
        return self._group(blocks)

    def _feature_volumes(self, run, step, rank, tag):
        """Feature maps of the probe example as W x H x C volumes (only when FeatureVolumes is on)."""
        if not self._volumes or not self._snapshot_ready(run, step, rank):
            return self._group([])
        blocks = []
        for layer in run.manifest.get("probe_layers", []):
            at, maps = scene.feature_volume(run, layer, step, rank, self._example)
            img = vtk_data.image(maps, "activation")
            vtk_data.add_field(img, "snapshot_step", float(at))
            blocks.append((layer, tag(img)))
        return self._group(blocks)

    def _fields(self, run, layers, stats, rank, tag, mode, share):
        """Whole-run fields: layer x step for each layer statistic, channel x step for each selected layer's
        per-channel statistics (x: the training step), of one rank or reduced across ranks (every process)."""
        wanted = [(stat, None) for stat in stats if stat in run.stat_names()]
        wanted += [(stat, info["name"]) for stat in stats if stat in run.channel_stat_names()
                   for info in scene.channel_layers(run, layers)]
        reduced = mode in scene.REDUCED
        if not (share.root or reduced):
            return self._group([])

        def block(stat, layer):
            made = self._reduced_field(run, stat, layer, mode, share) if reduced else self._one_rank_field(run, stat,
                                                                                                           layer, rank)
            if made is None or not made[1].values.size:
                return None
            steps, g = made
            data = vtk_data.grid(g.values, g.hidden, g.x_edges, g.y_edges, g.name, g.labels)
            vtk_data.add_field(data, "steps", steps.astype(np.float64))
            if reduced:
                vtk_data.add_field(data, "tview_reduction", mode)
            return tag(data, None)
        return self._group([(stat if layer is None else f"{stat}/{layer}", block(stat, layer))
                            for stat, layer in wanted])

    @staticmethod
    def _one_rank_field(run, stat, layer, rank):
        try:
            return scene.layer_field(run, stat, rank) if layer is None else scene.channel_field(run, stat, layer, rank)
        except KeyError:  # a layer without per-channel values recorded
            return None

    @staticmethod
    def _reduced_field(run, stat, layer, mode, share):
        """(steps, Grid) of a field reduced across every process's ranks (on process 0; None elsewhere). Process 0
        picks the step axis (its first rank's) and sends it: no process reads a rank not its own."""
        ref = share.all_ranks[0]
        if layer is None:
            steps = share.from_root(share.on_root(lambda: scene.field_steps(run, stat, ref)))
            merged = share.reduce(scene.layer_field_partial(run, stat, share.ranks, steps, share.skipped))
            share.done_reading()
            if merged is None or not merged.count.any():
                return None
            return scene.layer_field_of(run, stat, steps, merged, mode)

        def axis():
            steps, channels = scene.channel_steps(run, stat, layer, ref)
            return np.concatenate([[channels], steps]) if len(steps) and channels else None
        head = share.from_root(share.on_root(axis))  # None: no per-channel values for this layer
        if len(head) < 2:
            return None
        steps, channels = head[1:], int(head[0])
        part = scene.channel_field_partial(run, stat, layer, share.ranks, steps, channels, share.skipped)
        share.done_reading()
        merged = share.reduce(part)
        if merged is None or not merged.count.any():
            return None
        return scene.channel_field_of(stat, steps, merged, mode)

    def _rank_field_blocks(self, run, stats, tag, share):
        """A rank x step field per selected layer statistic (when RankFields is on): every process reads its
        ranks' rows, process 0 gathers them and makes the grid."""
        if not self._rank_fields:
            return self._group([])
        blocks = []
        ref = share.all_ranks[0]
        for stat in [s for s in stats if s in run.stat_names()]:
            def axis(stat=stat):  # process 0 picks the layer and the steps, and sends them
                layer = self._field_layer if self._field_layer in run.layers else scene.default_layer(run, stat, ref)
                return np.concatenate([[run.layers.index(layer)], scene.field_steps(run, stat, ref)])
            head = share.from_root(share.on_root(axis))
            if len(head) < 2:  # nothing to show (process 0 found no step): on every process alike
                blocks.append((stat, None))
                continue
            layer, steps = run.layers[int(head[0])], head[1:]
            rows = share.gather(scene.rank_rows(run, stat, layer, share.ranks, steps, share.skipped))
            share.done_reading()
            block = None
            if rows is not None and rows[1].any():
                at, g = scene.rank_field(run, stat, layer, share.all_ranks, steps, rows)
                block = vtk_data.grid(g.values, g.hidden, g.x_edges, g.y_edges, g.name, g.labels)
                vtk_data.add_field(block, "steps", at.astype(np.float64))
                vtk_data.add_field(block, "tview_layer", layer)
                block = tag(block, None)
            blocks.append((stat, block))
        return self._group(blocks)


class _Share:
    """This ParaView process's share of the run's ranks, and the MPI exchange of what it made of them: under
    `mpirun pvbatch` (one piece per process) the ranks (process 0's list) are dealt round robin and partial
    reductions and rank rows travel over VTK's MPI controller; in one process (the GUI, plain pvbatch) process 0
    reads every rank. Every process makes the same exchanges in the same order, whatever it could read."""

    def __init__(self, controller, piece, n_pieces):
        self.controller = controller
        self.root = piece == 0
        self.piece, self.n_pieces = piece, (n_pieces if controller is not None else 1)
        self.all_ranks, self.ranks = [], []
        self.read = set()
        self.skipped = []

    @classmethod
    def make(cls, run, piece, n_pieces, collective):
        """The share, or None where the run could not be opened (on any process, under MPI)."""
        share = cls(_controller(piece, n_pieces) if collective else None, piece, n_pieces)
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
            _report(f"rank {rank} left out: {why}", error=False)
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
            _report(str(exc))
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


def _controller(piece, n_pieces):
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


def _blocks_with_field(data, name):
    """Leaves of a composite dataset (or the dataset itself) that carry field data `name`."""
    out = []
    if data is None:
        return out
    if data.IsA("vtkMultiBlockDataSet"):
        for i in range(data.GetNumberOfBlocks()):
            out += _blocks_with_field(data.GetBlock(i), name)
    elif data.GetFieldData().GetAbstractArray(name) is not None:
        out.append(data)
    return out


@smproxy.filter(name="TviewSimilarityGroups", label="tview Filter Similarity Groups")
@smproperty.input(name="Input", port_index=0)
@smdomain.datatype(dataTypes=["vtkMultiBlockDataSet", "vtkDataObject"], composite_data_supported=True)
class TviewSimilarityGroups(VTKPythonAlgorithmBase):
    """Filters of a layer whose probe activations correlate (Pearson >= Threshold), merged transitively:
    one point per filter (PCA of its activations) with its group, as TensorView's pruning candidates."""

    def __init__(self):
        VTKPythonAlgorithmBase.__init__(self, nInputPorts=1, nOutputPorts=1, outputType="vtkPolyData")
        self._threshold = 0.9
        self._layer = ""

    def FillInputPortInformation(self, port, info):
        info.Set(vtkAlgorithm.INPUT_REQUIRED_DATA_TYPE(), "vtkDataObject")
        return 1

    @smproperty.doublevector(name="Threshold", default_values=0.9)
    @smdomain.doublerange(min=0.0, max=1.0)
    def SetThreshold(self, value):
        if float(value) != self._threshold:
            self._threshold = float(value)
            self.Modified()

    @smproperty.stringvector(name="Layer", default_values="")
    def SetLayer(self, layer):
        if layer != self._layer:
            self._layer = layer
            self.Modified()

    def RequestData(self, request, in_info, out_info):
        from vtkmodules.vtkCommonDataModel import vtkPolyData
        data = self.GetInputData(in_info, 0, 0)
        output = vtkPolyData.GetData(out_info, 0)
        try:
            maps = _blocks_with_field(data, "tview_layer")
            if not maps:
                raise TviewError("no probe feature maps in the input (a tview Run Reader output with a probe batch)")
            chosen = [m for m in maps if m.GetFieldData().GetAbstractArray("tview_layer").GetValue(0) == self._layer]
            block = chosen[0] if chosen else maps[0]
            fd = block.GetFieldData()
            layer = fd.GetAbstractArray("tview_layer").GetValue(0)
            run = open_run(fd.GetAbstractArray("tview_run").GetValue(0), skip_bad_shards=True)
            rank = int(fd.GetArray("tview_rank").GetValue(0))
            step = float(fd.GetArray("snapshot_step").GetValue(0))
            _, maps_all = run.feature_maps(layer, int(step), rank)
            p = scene.similarity(maps_all, self._threshold)
            output.ShallowCopy(vtk_data.points_to_polydata(p.positions, p.arrays))
            vtk_data.add_field(output, "tview_layer", layer)
            vtk_data.add_field(output, "groups", int(p.arrays["group"].max() + 1) if len(p.arrays["group"]) else 0)
            run.close()
        except (TviewError, OSError, KeyError, ValueError) as exc:
            _report(str(exc))
        return 1


@smproxy.filter(name="TviewRankSpread", label="tview Spread Between Ranks")
@smproperty.input(name="Input", port_index=0)
@smdomain.datatype(dataTypes=["vtkMultiBlockDataSet"], composite_data_supported=True)
class TviewRankSpread(VTKPythonAlgorithmBase):
    """From a reader showing all ranks as blocks: the network with <Array>_mean and <Array>_spread
    (max - min across ranks) of the chosen point array."""

    def __init__(self):
        VTKPythonAlgorithmBase.__init__(self, nInputPorts=1, nOutputPorts=1, outputType="vtkPolyData")
        self._array = "act_channel_mean"

    def FillInputPortInformation(self, port, info):
        info.Set(vtkAlgorithm.INPUT_REQUIRED_DATA_TYPE(), "vtkMultiBlockDataSet")
        return 1

    @smproperty.stringvector(name="ArrayName", default_values="act_channel_mean")
    def SetArrayName(self, name):
        if name != self._array:
            self._array = name
            self.Modified()

    def RequestData(self, request, in_info, out_info):
        from vtkmodules.util import numpy_support
        from vtkmodules.vtkCommonDataModel import vtkPolyData
        data = self.GetInputData(in_info, 0, 0)
        output = vtkPolyData.GetData(out_info, 0)
        try:
            net = data.GetBlock(0) if data is not None and data.GetNumberOfBlocks() else None
            ranks = [net.GetBlock(i) for i in range(net.GetNumberOfBlocks())] if net is not None and \
                net.IsA("vtkMultiBlockDataSet") else []
            ranks = [b for b in ranks if b is not None]
            if len(ranks) < 2:
                raise TviewError("the spread between ranks needs the reader's RankMode 'all ranks' and 2+ ranks")
            blocks = []
            for b in ranks:
                pdata = b.GetPointData()
                arrays = {pdata.GetArrayName(i): numpy_support.vtk_to_numpy(pdata.GetArray(i))
                          for i in range(pdata.GetNumberOfArrays())}
                blocks.append(scene.Points(numpy_support.vtk_to_numpy(b.GetPoints().GetData()), arrays))
            p = scene.spread_of(blocks, self._array)
            output.ShallowCopy(vtk_data.points_to_polydata(p.positions, p.arrays))
        except (TviewError, KeyError, ValueError) as exc:
            _report(str(exc))
        return 1

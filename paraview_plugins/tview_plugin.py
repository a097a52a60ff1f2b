"""ParaView plugin: a reader for tview runs (training steps as time steps) and two filters
(filter-similarity groups, spread between ranks). Thin proxies over tview.store and tview.render.scene.

Load it with Tools > Manage Plugins > Load New (this file), or PV_PLUGIN_PATH=<this folder>, or
`tview paraview RUN`. It imports the tview sources next to this folder, with ParaView's own numpy and h5py.
"""

import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import numpy as np  # noqa: E402
from paraview.util.vtkAlgorithm import smdomain, smhint, smproperty, smproxy  # noqa: E402
from vtkmodules.util.vtkAlgorithm import VTKPythonAlgorithmBase  # noqa: E402
from vtkmodules.vtkCommonCore import vtkDataArraySelection  # noqa: E402
from vtkmodules.vtkCommonDataModel import vtkDataObject, vtkMultiBlockDataSet  # noqa: E402
from vtkmodules.vtkCommonExecutionModel import vtkAlgorithm, vtkStreamingDemandDrivenPipeline  # noqa: E402

from tview.errors import TviewError  # noqa: E402
from tview.render import scene, vtk_data  # noqa: E402
from tview.store.reader import open_run  # noqa: E402

BLOCKS = ("network", "trajectories", "filters", "feature_maps", "fields")
RANK_MODE_XML = """<IntVectorProperty name="RankMode" command="SetRankMode" number_of_elements="1" default_values="0">
  <EnumerationDomain name="enum">
    <Entry value="0" text="one rank"/>
    <Entry value="1" text="all ranks (a block each)"/>
    <Entry value="2" text="mean across ranks"/>
    <Entry value="3" text="spread across ranks (max - min)"/>
  </EnumerationDomain>
  <Documentation>How ranks are shown in the network view.</Documentation>
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
    """Reads a tview run (its run.tview manifest): blocks network, trajectories, filters, feature_maps, fields."""

    def __init__(self):
        VTKPythonAlgorithmBase.__init__(self, nInputPorts=0, nOutputPorts=1, outputType="vtkMultiBlockDataSet")
        self._filename = None
        self._run = None
        self._steps = np.zeros(0)
        self._rank_mode = 0
        self._rank = 0
        self._example = 0
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

    @smproperty.dataarrayselection(name="Layers")
    def GetLayerSelection(self):
        return self._layers

    @smproperty.dataarrayselection(name="Statistics")
    def GetStatisticSelection(self):
        return self._stats

    # -- pipeline -------------------------------------------------------------------------
    def _open(self):
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
        if not self._run.ranks:
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
        try:
            run = self._open()
            step = self._update_step(info)
            piece, n_pieces = _piece(info)
            self._fill(output, run, step, piece, n_pieces)
            if step is not None:
                output.GetInformation().Set(vtkDataObject.DATA_TIME_STEP(), step)
        except (TviewError, OSError, KeyError, ValueError) as exc:
            _report(str(exc))
            return 1  # an empty output, a message, no crash
        return 1

    def _selected(self, selection, names):
        return [n for n in names if selection.ArrayIsEnabled(n)]

    def _fill(self, output, run, step, piece, n_pieces):
        layers = self._selected(self._layers, run.layers)
        stats = self._selected(self._stats, list(scene.statistic_arrays(self._run)))
        output.SetNumberOfBlocks(len(BLOCKS))
        for i, name in enumerate(BLOCKS):
            output.GetMetaData(i).Set(vtkMultiBlockDataSet.NAME(), name)
        mode = scene.RANK_MODES[self._rank_mode]
        rank = self._rank if self._rank in run.ranks else run.ranks[0]
        if mode == "one" and self._rank not in run.ranks:
            _report(f"rank {self._rank} is not readable in {run.path}; showing rank {rank}", error=False)

        # network: this process's share of the ranks when each rank is a block
        if mode == "all":
            net = vtkMultiBlockDataSet()
            net.SetNumberOfBlocks(len(run.ranks))
            mine = scene.pieces(run.ranks, piece, n_pieces)
            for i, r in enumerate(run.ranks):
                net.GetMetaData(i).Set(vtkMultiBlockDataSet.NAME(), f"rank {r}")
                if r in mine:
                    p = scene.network(run, r, step, layers, stats)
                    net.SetBlock(i, _tag(vtk_data.points_to_polydata(p.positions, p.arrays), run, r, piece, step))
            output.SetBlock(0, net)
        elif piece == 0:
            if mode == "one":
                p = scene.network(run, rank, step, layers, stats)
            else:
                p = scene.combine([scene.network(run, r, step, layers, stats) for r in run.ranks], mode)
            output.SetBlock(0, _tag(vtk_data.points_to_polydata(p.positions, p.arrays), run, rank, piece, step))
        if piece != 0:
            return  # the other views are small: the first process makes them

        traj = vtkMultiBlockDataSet()
        traj.SetNumberOfBlocks(len(layers))
        for i, layer in enumerate(layers):
            traj.GetMetaData(i).Set(vtkMultiBlockDataSet.NAME(), layer)
            p = scene.trajectory(run, layer, rank)
            if len(p.positions):
                traj.SetBlock(i, _tag(vtk_data.points_to_polydata(p.positions, p.arrays, line=True), run, rank, piece))
        output.SetBlock(1, traj)

        snaps = run.snapshot_steps(rank)
        for block, names, make in ((2, run.manifest.get("filter_layers", []), self._filters),
                                   (3, run.manifest.get("probe_layers", []), self._feature_maps)):
            group = vtkMultiBlockDataSet()
            group.SetNumberOfBlocks(len(names))
            for i, layer in enumerate(names):
                group.GetMetaData(i).Set(vtkMultiBlockDataSet.NAME(), layer)
                if len(snaps) and snaps[0] <= (step if step is not None else snaps[-1]):
                    group.SetBlock(i, _tag(make(run, layer, step, rank), run, rank, piece, step))
            output.SetBlock(block, group)

        # whole-run fields: layer x step for each layer statistic, channel x step for each selected
        # layer's per-channel statistics (x: step index, drawn about a third as tall as wide)
        wanted = [(stat, None) for stat in stats if stat in run.stat_names()]
        wanted += [(stat, info["name"]) for stat in stats if stat in run.channel_stat_names()
                   for info in scene.channel_layers(run, layers)]
        fields = vtkMultiBlockDataSet()
        fields.SetNumberOfBlocks(len(wanted))
        for i, (stat, layer) in enumerate(wanted):
            fields.GetMetaData(i).Set(vtkMultiBlockDataSet.NAME(), stat if layer is None else f"{stat}/{layer}")
            try:
                steps, values = (scene.layer_field(run, stat, rank) if layer is None
                                 else scene.channel_field(run, stat, layer, rank))
            except KeyError:  # a layer without per-channel values recorded
                continue
            if values.size:
                img = vtk_data.image(values, stat, spacing=(1.0, max(1.0, values.shape[1] / (3.0 * len(values))), 1.0))
                vtk_data.add_field(img, "steps", steps.astype(np.float64))
                fields.SetBlock(i, _tag(img, run, rank, piece))
        output.SetBlock(4, fields)

    def _filters(self, run, layer, step, rank):
        at, tiles = scene.filter_tiles(run, layer, step, rank)
        img = vtk_data.image(tiles, "weight")
        vtk_data.add_field(img, "snapshot_step", float(at))
        return img

    def _feature_maps(self, run, layer, step, rank):
        at, maps = scene.feature_volume(run, layer, step, rank, self._example)
        img = vtk_data.image(maps, "activation")
        vtk_data.add_field(img, "snapshot_step", float(at))
        vtk_data.add_field(img, "tview_layer", layer)
        return img


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

"""ParaView plugin: a reader for tview runs (training steps as time steps) and four filters (one block of the
reader's output, a caption naming what a block shows, filter-similarity groups, spread between ranks). Thin
proxies over tview.store and tview.render (the blocks come from tview.render.blocks.BUILDERS, the MPI share from
tview.render.mpi_share).

Load it with Tools > Manage Plugins > Load New (this file; `tview paraview --plugin-path` prints its folder),
or PV_PLUGIN_PATH=<this folder>, or `tview paraview RUN`. It imports the tview package it ships with (this
folder's parent in an installed tview, or the source tree's tview/ beside it) by its path alone, so ParaView's
own numpy and h5py are used, never a virtualenv's.
"""

import importlib.util
import os
import sys


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
from tview.render import blocks, scene, vtk_data  # noqa: E402
from tview.render.mpi_share import RankShare  # noqa: E402
from tview.render.views import RANK_MODES, REDUCED  # noqa: E402
from tview.store.reader import open_run  # noqa: E402

RANK_MODE_TEXT = {"one": "one rank", "all": "all ranks (a block each)", "mean": "mean across ranks",
                  "spread": "spread across ranks (max - min)", "std": "standard deviation across ranks"}
RANK_MODE_XML = ('<IntVectorProperty name="RankMode" command="SetRankMode" number_of_elements="1" default_values="0">'
                 '<EnumerationDomain name="enum">'
                 + "".join(f'<Entry value="{i}" text="{RANK_MODE_TEXT[m]}"/>' for i, m in enumerate(RANK_MODES))
                 + '</EnumerationDomain><Documentation>How ranks are shown in the network view and the fields (mean, '
                 'spread and deviation are reduced over MPI under mpirun pvbatch: each process reads its share of the '
                 'ranks).</Documentation></IntVectorProperty>')
# Rank offers the run's own ranks: an IntRangeDomain updated from the information-only RankRange (0, world_size - 1),
# which ParaView fetches from GetRankRange after each RequestInformation (vtkSMRangeDomainTemplate::Update takes a
# required property's two values as the range's min and max)
RANK_XML = ('<IntVectorProperty name="RankRange" command="GetRankRange" information_only="1" number_of_elements="2" '
            'default_values="0 0"/>'
            '<IntVectorProperty name="Rank" command="SetRank" number_of_elements="1" default_values="0">'
            '<IntRangeDomain name="range" default_mode="min"><RequiredProperties>'
            '<Property name="RankRange" function="RangeInfo"/></RequiredProperties></IntRangeDomain>'
            '<Documentation>The rank shown when RankMode is one rank (0 to the run\'s world size - 1).</Documentation>'
            '</IntVectorProperty>')


PLAIN_REPRESENTATION = "Point Gaussian"  # ParaView sizes its dots from the data's extent: visible at any size


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


def _enable_only(selection, names, enabled):
    for name in names:
        selection.AddArray(name)
        if name not in enabled:
            selection.DisableArray(name)


@smproxy.reader(name="TviewRunReader", label="tview Run Reader", extensions="tview",
                file_description="tview training run")
@smhint.xml(f'<RepresentationType view="RenderView" type="{PLAIN_REPRESENTATION}" />')
class TviewRunReader(VTKPythonAlgorithmBase):
    """Reads a tview run (its run.tview manifest) into the blocks of tview.render.blocks.BUILDERS that are ticked
    in Blocks (only the network at first: one picture, not every block on top of another). A plain File > Open and
    Apply shows it readable as it is: the layers side by side facing ParaView's default camera (scene.network_layout),
    each channel a shaded dot (the representation hint; Points drew one pixel each), coloured by a statistic every
    layer has from the first step on (views.network_colour). Under `mpirun pvbatch`
    the ranks are shared out among the processes: each reads only its own ranks' shards, reductions across ranks
    and rank rows travel over MPI."""

    def __init__(self):
        VTKPythonAlgorithmBase.__init__(self, nInputPorts=0, nOutputPorts=1, outputType="vtkMultiBlockDataSet")
        self._filename = None
        self._run = None
        self._steps = np.zeros(0)
        self._rank_mode, self._rank, self._example, self._field_layer = 0, 0, 0, ""
        self._selections = {}
        for name in ("layers", "stats", "blocks"):
            self._selections[name] = vtkDataArraySelection()
            self._selections[name].AddObserver("ModifiedEvent", _modified_callback(self))
        _enable_only(self._selections["blocks"], blocks.BLOCKS, blocks.DEFAULT_BLOCKS)

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

    def _set(self, attribute, value):
        """Store a property's value; Modified() only when it changes."""
        if value != getattr(self, attribute):
            setattr(self, attribute, value)
            self.Modified()

    @smproperty.xml(RANK_MODE_XML)
    def SetRankMode(self, mode):
        self._set("_rank_mode", int(mode))

    @smproperty.xml(RANK_XML)
    def SetRank(self, rank):
        self._set("_rank", int(rank))

    def GetRankRange(self):
        return list(blocks.rank_range(self._run))

    @smproperty.intvector(name="ProbeExample", default_values=0)
    def SetProbeExample(self, example):
        self._set("_example", int(example))

    @smproperty.stringvector(name="RankFieldLayer", default_values="")
    def SetRankFieldLayer(self, layer):
        self._set("_field_layer", layer)

    @smproperty.dataarrayselection(name="Blocks")
    def GetBlockSelection(self):
        return self._selections["blocks"]

    @smproperty.dataarrayselection(name="Layers")
    def GetLayerSelection(self):
        return self._selections["layers"]

    @smproperty.dataarrayselection(name="Statistics")
    def GetStatisticSelection(self):
        return self._selections["stats"]

    # -- pipeline -------------------------------------------------------------------------
    def _open(self, strict=True):
        if self._run is None:
            if not self._filename:
                raise TviewError("no run file given")
            self._run = open_run(self._filename, skip_bad_shards=True)
            for rank, why in sorted(self._run.problems.items()):
                _report(f"rank {rank} left out: {why}", error=False)
            for key, names in (("layers", self._run.layers), ("stats", scene.statistic_arrays(self._run))):
                for name in names:
                    if not self._selections[key].ArrayExists(name):
                        self._selections[key].AddArray(name)
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

    def _selected(self, key, names):
        return [n for n in names if self._selections[key].ArrayIsEnabled(n)]

    def RequestData(self, request, in_info, out_info):
        info = out_info.GetInformationObject(0)
        output = vtkMultiBlockDataSet.GetData(out_info, 0)
        piece, n_pieces = _piece(info)
        mode = RANK_MODES[self._rank_mode]
        wanted = self._selected("blocks", blocks.BLOCKS)
        collective = mode in REDUCED or "rank_fields" in wanted
        run = None
        try:  # under MPI every process goes on to the exchange below, whatever happened here
            run = self._open(strict=not collective)
        except (TviewError, OSError, KeyError, ValueError) as exc:
            _report(str(exc))
        share = RankShare.make(run, piece, n_pieces, collective, _report)
        if share is None:
            return 1  # an empty output, a message, no crash
        if not share.all_ranks:
            if share.root:
                _report(f"{run.path}: no readable shard: " + "; ".join(run.problems.values()))
            return 1
        try:
            step = self._update_step(info)
            blocks.fill(output, self._request(run, step, mode, piece, n_pieces, share), wanted)
            if step is not None:
                output.GetInformation().Set(vtkDataObject.DATA_TIME_STEP(), step)
        except (TviewError, OSError, KeyError, ValueError) as exc:
            _report(str(exc))
        return 1

    def _request(self, run, step, mode, piece, n_pieces, share):
        rank, why = blocks.shown_rank(run, self._rank, share.all_ranks)
        if why and mode == "one" and share.root:
            _report(why, error=False)
        return blocks.Request(run, step, self._selected("layers", run.layers),
                              self._selected("stats", list(scene.statistic_arrays(run))), rank, mode, piece, n_pieces,
                              share, self._example, self._field_layer)


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


class _Blank(dict):
    def __missing__(self, key):
        return "?"


def caption_fields(data) -> dict:
    """What a reader block says about itself (field data), for a caption's {run} {ranks} {rank} {layer} {step}."""
    fd = data.GetFieldData()
    out = {}
    for key, name in (("run", "tview_run_name"), ("ranks", "tview_ranks"), ("layer", "tview_layer")):
        arr = fd.GetAbstractArray(name)
        if arr is not None:
            out[key] = arr.GetValue(0)
    for key, name in (("rank", "tview_rank"), ("step", "tview_step")):
        arr = fd.GetArray(name)
        if arr is not None:
            out[key] = f"{arr.GetValue(0):.0f}"
    return out


@smproxy.filter(name="TviewCaption", label="tview Caption")
@smhint.xml('<OutputPort name="Output" index="0" type="text" />')
@smproperty.input(name="Input", port_index=0)
@smdomain.datatype(dataTypes=["vtkDataObject"], composite_data_supported=True)
class TviewCaption(VTKPythonAlgorithmBase):
    """A text naming what a tview block shows at the current time: Template filled from the block's own field
    data ({run}, {ranks}, {rank}, {layer}, {step}: the step of the data shown, e.g. a filter snapshot's)."""

    def __init__(self):
        VTKPythonAlgorithmBase.__init__(self, nInputPorts=1, nOutputPorts=1, outputType="vtkTable")
        self._template = "{run} · {ranks} · step {step}"

    def FillInputPortInformation(self, port, info):
        info.Set(vtkAlgorithm.INPUT_REQUIRED_DATA_TYPE(), "vtkDataObject")
        return 1

    @smproperty.stringvector(name="Template", default_values="{run} · {ranks} · step {step}")
    def SetTemplate(self, template):
        if template != self._template:
            self._template = template
            self.Modified()

    def RequestData(self, request, in_info, out_info):
        from vtkmodules.vtkCommonCore import vtkStringArray
        from vtkmodules.vtkCommonDataModel import vtkTable
        leaves = _blocks_with_field(self.GetInputData(in_info, 0, 0), "tview_run")
        text = vtkStringArray()
        text.SetName("Text")
        text.InsertNextValue(self._template.format_map(_Blank(caption_fields(leaves[0]))) if leaves else "")
        vtkTable.GetData(out_info, 0).AddColumn(text)
        return 1


@smproxy.filter(name="TviewBlock", label="tview Block")
@smproperty.input(name="Input", port_index=0)
@smdomain.datatype(dataTypes=["vtkMultiBlockDataSet"], composite_data_supported=True)
class TviewBlock(VTKPythonAlgorithmBase):
    """One block of a tview reader's output, named by its Path of block names ('network', 'filters/conv2'), as a
    multiblock of that block alone: ExtractBlock with a plain text property. (ExtractBlock's selector widget in the
    GUI sets its selectors again whenever the input's block list is updated, which marks the filter modified: the
    Apply button was lit at the start of `tview paraview` with nothing to apply.)"""

    def __init__(self):
        VTKPythonAlgorithmBase.__init__(self, nInputPorts=1, nOutputPorts=1, outputType="vtkMultiBlockDataSet")
        self._path = "network"

    def FillInputPortInformation(self, port, info):
        info.Set(vtkAlgorithm.INPUT_REQUIRED_DATA_TYPE(), "vtkMultiBlockDataSet")
        return 1

    @smproperty.stringvector(name="Path", default_values="network")
    def SetPath(self, path):
        if path != self._path:
            self._path = path
            self.Modified()

    def RequestData(self, request, in_info, out_info):
        output = vtkMultiBlockDataSet.GetData(out_info, 0)
        block = blocks.pick(vtkMultiBlockDataSet.GetData(in_info[0], 0), self._path)
        output.SetNumberOfBlocks(1)
        output.GetMetaData(0).Set(vtkMultiBlockDataSet.NAME(), (blocks.path_parts(self._path) or [""])[-1])
        if block is not None:
            copy = block.NewInstance()
            copy.ShallowCopy(block)
            output.SetBlock(0, copy)
        return 1


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
            maps = [m for m in _blocks_with_field(data, "tview_layer") if m.GetCellData().GetArray("activation")]
            if not maps:
                raise TviewError("no probe feature maps in the input (a tview Run Reader output with a probe batch)")
            chosen = [m for m in maps if m.GetFieldData().GetAbstractArray("tview_layer").GetValue(0) == self._layer]
            block = chosen[0] if chosen else maps[0]
            fd = block.GetFieldData()
            layer = fd.GetAbstractArray("tview_layer").GetValue(0)
            run = open_run(fd.GetAbstractArray("tview_run").GetValue(0), skip_bad_shards=True)
            rank = int(fd.GetArray("tview_rank").GetValue(0))
            step = float(fd.GetArray("tview_step").GetValue(0))
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

"""Run by pvbatch in the ParaView tests: loads the tview plugin, reads a run and prints what ParaView
got as one JSON line (PROBE {...}), for the test to compare with tview.open_run."""

import json
import os
import sys
import time as _time  # `time` is main()'s requested time step

from paraview import servermanager as sm
from paraview import simple as pv
from vtkmodules.util import numpy_support

PLUGIN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "paraview_plugins", "tview_plugin.py")


def arrays_of(data):
    pd = data.GetPointData()
    return {pd.GetArrayName(i): numpy_support.vtk_to_numpy(pd.GetArray(i)).tolist()
            for i in range(pd.GetNumberOfArrays())}


def field(data, name):
    arr = data.GetFieldData().GetAbstractArray(name)
    if arr is None:
        return None
    return arr.GetValue(0)


def describe(data):
    if data is None:
        return None
    if data.IsA("vtkMultiBlockDataSet"):
        read = data.GetFieldData().GetArray("tview_ranks_read")
        return {"blocks": {data.GetMetaData(i).Get(data.NAME()) if data.HasMetaData(i) else str(i):
                           describe(data.GetBlock(i)) for i in range(data.GetNumberOfBlocks())},
                "ranks_read": numpy_support.vtk_to_numpy(read).tolist() if read is not None else None}
    out = {"class": data.GetClassName(), "points": data.GetNumberOfPoints(), "arrays": arrays_of(data),
           "tview_rank": field(data, "tview_rank"), "piece": field(data, "paraview_piece"),
           "snapshot_step": field(data, "tview_step"), "reduction": field(data, "tview_reduction"),
           "tview_layer": field(data, "tview_layer")}
    if data.IsA("vtkImageData") or data.IsA("vtkRectilinearGrid"):
        out["dimensions"] = list(data.GetDimensions())
        cd = data.GetCellData()
        out["cell_arrays"] = {cd.GetArrayName(i): numpy_support.vtk_to_numpy(cd.GetArray(i)).tolist()
                              for i in range(cd.GetNumberOfArrays())}
    texts = data.GetFieldData().GetAbstractArray("label_text")
    out["labels"] = [texts.GetValue(i) for i in range(texts.GetNumberOfValues())] if texts is not None else []
    if data.IsA("vtkPolyData"):
        out["positions"] = numpy_support.vtk_to_numpy(data.GetPoints().GetData()).tolist() if data.GetPoints() else []
        out["lines"] = data.GetNumberOfLines()
    return out


def timesteps(reader) -> list:
    """The reader's time steps as a list (ParaView gives a bare number for a single step)."""
    values = reader.TimestepValues
    return [] if values is None else (list(values) if hasattr(values, "__len__") else [values])


def reload_until_more(reader, than: int, deadline: float) -> list:
    """File > Reload Files, again and again, until the reader lists more than `than` steps or the deadline (a
    time.monotonic() value) passes; the steps it lists then."""
    while True:
        pv.ReloadFiles(reader)
        reader.UpdatePipelineInformation()
        steps = timesteps(reader)
        if len(steps) > than or _time.monotonic() > deadline:
            return steps
        _time.sleep(0.3)


def main():
    args = json.loads(sys.argv[1])
    pv.LoadPlugin(PLUGIN)
    reader = pv.tviewRunReader(FileName=args["file"])
    from tview.render.blocks import BLOCKS  # the plugin has imported its tview
    reader.Blocks = [name for name in BLOCKS if name != "rank_fields"]  # every block but the collective rank rows
    for key, value in args.get("properties", {}).items():
        setattr(reader, key, value)
    reader.UpdatePipelineInformation()
    steps = timesteps(reader)
    if args.get("reload_until_more"):  # a run still being written: reloaded until it lists a step
        reload_deadline = _time.monotonic() + args["reload_until_more"]
        steps = steps or reload_until_more(reader, 0, reload_deadline)
    time = args.get("time", steps[-1] if steps else None)
    result = {"steps": steps, "layers": list(reader.GetProperty("LayersInfo")[::2])
              if reader.GetProperty("LayersInfo") else [], "time": time}
    domain = reader.GetProperty("Rank").FindDomain("vtkSMIntRangeDomain")  # what the GUI's Rank slider offers
    result["rank_domain"] = [domain.GetMinimum(0), domain.GetMaximum(0)] if domain else None
    if args.get("reload_until_more"):  # File > Reload Files until the writer's next flush shows more steps
        result["steps_after_reload"] = reload_until_more(reader, len(steps), reload_deadline)
    if args.get("fetch", True) and steps:
        reader.UpdatePipeline(time)
        result["data"] = describe(sm.Fetch(reader))
    if args.get("caption") and steps:  # {"block": "/Root/filters/conv2", "template": "..."}
        part = pv.tviewBlock(Input=reader, Path=args["caption"]["block"])
        text = pv.tviewCaption(Input=part, Template=args["caption"]["template"])
        text.UpdatePipeline(time)
        result["caption"] = sm.Fetch(text).GetColumnByName("Text").GetValue(0)
    if args.get("similarity") and steps:
        sim = pv.tviewFilterSimilarityGroups(Input=reader, Layer=args["similarity"]["layer"],
                                             Threshold=args["similarity"]["threshold"])
        sim.UpdatePipeline(time)
        result["similarity"] = describe(sm.Fetch(sim))
    if args.get("spread") and steps:
        spread = pv.tviewSpreadBetweenRanks(Input=reader, ArrayName=args["spread"])
        spread.UpdatePipeline(time)
        result["spread"] = describe(sm.Fetch(spread))
    print("PROBE " + json.dumps(result))
    sys.stdout.flush()


main()

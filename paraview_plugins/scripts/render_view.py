"""pvbatch script behind `tview render`: one view of a run (or the four-view layout) to a PNG, or a movie's
frames (one per recorded step, shared out among the processes of `mpirun -np N pvbatch --no-mpi`).

    [mpirun -np N] pvbatch render_view.py RUN OUT.png
        [--view network|trajectory|filters|feature_maps|field|rank_field|layout]
        [--ranks one|mean|spread|std] [--step N] [--array NAME] [--rank R] [--layer NAME] [--example K]
        [--size 1000x800] [--animate [--frames N]]

Under `mpirun -np N pvbatch` (MPI on) the reader's processes share the run's ranks: `--ranks mean|spread|std`
(network and field views) and the rank x step field are reduced or gathered over MPI, each process reading only
its own ranks' shards.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tview_views as tv  # noqa: E402

VIEWS = tuple(tv.VIEWS) + ("layout",)
RANKS = tuple(m for m in tv.RANK_MODES if m != "all")  # "all" (a block per rank) is the reader's, not a picture's


def parse():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--view", choices=VIEWS, default="network")
    ap.add_argument("--step", type=float, default=None)
    ap.add_argument("--array", default=None)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--ranks", choices=RANKS, default="one",
                    help="network and field views: one rank (--rank), or reduced across every rank")
    ap.add_argument("--layer", default=None, help="the one layer whose filters/feature maps/trajectory/rank field "
                                                  "to show")
    ap.add_argument("--example", type=int, default=0, help="the probe example whose feature maps to show")
    ap.add_argument("--size-by", default=None, help="network: size the glyphs by this statistic")
    ap.add_argument("--size", default=None, help="WIDTHxHEIGHT (default 1000x800, layout 1600x1200)")
    ap.add_argument("--animate", action="store_true", help="one frame per recorded step: OUT's folder/frame_*.png")
    ap.add_argument("--frames", type=int, default=None, help="with --animate: this many steps, evenly picked")
    return ap.parse_args()


def process_share():
    """(this process, number of processes) under `mpirun pvbatch --no-mpi` (each process renders alone); (0, 1)
    when pvbatch runs MPI itself (then only process 0 runs this script: it renders every frame)."""
    from paraview import servermanager
    if servermanager.vtkProcessModule.GetProcessModule().GetNumberOfLocalPartitions() > 1:
        return 0, 1
    for rank, size in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE")):
        if rank in os.environ:
            return int(os.environ[rank]), int(os.environ.get(size, 1))
    return 0, 1


def process_count():
    from paraview import servermanager
    return servermanager.vtkProcessModule.GetProcessModule().GetNumberOfLocalPartitions()


def build(a, manifest, reader, size):
    """The view (or layout) asked for; returns (what to screenshot, views, label texts)."""
    if a.view == "layout":
        tv.read_blocks(reader, tv.LAYOUT, a.array)
        lay, views, labels = tv.layout(reader, manifest, size, a.array, a.layer)
        return lay, views, labels
    tv.read_blocks(reader, [a.view], a.array)  # only the block shown, only the statistics shown are read
    if a.size_by:
        reader.Statistics = list(reader.Statistics) + [a.size_by]
    if a.view == "rank_field":
        reader.RankFieldLayer = a.layer or ""
    reader.UpdatePipelineInformation()
    view = tv.new_view(size)
    labels = tv.show(reader, view, a.view, a.array, tv.default_layer(manifest, a.view, a.layer), a.size_by)
    return view, [view], labels


def pick_frames(steps, frames):
    if not frames or frames >= len(steps):
        return list(steps)
    return [steps[round(i * (len(steps) - 1) / max(frames - 1, 1))] for i in range(frames)]


def animate(a, target, views, steps, size):
    me, n = process_share()
    chosen = pick_frames(steps, a.frames)
    folder = os.path.dirname(os.path.abspath(a.out))
    started = time.time()
    for i in range(me, len(chosen), n):
        for view in views:
            view.ViewTime = chosen[i]
        tv.pv.SaveScreenshot(os.path.join(folder, f"frame_{i:05d}.png"), target, ImageResolution=size)
        print(f"frame {i + 1}/{len(chosen)}: step {int(chosen[i])} (process {me} of {n}, "
              f"{time.time() - started:.1f} s)", flush=True)


def main():
    a = parse()
    manifest = a.run if a.run.endswith("run.tview") else os.path.join(a.run, "run.tview")
    reader = tv.open_run(manifest, a.rank, a.example)
    reader.RankMode = tv.RANK_MODES.index(a.ranks)
    steps = tv.steps_of(reader)
    if not steps:
        print(f"tview render: {a.run}: nothing to render (no readable recorded step)", file=sys.stderr)
        sys.stdout.flush()
        os._exit(2)
    step = steps[-1] if a.step is None else max([s for s in steps if s <= a.step] or steps[:1])
    tv.pv.GetAnimationScene().UpdateAnimationUsingDataTimeSteps()
    tv.pv.GetAnimationScene().AnimationTime = step
    size = [int(v) for v in (a.size or ("1600x1200" if a.view == "layout" else "1000x800")).split("x")]
    target, views, labels = build(a, manifest, reader, size)
    for view in views:
        view.ViewTime = step
        if process_count() > 1:
            tv.backdrop(view)  # else the labels beside the data are clipped in the composited picture
    if a.animate:
        animate(a, target, views, steps, size)  # each view's caption names the step of its data
    else:
        print("rendering", flush=True)  # the launcher's mark: a picture hung under mpirun is started again
        tv.pv.SaveScreenshot(a.out, target, ImageResolution=size)
        if os.path.isfile(a.out) and os.path.getsize(a.out):  # VTK says its failures, then goes on
            print(f"wrote {a.out}: {a.view} at step {int(step)} ({process_count()} ParaView processes)")
    print("labels: " + "|".join(text for text, _ in labels))
    sys.stdout.flush()  # and end normally: sys.exit after rendering trips a GLX error at teardown


if __name__ == "__main__":
    main()

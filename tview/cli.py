"""Command line: tview demo | info | diagnose | export | upgrade | dashboard | render | paraview."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

from tview.errors import TviewError


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def info_text(path: str) -> str:
    """A readable summary of a run: ranks, steps, layers, what was recorded, sizes."""
    from tview.render.summaries import schedule_text
    from tview.store import schema
    from tview.store.reader import open_run

    run = open_run(path, skip_bad_shards=True)
    m = run.manifest
    lines = [f"run      {os.path.abspath(run.path)}",
             f"model    {m.get('model')}  preset {m.get('preset')}  schedule {schedule_text(m)}  "
             f"snapshots {m.get('snapshot_schedule')}",
             f"ranks    {run.world_size} expected, {len(run.ranks)} readable"]
    summaries = run.rank_summaries()  # one small file per rank: no shard opened for this part
    lines.append("")
    lines += _rank_lines(run, summaries)
    stopped = run.stopped_ranks()
    if stopped and len(run.ranks) > 0:
        lines.append("stopped early (not closed, behind the others): " +
                     ", ".join(f"rank {r} at step {s}" for r, s in list(stopped.items())[:RANK_ROWS]) +
                     (f" and {len(stopped) - RANK_ROWS} more" if len(stopped) > RANK_ROWS else ""))
    if run.ranks:
        r0 = run.ranks[0]
        lines.append("")
        lines.append(f"recorded (rank {r0}): {run.table_length(schema.TABLE_SNAPSHOTS, r0)} snapshots (filters of "
                     f"{len(m.get('filter_layers', []))} layers, feature maps of {len(m.get('probe_layers', []))})")
        lines += _table_lines(run, r0)
        names = run.scalar_names(r0)
        lines.append("scalars: " + ", ".join(names))
        if "loss" in names:
            steps, loss = run.scalar("loss", r0)
            if len(steps):
                lines.append(f"loss: {loss[0]:.4g} at step {steps[0]} -> {loss[-1]:.4g} at step {steps[-1]}")
        lines.append("non-finite values: " + _nonfinite_text(summaries))
    lines.append("")
    lines.append(f"{'layer':<24} {'type':<14} {'channels':>8} {'params':>9}")
    for layer in run.layer_info:
        ch = layer.get("channels") or "-"
        lines.append(f"{layer['name']:<24} {layer['type']:<14} {ch!s:>8} {layer.get('params', 0):>9}")
    run.close()
    return "\n".join(lines)


RANK_ROWS = 16  # a larger run lists its ranks worth a look, worst first, and counts the others
DEMO_OUT = "runs/demo"


def _rank_state(s) -> str:
    return "closed" if s.closed else ("open" if s.problem is None else "unreadable")


def _worth_a_look(s, furthest: int | None) -> tuple:
    """Sort key of a RankSummary, worst first: unreadable, not closed and behind, dropped records, NaN; then by rank."""
    behind = (furthest or 0) - (s.last_step if s.last_step is not None else -1)
    nan = s.first_nonfinite_step() is not None
    return (s.problem is None, s.closed or behind <= 0, not s.dropped, not nan, s.rank)


def _rank_lines(run, summaries: dict) -> list[str]:
    """The ranks table: every rank of a small run; of a larger one the RANK_ROWS worth a look first and a tally."""
    from tview.render.summaries import compact, share_text, tview_shares
    from tview.store import schema
    rows = list(summaries.values())
    furthest = max((s.last_step for s in rows if s.last_step is not None), default=None)
    shown = rows if len(rows) <= RANK_ROWS else sorted(rows, key=lambda s: _worth_a_look(s, furthest))[:RANK_ROWS]
    shares = tview_shares(compact({s.rank: s for s in shown}))
    lines = [f"{'rank':>4}  {'steps':>7}  {'last step':>9}  {'state':<10} {'dropped':>7}  {'size':>9}  "
             f"{'tview':>6}  problem"]
    for s in shown:
        p = os.path.join(run.path, schema.shard_name(s.rank))
        size = _size(os.path.getsize(p)) if os.path.exists(p) else "-"
        last = "-" if s.last_step is None else str(s.last_step)
        lines.append(f"{s.rank:>4}  {s.steps:>7}  {last:>9}  {_rank_state(s):<10} {s.dropped:>7}  {size:>9}  "
                     f"{share_text(shares.get(s.rank)):>6}  {s.problem or ''}")
    lines.append("tview: its share of the rank's time on the training thread (tview_time summed over the later "
                 "half of the recorded wall time)")
    if len(shown) < len(rows):
        tally = Counter(_rank_state(s) for s in rows)
        lines.append(f"... {len(rows) - len(shown)} more ranks not shown (worst first above); all ranks: "
                     + ", ".join(f"{n} {state}" for state, n in sorted(tally.items())))
    return lines


def _nonfinite_text(summaries: dict) -> str:
    """Where NaN/Inf first appeared on each rank (kept by the writer: no scan), at most RANK_ROWS ranks named."""
    found = []
    for rank, s in summaries.items():
        first = s.first_nonfinite or {"layers": {}, "scalars": {}}
        if first["layers"]:
            step = min(first["layers"].values())
            layers = [name for name, at in first["layers"].items() if at == step]
            found.append(f"rank {rank}: NaN/Inf first at step {step} in {', '.join(layers)}")
        found += [f"rank {rank}: {name} NaN/Inf first at step {at}" for name, at in first["scalars"].items()]
    more = f"; and {len(found) - RANK_ROWS} more" if len(found) > RANK_ROWS else ""
    return "; ".join(found[:RANK_ROWS]) + more if found else "none"


def _table_lines(run, rank: int) -> list[str]:
    """One line per probe table: rows, cadence, what it reads, its statistics and how exact they are."""
    lines = [f"  {'table':<14} {'rows':>7}  {'on':<7} {'reads':<15} statistics"]
    for name, spec in run.tables().items():
        info = run.stat_info(spec.columns[0].name, rank=rank)
        how = "" if info["exact"] else f"  ({info['note']})"
        lines.append(f"  {name:<14} {run.table_length(name, rank):>7}  {spec.cadence:<7} {spec.reads:<15} "
                     f"{', '.join(spec.names)}{how}")
    return lines


def serve_dashboard(root: str, host: str, port: int, debug: bool = False):
    """Serve the Dash app on host:port until interrupted."""
    try:
        from tview_app import create_app
    except ImportError as exc:
        raise TviewError(f"the dashboard needs dash and plotly: pip install 'tview[app]' ({exc})") from None
    from tview_app.heap import return_freed_memory
    return_freed_memory()  # memory flat while following a live run (tview_app.heap)
    app = create_app(root)
    catalog = app.server.config["TVIEW_CATALOG"]
    print(f"tview dashboard: {len(catalog.ids)} run(s) under {catalog.root}")
    print(f"open http://{host}:{port}/", flush=True)
    app.run(host=host, port=port, debug=debug)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tview", description="See inside the training of CNNs, on every rank.")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train a LeNet-5 on scikit-learn's digits across gloo ranks, recorded")
    d.add_argument("--out", default=DEMO_OUT)
    d.add_argument("--ranks", type=int, default=2)
    d.add_argument("--steps", type=int, default=1500)
    d.add_argument("--every", type=int, default=2)
    d.add_argument("--snapshot-every", type=int, default=50)
    d.add_argument("--batch", type=int, default=32)
    d.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    d.add_argument("--fault", choices=["nan", "straggler", "dead"],
                   help="inject one fault at 40%% of the steps (default --out: runs/demo-FAULT): nan: a NaN in rank "
                        "1's input; straggler: rank 1 sleeps 15 ms a step; dead: fc1's bias pushed to -50 (relu3 dies)")
    sub.add_parser("info", help="summarize a run").add_argument("run")
    sub.add_parser("upgrade", help="convert a run written with store schema 1 to schema 2 (old shards kept)"
                   ).add_argument("run")
    g = sub.add_parser("diagnose", help="name the rank, layer, step and tensor where training went wrong, worst first")
    g.add_argument("run")
    g.add_argument("--json", action="store_true", help="print a JSON list of findings")
    b = sub.add_parser("dashboard", help="serve the web app for a run or a folder of runs")
    b.add_argument("runs", help="a run folder, or a folder holding runs (only runs below it can be opened)")
    b.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    b.add_argument("--port", type=int, default=8050)
    b.add_argument("--debug", action="store_true",
                   help="Dash debug mode (never on unless asked: it runs code sent to it)")
    p = sub.add_parser("paraview", help="open a run in the ParaView GUI: four linked views of it, one time slider")
    p.add_argument("run", nargs="?")
    p.add_argument("--plugin-path", action="store_true", help="print the plugin folder (for Tools > Manage Plugins)")
    p.add_argument("paraview_args", nargs="*", help="after --: more options for paraview itself")
    p.add_argument("--plain", action="store_true", help="open the run in the reader alone, not in tview's four linked "
                                                        "views (network, field, filters, trajectory)")
    from tview.render.paraview_launch import add_render_arguments
    add_render_arguments(sub.add_parser("render", help="render a view of a run to a PNG (or a movie of training) "
                                                       "through pvbatch (no screen needed)"))
    e = sub.add_parser("export", help="write a run's statistics and scalars as one long table (Parquet or CSV)")
    e.add_argument("run")
    e.add_argument("--out", required=True, help="FILE.parquet, FILE.csv or FILE.csv.gz (the format from the suffix)")
    e.add_argument("--stats", nargs="+", metavar="NAME", help="statistics (default: all; only these if given)")
    e.add_argument("--scalars", nargs="+", metavar="NAME", help="scalars (default: all; only these if given)")
    e.add_argument("--layers", nargs="+", metavar="LAYER", help="layers (default: all)")
    e.add_argument("--ranks", nargs="+", type=int, metavar="RANK", help="ranks (default: every readable rank)")
    e.add_argument("--max-points", type=int, default=None, help="downsample each series to about this many points")
    return ap


def _demo(a) -> None:
    from tview.demo import FAULTS, run_demo
    from tview.store import schema
    from tview.store.shard import refuse_existing_shard
    if a.ranks < 1 or a.steps < 1:
        raise TviewError("--ranks and --steps must be at least 1")
    if a.fault in ("nan", "straggler") and a.ranks < 2:
        raise TviewError(f"--fault {a.fault} happens on rank 1: it needs --ranks 2 or more")
    if a.fault and a.out == DEMO_OUT:
        a.out = f"{DEMO_OUT}-{a.fault}"
    if not a.overwrite:  # checked here: the ranks' own errors would arrive as tracebacks
        refuse_existing_shard(os.path.join(a.out, schema.shard_name(0)), "pass --overwrite or another --out")
    fault = f", fault: {FAULTS[a.fault]}" if a.fault else ""
    print(f"training LeNet-5 on noisy digits (scikit-learn's): {a.ranks} rank(s), {a.steps} steps -> {a.out}{fault}")
    seconds = run_demo(a.out, a.ranks, a.steps, a.every, a.snapshot_every, a.batch,
                       mode="overwrite" if a.overwrite else "new", fault=a.fault)
    print(f"done in {seconds:.1f} s\n")
    print(info_text(a.out))
    print(f"\nnext:\n  tview dashboard {os.path.dirname(os.path.abspath(a.out))}   "
          f"# then open http://127.0.0.1:8050/\n  tview render {a.out} --out network.png   "
          f"# through ParaView's pvbatch, no screen needed\n  tview info {a.out}\n  tview diagnose {a.out}\n"
          f"  python -c \"import tview; run = tview.open_run('{a.out}'); print(run.scalar('loss', rank=1))\"")


def _export(a) -> None:
    from tview.export import export_run
    print(export_run(a.run, a.out, stats=a.stats, layers=a.layers, ranks=a.ranks, scalars=a.scalars,
                     max_points=a.max_points, report=lambda line: print(line, file=sys.stderr, flush=True)))


def _upgrade(a) -> None:
    from tview.store.upgrade import upgrade_run
    print(f"{upgrade_run(a.run)} shard(s) converted")


def _diagnose(a) -> None:
    from tview.diagnose.report import diagnose_text
    print(diagnose_text(a.run, a.json))


def _render(a) -> None:
    from tview.render.paraview_launch import render_command_line
    render_command_line(a)


def _paraview(a) -> int:
    from tview.render.paraview_launch import paraview_command_line
    return paraview_command_line(a)


COMMANDS = {"demo": _demo, "info": lambda a: print(info_text(a.run)), "upgrade": _upgrade, "diagnose": _diagnose,
            "export": _export, "dashboard": lambda a: serve_dashboard(a.runs, a.host, a.port, a.debug),
            "render": _render, "paraview": _paraview}


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    try:
        return COMMANDS[a.command](a) or 0
    except TviewError as exc:
        print(f"tview: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

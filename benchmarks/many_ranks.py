"""Issue 12's figures in one run: reading, the dashboard, ParaView, a live run and a real job, from 8 to 1024 ranks.

Writes synthetic runs (1000 recorded steps x 20 layers x 8, 64, 256, 1024 ranks; kept in --out for the next time),
then measures, each part in its own process:
  reader     open a run, one statistic of one layer across all ranks, the rank summaries, rank_status, and the
             floor: plain h5py opening each shard and reading the same three datasets with no checks; memory
  rows       benchmarks/row_reads.py: the network of every rank (ParaView's mean network without ParaView), one
             statistic across ranks read per rank and with ranks=, and diagnose; beside --before DIR's tview
  dashboard  benchmarks/dashboard_load.py on the same runs (first figure of the overview and the Ranks page)
  paraview   benchmarks/paraview_ranks.py on the 1024-rank run (mpirun -np 1, 2, 4 pvbatch)
  live       benchmarks/live_scale.py (64 writer processes, the dashboard following them)
  job        benchmarks/straggler.py (a real torchrun --nproc_per_node=8 gloo run with one slow rank)
and prints one markdown section (with --write, puts it in docs/benchmarks.md between its markers).

    python benchmarks/many_ranks.py [--out /tmp/tview-ranks] [--ranks 8,64,256,1024] [--parts reader,dashboard,...]
                                    [--before DIR] [--repeat N]  (DIR: another checkout, e.g. `git worktree add DIR
                                    <commit>`; N: the rows part alternates the checkouts N times, least kept)
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tview.store.synthetic import write_synthetic_run  # noqa: E402

STEPS, LAYERS = 1000, 20
STAT, LAYER = "grad_norm", 3
PARTS = ("reader", "rows", "dashboard", "paraview", "live", "job")
START, END = "<!-- many-ranks:start -->", "<!-- many-ranks:end -->"


def run_path(root: str, ranks: int) -> str:
    return os.path.join(root, f"steps-{STEPS}-ranks-{ranks}")  # dashboard_load.py's names: it reuses them


def write_runs(root: str, rank_counts: list[int]) -> None:
    for r in rank_counts:
        path = run_path(root, r)
        if not os.path.exists(os.path.join(path, f"rank-{r - 1:05d}.summary.json")):
            t = time.perf_counter()
            write_synthetic_run(path, STEPS, ranks=r, layers=LAYERS, channel_tail=100)
            print(f"wrote {r} ranks in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def floor_read(path: str) -> None:
    """Plain h5py, no checks: open every shard, read step, measured and the column of one layer, close."""
    import h5py
    for p in sorted(glob.glob(os.path.join(path, "rank-*.h5"))):
        with h5py.File(p, "r", swmr=True, rdcc_nbytes=0) as f:
            g = f["probes/grad"]
            g["step"][:], g["measured"][:, LAYER], g[STAT][:, LAYER]


def reader_figures(path: str) -> dict:
    """One rank count's reader figures, in this (fresh) process; warm page cache (a first pass reads it all)."""
    import tview
    floor_read(path)
    start = _rss_mib()

    def open_and_read():
        with tview.open_run(path) as run:
            run.stat_across_ranks(STAT, LAYER)

    out = {"open": _best(lambda: tview.open_run(path).close()), "open_and_stat": _best(open_and_read),
           "floor": _best(lambda: floor_read(path))}
    run = tview.open_run(path)
    from tview.store import parallel
    out["processes"] = parallel.processes_for(len(run.ranks))
    most, parallel.MAX_PROCESSES = parallel.MAX_PROCESSES, 1
    out["open_and_stat_one_process"] = _best(open_and_read)
    parallel.MAX_PROCESSES = most
    out["summaries"] = _best(run.rank_summaries)
    out["rank_status"] = _best(run.rank_status)
    run.stat_across_ranks(STAT, LAYER)
    out["stat_again"] = _best(lambda: run.stat_across_ranks(STAT, LAYER))
    out["rss_mib"] = _rss_mib() - start
    run.close()
    return out


def reader_table(root: str, rank_counts: list[int]) -> str:
    rows = {}
    for r in rank_counts:
        code = f"import json, sys; sys.path.insert(0, {REPO!r}); from benchmarks.many_ranks import reader_figures; " \
               f"print(json.dumps(reader_figures({run_path(root, r)!r})))"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rows[r] = json.loads(done.stdout.strip().splitlines()[-1])
    base = rows[rank_counts[0]]
    lines = ["| ranks | open | open + one statistic across ranks (processes) | x 8 ranks | the same in one process "
             "| plain h5py floor, one process | again, run open | rank summaries | rank_status | memory held |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r, x in rows.items():
        lines.append(f"| {r} | {x['open'] * 1e3:.1f} ms | {x['open_and_stat'] * 1e3:.0f} ms ({x['processes']}) | "
                     f"{x['open_and_stat'] / base['open_and_stat']:.0f}x | "
                     f"{x['open_and_stat_one_process'] * 1e3:.0f} ms | {x['floor'] * 1e3:.0f} ms | "
                     f"{x['stat_again'] * 1e3:.0f} ms | {x['summaries'] * 1e3:.0f} ms | "
                     f"{x['rank_status'] * 1e3:.0f} ms | {x['rss_mib']:.0f} MiB |")
    return "\n".join(lines)


def rows_table(root: str, rank_counts: list[int], before: str | None, repeat: int = 1) -> str:
    """benchmarks/row_reads.py on each run, with this checkout's tview and, side by side, --before's (the
    configurations alternating, `repeat` times, the least of each figure kept); diagnosis in a process of its own,
    as the command line."""
    codes = [("this", REPO)] + ([("before", before)] if before else [])
    lines = ["| ranks | tview | network of every rank | one statistic, run.stat per rank: first read, again "
             "| the same, ranks= (one process) | diagnose, fresh process (CPU s) | findings the same |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for r in rank_counts:
        got = {}
        for _ in range(repeat):
            for label, code in codes:
                x = _row_reads(run_path(root, r), code, "network,stat")
                x.update(_row_reads(run_path(root, r), code, "diagnose"))
                got[label] = _least(got.get(label), x)
        for label, x in got.items():
            ranks_read = "-" if x["stat_ranks"] is None else f"{x['stat_ranks']:.2f} s"
            same = "yes" if all(y["finding_lines"] == x["finding_lines"] for y in got.values()) else "NO"
            lines.append(f"| {r} | {label} | {x['network']:.1f} s | {x['stat_first']:.2f} s, {x['stat_loop']:.2f} s "
                         f"| {ranks_read} | {x['diagnose']:.1f} s ({x['diagnose_cpu']:.1f}) | {same} "
                         f"({x['findings']}) |")
    return "\n".join(lines) + f"\n\nLoad average (1 min) after: {os.getloadavg()[0]:.1f}."


def _least(kept: dict | None, new: dict) -> dict:
    """Each timed figure the least of both; the findings must not change between repeats."""
    if kept is None:
        return new
    assert kept["finding_lines"] == new["finding_lines"], "findings changed between repeats"
    return {k: min(v, new[k]) if isinstance(v, float) else v for k, v in kept.items()}


def _row_reads(path: str, code: str, parts: str) -> dict:
    out = script("row_reads.py", "--run", path, "--code", code, "--parts", parts)
    return json.loads(out.splitlines()[-1])


def script(name: str, *args: str, timeout: float = 1800) -> str:
    """Another benchmark's output (its markdown tables and figures), run as a process of its own."""
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", name), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if done.returncode:
        return f"`{' '.join(cmd[1:])}` failed ({done.returncode}):\n```\n{done.stderr[-2000:]}\n```"
    return done.stdout.strip()


def section(root: str, rank_counts: list[int], parts: list[str], before: str | None = None, repeat: int = 1) -> str:
    body = {
        "reader": lambda: reader_table(root, rank_counts),
        "rows": lambda: rows_table(root, rank_counts, before, repeat),
        "dashboard": lambda: script("dashboard_load.py", "--ranks", ",".join(map(str, rank_counts)), "--out", root),
        "paraview": lambda: script("paraview_ranks.py", "--run", run_path(root, max(rank_counts)), "--np", "1,2,4",
                                   "--repeat", "1"),
        "live": lambda: script("live_scale.py", "--ranks", "64", "--seconds", "120"),
        "job": lambda: script("straggler.py", "--ranks", "8"),
    }
    head = (f"## Many ranks (issue 12), one run of `benchmarks/many_ranks.py`\n\n{datetime.date.today()}, "
            f"{os.cpu_count()} CPU cores, synthetic runs of {STEPS} recorded steps x {LAYERS} layers, warm page cache.")
    out = [head]
    for part in parts:
        t = time.perf_counter()
        text = body[part]()
        out.append(f"### {part} ({time.perf_counter() - t:.0f} s)\n\n{text}")
        print(out[-1], flush=True)
    return "\n\n".join(out) + "\n"


def write_docs(text: str) -> None:
    path = os.path.join(REPO, "docs", "benchmarks.md")
    with open(path) as f:
        doc = f.read()
    block = f"{START}\n{text}{END}"
    if START in doc and END in doc:
        doc = doc[:doc.index(START)] + block + doc[doc.index(END) + len(END):]
    else:
        title_end = doc.index("\n") + 1
        doc = doc[:title_end] + "\n" + block + "\n" + doc[title_end:]
    with open(path, "w") as f:
        f.write(doc)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/tview-ranks", help="folder for the synthetic runs (kept)")
    ap.add_argument("--ranks", default="8,64,256,1024")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--write", action="store_true", help="put the section in docs/benchmarks.md")
    ap.add_argument("--before", help="another checkout whose tview the rows part times beside this one")
    ap.add_argument("--repeat", type=int, default=1, help="rows part: alternate the checkouts this many times")
    a = ap.parse_args(argv)
    rank_counts = [int(r) for r in a.ranks.split(",")]
    os.makedirs(a.out, exist_ok=True)
    write_runs(a.out, rank_counts)
    text = section(a.out, rank_counts, a.parts.split(","), a.before, a.repeat)
    if a.write:
        write_docs(text)


if __name__ == "__main__":
    main()

"""`tview export`: a run's long table (tview.store.frame) written to a Parquet or CSV file, with progress."""

from __future__ import annotations

import os
from collections.abc import Callable

from tview.errors import TviewError
from tview.store.frame import Progress, frame, need_pandas
from tview.store.reader import open_run

SUFFIXES = (".parquet", ".csv", ".csv.gz")


def check_output_path(out: str) -> str:
    """The format for `out` from its suffix ("parquet" or "csv"); TviewError for any other, or a missing library."""
    lower = str(out).lower()
    if lower.endswith(".parquet"):
        need_pandas()
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise TviewError(f"{out}: writing Parquet needs pyarrow: pip install 'tview[export]'") from None
        return "parquet"
    if lower.endswith((".csv", ".csv.gz")):
        need_pandas()
        return "csv"
    raise TviewError(f"{out}: unknown file type; the name must end in {', '.join(SUFFIXES)}")


def write_frame(df, out: str) -> str:
    """Write a frame from `frame()` to `out` (.parquet, .csv or .csv.gz, from its suffix); returns the format."""
    kind = check_output_path(out)
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise TviewError(f"{out}: folder {folder} does not exist")
    try:
        if kind == "parquet":
            df.to_parquet(out, index=False)
        else:
            df.to_csv(out, index=False)
    except OSError as exc:
        raise TviewError(f"{out}: cannot write: {exc}") from exc
    return kind


def every_tenth(report: Callable[[str], None], label: str) -> Progress:
    """A `progress` callback that reports one line each time another ~10% is done."""
    state = {"shown": 0}

    def progress(done: int, total: int, what: str) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth > state["shown"]:
            state["shown"] = tenth
            report(f"{label}: {100 * done // max(total, 1)}% ({done}/{total}, {what})")
    return progress


def export_run(path: str, out: str, stats=None, layers=None, ranks=None, scalars=None, max_points: int | None = None,
               report: Callable[[str], None] | None = None) -> str:
    """`tview export`: write `frame()` of the run at `path` to `out` (format from the suffix); a summary line."""
    kind = check_output_path(out)  # before any reading: a wrong name fails at once
    run = open_run(path, skip_bad_shards=True)
    try:
        progress = every_tenth(report, f"reading {run.path}") if report else None
        df = frame(run, stats=stats, layers=layers, ranks=ranks, scalars=scalars, max_points=max_points,
                   progress=progress)
        skipped = sorted(set(run.problems) - set(run.ranks)) if ranks is None else []
    finally:
        run.close()
    if report:
        report(f"writing {len(df):,} rows to {out}")
    write_frame(df, out)
    line = (f"wrote {len(df):,} rows ({df['rank'].nunique()} rank(s), {df['statistic'].nunique()} statistics/scalars) "
            f"to {out} ({kind}, {os.path.getsize(out) / 2**20:.1f} MiB)")
    return line + "".join(f"\nskipped rank {r}: {run.problems[r]}" for r in skipped)

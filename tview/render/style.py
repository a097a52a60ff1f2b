"""What every dashboard figure shares: one colour per rank, titles clear of plotly's toolbar, when to use log scales."""

from __future__ import annotations

import textwrap

import numpy as np

# One colour per rank on every page (rank r: RANK_PALETTE[r % 10]); red is left out: no rank looks like an alarm.
RANK_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
                "#393b79")
TOOLBAR_PX = 30     # plotly's toolbar (modebar) row at the top right: titles start below it
TITLE_LINE_PX = 20  # one line of a title at TITLE_FONT
TITLE_FONT = 15
TITLE_CHARS = 72    # a title wraps after about this many characters (a half-width panel at 1400 px)
DECADES = 2         # values whose positive range spans this many powers of ten get a log scale


def rank_colour(rank: int) -> str:
    """The colour of `rank` in every figure of every page."""
    return RANK_PALETTE[int(rank) % len(RANK_PALETTE)]


def wrapped(title: str, width: int = TITLE_CHARS) -> list[str]:
    """A title's lines, broken between words at about `width` characters."""
    return textwrap.wrap(title, width) or [""]


def title_layout(title: str, width: int = TITLE_CHARS) -> tuple[dict, int]:
    """(plotly title, top margin in px): the title left-aligned in a band of its own under the toolbar's row, so
    that however long it is it never runs under the toolbar. plotly lifts a title of n lines by about (n - 1)
    line heights from where its anchor says: the padding adds that back."""
    lines = wrapped(title, width)
    text = "<br>".join(lines)
    lift = TITLE_LINE_PX * (len(lines) - 1)
    spec = dict(text=text, x=0, xref="container", xanchor="left", y=1, yref="container", yanchor="top",
                pad=dict(l=12, t=TOOLBAR_PX + 4 + lift), font=dict(size=TITLE_FONT))
    return spec, TOOLBAR_PX + 4 + TITLE_LINE_PX * len(lines) + 12


def spans_decades(values, decades: int = DECADES) -> bool:
    """True when the finite values are all positive and the largest is at least 10**decades times the smallest:
    a log scale then shows every part of them."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2 or (v <= 0).any():
        return False
    return bool(v.max() >= 10 ** decades * v.min())


def use_log(choice: str | None, values) -> bool:
    """A scale menu's choice ('log', 'linear', or 'auto': log when spans_decades(values))."""
    if choice in ("log", "linear"):
        return choice == "log"
    return spans_decades(values)

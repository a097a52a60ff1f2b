"""Images laid out on grids with the data's own axes: conv filters (filter index x input channel), a probe example's
feature maps (numbered channels) and the probe input itself; each figure's height fits its grid (no empty band)."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from tview.render.figures import _finite_or_none, message_figure, titled

MAX_TICKS = 32  # a grid axis labels every k-th tile beyond this many


def grid_height(rows: int, columns: int, plot_width: int, least: int = 240, most: int = 720, chrome: int = 150) -> int:
    """The figure height (px) that shows a rows x columns cell grid with square cells in a plot `plot_width` px
    wide, plus `chrome` px of title and axes, within [least, most]."""
    return int(min(most, max(least, plot_width * rows / max(columns, 1) + chrome)))


def tile_centres(count: int, size: int, gap: int, lead: int = 0) -> list[float]:
    """The centre of each of `count` tiles `size` cells wide, `gap` cells apart, the first `lead` cells in."""
    return [lead + k * (size + gap) + (size - 1) / 2 for k in range(count)]


def every_kth(values: list, most: int = MAX_TICKS) -> list:
    return values[::max(1, math.ceil(len(values) / most))]


def place(images: np.ndarray, columns: int, gap: int, lead: int = 0) -> np.ndarray:
    """[n, h, w] images on a grid `columns` wide, `gap` NaN cells between them and `lead` NaN rows above."""
    n, h, w = images.shape
    rows = -(-n // columns)
    out = np.full((lead + rows * (h + gap) - gap, columns * (w + gap) - gap), np.nan)
    for i in range(n):
        r, c = divmod(i, columns)
        out[lead + r * (h + gap):lead + r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = images[i]
    return out


def _colours(image: np.ndarray) -> dict:
    """A diverging scale centred on zero for signed values; a sequential one for values that are never negative."""
    finite = image[np.isfinite(image)]
    if finite.size and finite.min() < 0:
        m = float(np.abs(finite).max()) or 1.0
        return dict(zmin=-m, zmax=m, colorscale="RdBu_r")
    return dict(colorscale="Viridis")


def _image(image: np.ndarray, hover: list[list[str]] | None, colour_title: str) -> go.Heatmap:
    return go.Heatmap(z=[_finite_or_none(r) for r in image], hoverongaps=False, colorbar=dict(title=colour_title),
                      text=hover, hovertemplate="%{text}<br>%{z:.3g}<extra></extra>" if hover else None,
                      **_colours(image))


def _square_cells(fig: go.Figure) -> go.Figure:
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showgrid=False, zeroline=False)
    fig.update_xaxes(showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(constrain="domain")
    return fig


def filter_grid_figure(filters: np.ndarray, title: str, plot_width: int = 1150, max_inputs: int = 16,
                       max_filters: int = 128) -> go.Figure:
    """Conv filters [Cout, Cin, kH, kW] as a grid: one column per filter (x: filter index), one row per input
    channel (y: input channel), each kernel's weights on a scale centred on zero."""
    f = np.asarray(filters, dtype=np.float64)[:max_filters, :max_inputs]
    if f.ndim != 4 or not f.size:
        return message_figure("no filters in this snapshot")
    cout, cin, kh, kw = f.shape
    gap = max(1, kh // 4)
    image = place(f.transpose(1, 0, 2, 3).reshape(cin * cout, kh, kw), cout, gap)
    hover = [[""] * image.shape[1] for _ in range(image.shape[0])]
    for ci in range(cin):
        for fo in range(cout):
            for y in range(kh):
                for x in range(kw):
                    hover[ci * (kh + gap) + y][fo * (kw + gap) + x] = f"filter {fo}, input channel {ci}, ({y}, {x})"
    fig = go.Figure(_image(image, hover, "weight"))
    xs, ys = tile_centres(cout, kw, gap), tile_centres(cin, kh, gap)
    titled(fig, title, height=grid_height(image.shape[0], image.shape[1], plot_width),
           xaxis=dict(title=f"filter (output channel; {cout} of {filters.shape[0]})", tickmode="array",
                      tickvals=every_kth(xs), ticktext=[str(i) for i in every_kth(list(range(cout)))]),
           yaxis=dict(title=f"input channel ({cin} of {filters.shape[1]})", tickmode="array", tickvals=ys,
                      ticktext=[str(i) for i in range(cin)]))
    return _square_cells(fig)


def feature_map_figure(maps: np.ndarray, title: str, plot_width: int = 780, max_channels: int = 64) -> go.Figure:
    """One probe example's feature maps [C, H, W] on a square-ish grid, each map numbered by its channel."""
    m = np.asarray(maps, dtype=np.float64)[:max_channels]
    if m.ndim != 3 or not m.size:
        return message_figure("no feature maps in this snapshot")
    c, h, w = m.shape
    columns = math.ceil(math.sqrt(c * h / w))
    gap = max(2, h // 4)
    image = place(m, columns, gap, lead=gap)
    hover = [[""] * image.shape[1] for _ in range(image.shape[0])]
    for k in range(c):
        r, col = divmod(k, columns)
        for y in range(h):
            row = hover[gap + r * (h + gap) + y]
            for x in range(w):
                row[col * (w + gap) + x] = f"channel {k}, pixel ({y}, {x})"
    fig = go.Figure(_image(image, hover, "activation"))
    for k in range(c):  # the channel's number above its map
        r, col = divmod(k, columns)
        fig.add_annotation(x=col * (w + gap) + (w - 1) / 2, y=gap + r * (h + gap) - 0.6, text=f"ch {k}",
                           showarrow=False, yanchor="bottom", font=dict(size=11))
    titled(fig, title, height=grid_height(image.shape[0], image.shape[1], plot_width),
           xaxis=dict(title=f"{min(c, max_channels)} of {maps.shape[0]} channels, each {h} x {w} pixels",
                      showticklabels=False),
           yaxis=dict(showticklabels=False))
    return _square_cells(fig)


def probe_input_figure(example: np.ndarray, title: str) -> go.Figure:
    """The probe example the feature maps are computed from ([C, H, W]; its first channel shown)."""
    x = np.asarray(example, dtype=np.float64)
    if x.ndim == 3:
        x = x[0]
    fig = go.Figure(go.Heatmap(z=[_finite_or_none(r) for r in x], colorscale="Gray", showscale=False,
                               hovertemplate="pixel (%{y}, %{x})<br>%{z:.3g}<extra></extra>"))
    titled(fig, title, height=grid_height(x.shape[0], x.shape[1], 220, least=200, chrome=130),
           xaxis=dict(title=f"{x.shape[1]} x {x.shape[0]} pixels", showticklabels=False),
           yaxis=dict(showticklabels=False), margin=dict(l=20, r=20))
    return _square_cells(fig)

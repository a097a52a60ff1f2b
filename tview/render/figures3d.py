"""The dashboard's 3D figures (plotly): the network as slabs of channels, a weight trajectory, filter similarity."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from tview.render.figures import MAX_POINTS, message_figure, titled
from tview.render.layout import network_positions, slab_sides
from tview.store.reader import strided

CAMERA = dict(eye=dict(x=1.7, y=1.7, z=0.9), center=dict(x=0, y=0, z=-0.05))  # far enough that nothing is clipped
SIDE_CAMERA = dict(eye=dict(x=2.1, y=0.9, z=0.45), center=dict(x=0, y=0, z=0))  # slabs seen nearly edge-on
_HIDDEN = dict(visible=False)


def _scene(fig: go.Figure, title: str, uirevision: str, camera: dict = CAMERA, **scene) -> go.Figure:
    titled(fig, title, margin=dict(l=0, r=10, b=0), uirevision=uirevision,
           scene=dict(camera=camera, **scene), legend=dict(orientation="h", y=0))
    return fig


def network_figure(layers: list[str], values: list[np.ndarray], title: str, colour_title: str,
                   bounds: tuple[float, float] | None = None) -> go.Figure:
    """The network as slabs of channel glyphs stacked bottom (input side) to top, each slab named beside it and
    coloured by a per-channel value (on the colour scale's `bounds` where given: a fraction's 0 to 1); slabs stand
    far enough apart that no two meet."""
    if not layers:
        return message_figure("no layer with per-channel values recorded")
    channels = [len(v) for v in values]
    pos = network_positions(channels, by_size=True)
    colour = np.concatenate([np.asarray(v, dtype=np.float64) for v in values])
    text = np.array([f"{layer} channel {i}" for layer, c in zip(layers, channels) for i in range(c)])
    ok = np.isfinite(colour)
    fig = go.Figure(go.Scatter3d(
        x=pos[ok, 0], y=pos[ok, 1], z=pos[ok, 2], mode="markers", text=text[ok], showlegend=False,
        marker=dict(size=3, color=colour[ok], colorscale="Viridis", symbol="square", line=dict(width=0),
                    colorbar=dict(title=dict(text=colour_title), len=0.7),
                    **(dict(cmin=bounds[0], cmax=bounds[1]) if bounds else {})),
        hovertemplate="%{text}<br>%{marker.color:.3g}<extra></extra>"))
    if not ok.all():  # NaN/Inf or not measured: grey, said in the legend (a colour scale has no place for them)
        fig.add_trace(go.Scatter3d(x=pos[~ok, 0], y=pos[~ok, 1], z=pos[~ok, 2], mode="markers", text=text[~ok],
                                   name="no value (NaN/Inf, or not measured)", showlegend=True,
                                   marker=dict(size=3, color="#bbbbbb", symbol="square", line=dict(width=0)),
                                   hovertemplate="%{text}: no value<extra></extra>"))
    sides = slab_sides(channels)
    starts = np.cumsum([0] + channels[:-1])
    # each slab's name to its right as seen from SIDE_CAMERA (+y is the screen's right), drawn over the glyphs
    labels = [dict(x=0, y=(side - 1) / 2 + 0.5, z=float(pos[start, 2]), text=f"{layer} ({c})", showarrow=False,
                   xanchor="left", font=dict(size=11), bgcolor="rgba(255,255,255,0.7)")
              for layer, c, side, start in zip(layers, channels, sides, starts)]
    extent = max(float(np.ptp(pos[:, 0])) + 8, 1.0)
    height = max(float(np.ptp(pos[:, 2])), 1.0)
    return _scene(fig, title, "network", SIDE_CAMERA, xaxis=_HIDDEN, yaxis=_HIDDEN, zaxis=_HIDDEN, annotations=labels,
                  aspectmode="manual", aspectratio=dict(x=1, y=1, z=min(1.6, max(0.6, height / extent))))


def _step_labels(steps: np.ndarray, coords: np.ndarray) -> list[dict]:
    """The first and last step written beside their points (scene annotations: drawn over the path)."""
    at = sorted({0, len(steps) - 1})
    return [dict(x=float(coords[i, 0]), y=float(coords[i, 1]), z=float(coords[i, 2]), text=f"step {int(steps[i])}",
                 showarrow=True, arrowhead=0, ax=30 if k else -30, ay=-28, font=dict(size=11),
                 bgcolor="rgba(255,255,255,0.8)") for k, i in enumerate(at)]


def trajectory_figure(steps: np.ndarray, coords: np.ndarray, title: str) -> go.Figure:
    """A 3D path of projected weights, coloured by step (the colour bar in steps), its first and last step
    written beside their points."""
    coords = np.asarray(coords, dtype=np.float64)
    keep = np.isfinite(coords).all(axis=1)
    title += _ends_text(np.asarray(steps), keep)
    steps, coords = np.asarray(steps)[keep], coords[keep]
    if len(steps) == 0:
        return message_figure("no weight trajectory recorded yet")
    if coords.shape[1] < 3:
        coords = np.pad(coords, ((0, 0), (0, 3 - coords.shape[1])))
    rows = strided(len(steps), MAX_POINTS)
    steps, coords = steps[rows], coords[rows]
    path = go.Scatter3d(x=coords[:, 0], y=coords[:, 1], z=coords[:, 2], mode="lines+markers", showlegend=False,
                        marker=dict(size=2.5, color=steps, colorscale="Viridis",
                                    colorbar=dict(title=dict(text="step"), len=0.7)),
                        line=dict(color=steps, colorscale="Viridis", width=4),
                        text=[f"step {s}" for s in steps], hovertemplate="%{text}<extra></extra>")
    fig = go.Figure(path)
    axis = lambda k: dict(title=dict(text=f"dir {k}"), showticklabels=False)
    return _scene(fig, title, "trajectory", xaxis=axis(1), yaxis=axis(2), zaxis=axis(3),
                  annotations=_step_labels(steps, coords))


def _ends_text(steps: np.ndarray, finite: np.ndarray) -> str:
    """A title's second line where the weights went NaN/Inf after a finite start (the path ends there), else ''."""
    bad = ~finite & (np.cumsum(finite) > 0)
    if not bad.any():
        return ""
    first = int(np.argmax(bad))
    return (f"<br><span style='color:#d62728'>weights NaN/Inf from step {steps[first]}: the path ends at step "
            f"{steps[first - 1]}</span>")


def similarity_figure(coords: np.ndarray, groups: list[list[int]], title: str) -> go.Figure:
    """Filters as numbered points placed by PCA of their probe activations, one colour per similarity group;
    the filters in no group in grey, named so in the legend."""
    coords = np.asarray(coords, dtype=np.float64)
    fig = go.Figure()
    grouped = set(i for g in groups for i in g)
    alone = [i for i in range(len(coords)) if i not in grouped]
    point = dict(mode="markers+text", textposition="top center", hovertemplate="%{text}<extra></extra>",
                 textfont=dict(size=10))
    if alone:
        fig.add_trace(go.Scatter3d(x=coords[alone, 0], y=coords[alone, 1], z=coords[alone, 2],
                                   name=f"in no group ({len(alone)})", marker=dict(size=4, color="#9a9a9a"),
                                   showlegend=True,
                                   text=[str(i) for i in alone], **point))
    for k, g in enumerate(groups):
        fig.add_trace(go.Scatter3d(x=coords[g, 0], y=coords[g, 1], z=coords[g, 2], name=f"group {k + 1} ({len(g)})",
                                   marker=dict(size=6), text=[str(i) for i in g], **point))
    axis = lambda k: dict(title=dict(text=f"PC {k}"), showticklabels=False)
    return _scene(fig, title, "similarity", xaxis=axis(1), yaxis=axis(2), zaxis=axis(3))

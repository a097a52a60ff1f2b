"""numpy arrays to VTK data objects (points and polylines, images), for the ParaView plugin.

vtk is imported inside the functions, so this module imports anywhere and works with ParaView's own
VTK as with the PyPI vtk wheel.
"""

from __future__ import annotations

import numpy as np


def _vtk_array(name: str, values: np.ndarray):
    from vtkmodules.util import numpy_support
    values = np.ascontiguousarray(values)
    if values.dtype.kind == "f":
        values = values.astype(np.float64)
    elif values.dtype.kind in "iu":
        values = values.astype(np.int32)
    arr = numpy_support.numpy_to_vtk(values, deep=True)
    arr.SetName(name)
    return arr


def add_field(data, name: str, values) -> None:
    """Attach a small array (a step, a run path) to a data object's field data."""
    if isinstance(values, str):
        from vtkmodules.vtkCommonCore import vtkStringArray
        arr = vtkStringArray()
        arr.SetName(name)
        arr.InsertNextValue(values)
    else:
        arr = _vtk_array(name, np.atleast_1d(np.asarray(values)))
    data.GetFieldData().AddArray(arr)


def points_to_polydata(positions: np.ndarray, arrays: dict[str, np.ndarray], line: bool = False):
    """vtkPolyData with one vertex per point (or one polyline through them) and point arrays."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
    positions = np.ascontiguousarray(np.asarray(positions, dtype=np.float64).reshape(-1, 3))
    n = len(positions)
    pd = vtkPolyData()
    pts = vtkPoints()
    pts.SetData(numpy_support.numpy_to_vtk(positions, deep=True))
    pd.SetPoints(pts)
    cells = vtkCellArray()
    if line and n >= 2:
        cells.InsertNextCell(n)
        for i in range(n):
            cells.InsertCellPoint(i)
        pd.SetLines(cells)
    else:
        for i in range(n):
            cells.InsertNextCell(1)
            cells.InsertCellPoint(i)
        pd.SetVerts(cells)
    for name, values in arrays.items():
        values = np.asarray(values)
        pd.GetPointData().AddArray(_vtk_array(name, values.reshape(n, -1) if values.ndim > 1 else values))
    return pd


def image(values: np.ndarray, name: str, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    """vtkImageData from a 2D [rows, cols] or 3D [slices, rows, cols] array: x runs along cols, y along
    rows, z along slices (so a [C, H, W] stack of feature maps is a W x H x C volume)."""
    from vtkmodules.vtkCommonDataModel import vtkImageData
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3:
        raise ValueError(f"image values must be 2D or 3D, got shape {values.shape}")
    nz, ny, nx = values.shape
    img = vtkImageData()
    img.SetDimensions(nx, ny, nz)
    img.SetSpacing(*spacing)
    img.SetOrigin(*origin)
    img.GetPointData().SetScalars(_vtk_array(name, values.reshape(-1)))  # x fastest: C order of [z, y, x]
    return img


def image_to_numpy(img, name: str | None = None) -> np.ndarray:
    """The inverse of image(): [slices, rows, cols] (2D images keep one slice)."""
    from vtkmodules.util import numpy_support
    nx, ny, nz = img.GetDimensions()
    arr = img.GetPointData().GetArray(name) if name else img.GetPointData().GetScalars()
    return numpy_support.vtk_to_numpy(arr).reshape(nz, ny, nx)


def add_labels(data, labels: list[tuple[str, tuple[float, float, float]]]) -> None:
    """Text labels at 3D positions, as field data (label_text, label_xyz) for the render scripts to draw."""
    from vtkmodules.vtkCommonCore import vtkStringArray
    if not labels:
        return
    texts = vtkStringArray()
    texts.SetName("label_text")
    for text, _ in labels:
        texts.InsertNextValue(text)
    data.GetFieldData().AddArray(texts)
    data.GetFieldData().AddArray(_vtk_array("label_xyz", np.array([xyz for _, xyz in labels], dtype=np.float64)))


def grid(values: np.ndarray, hidden: np.ndarray, x_edges: np.ndarray, y_edges: np.ndarray, name: str,
         labels: list | None = None):
    """vtkRectilinearGrid with one cell per value (crisp squares, never interpolated), [rows, cols] with row 0
    at the top; cells where `hidden` are blanked (vtkGhostType HIDDENCELL: not drawn, never a NaN colour)."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkDataSetAttributes, vtkRectilinearGrid
    values = np.asarray(values, dtype=np.float64)
    rows, cols = values.shape
    if len(x_edges) != cols + 1 or len(y_edges) != rows + 1:
        raise ValueError(f"grid of {rows}x{cols} cells needs {cols + 1} x and {rows + 1} y edges, "
                         f"got {len(x_edges)} and {len(y_edges)}")
    g = vtkRectilinearGrid()
    g.SetDimensions(cols + 1, rows + 1, 1)
    g.SetXCoordinates(_vtk_array("x", np.asarray(x_edges, dtype=np.float64)))
    g.SetYCoordinates(_vtk_array("y", np.asarray(y_edges, dtype=np.float64)))
    g.SetZCoordinates(_vtk_array("z", np.zeros(1)))
    g.GetCellData().SetScalars(_vtk_array(name, values[::-1].reshape(-1)))  # x fastest, y upwards
    ghosts = np.where(np.asarray(hidden)[::-1].reshape(-1), vtkDataSetAttributes.HIDDENCELL, 0).astype(np.uint8)
    ghost = numpy_support.numpy_to_vtk(ghosts, deep=True, array_type=numpy_support.get_vtk_array_type(np.uint8))
    ghost.SetName(vtkDataSetAttributes.GhostArrayName())
    g.GetCellData().AddArray(ghost)
    add_labels(g, labels or [])
    return g


def grid_to_numpy(g, name: str) -> np.ndarray:
    """The inverse of grid(): [rows, cols] cell values, row 0 at the top."""
    from vtkmodules.util import numpy_support
    nx, ny, _ = g.GetDimensions()
    return numpy_support.vtk_to_numpy(g.GetCellData().GetArray(name)).reshape(ny - 1, nx - 1)[::-1]

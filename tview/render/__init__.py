"""Pure functions from stored arrays to plotly figures and (lazily, with vtk) VTK data objects."""

"""RegisterByGeneration: align a CT to an MR or CBCT by generating it.

The engine behind the ``rbg`` command and the 3D Slicer module. It never imports
slicer, qt, ctk or vtk, so it runs in plain Python, on servers and in Slicer's Python.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

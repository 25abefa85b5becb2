"""The Slicer module's scene code, without Qt: MRML nodes to files and back, and one run.

The module file keeps what needs Qt (widgets, the QTimer, the parameter node, the
installer); everything that touches MRML lives here so that it runs, and is tested,
against real Slicer nodes from the ``slicer-core`` wheel (``Testing/test_slicer_scene.py``).
Only MRML storage nodes are used for file I/O: ``slicer.util.loadVolume`` & co. go
through the Qt-side I/O manager, which ``slicer-core`` lacks.

A run (:class:`PseudoCtTask`) exports the input and reference in world coordinates to a
temporary folder, starts ``rbg run`` in a child process, is polled, and on success loads
the results into temporary nodes, checks them, and only then commits them to the scene.
"""

from .scene import (
    GEOMETRY_TOLERANCE_MM,
    PseudoCtTask,
    RegisterByGenerationResult,
    commitResults,
    exportVolume,
    loadSegmentation,
    loadVolume,
    removeNodes,
    sameGeometry,
    validationError,
    worldGeometry,
)

__all__ = [
    "GEOMETRY_TOLERANCE_MM",
    "PseudoCtTask",
    "RegisterByGenerationResult",
    "commitResults",
    "exportVolume",
    "loadSegmentation",
    "loadVolume",
    "removeNodes",
    "sameGeometry",
    "validationError",
    "worldGeometry",
]

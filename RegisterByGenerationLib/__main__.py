"""``python -m RegisterByGenerationLib`` is the ``rbg`` command (Slicer's PythonSlicer uses this)."""

import sys

from .cli import main

sys.exit(main())

"""Import the authors' published RbG / RegistFormer checkpoints (``rbg models import-published``).

:func:`~.checkpoint.read_checkpoint` reads a Lightning ``.ckpt`` without executing
anything from it; :func:`~.convert.import_published` turns the files into one of our model
folders whose networks (:mod:`~RegisterByGenerationLib.networks.published`) compute what
the authors' code computes. ``docs/import-published.md`` is the user's guide.
"""

from __future__ import annotations

from .checkpoint import InertObject, LightningCheckpoint, read_checkpoint
from .convert import SLICE_ORIENTATIONS, identify, import_published

__all__ = ["InertObject", "LightningCheckpoint", "SLICE_ORIENTATIONS", "identify", "import_published", "read_checkpoint"]

"""Exceptions with one-line messages that name the file and the problem.

The CLI prints ``rbg: error: <message>`` for any :class:`RbgError` and exits non-zero;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["RbgError", "InputError", "ModelError", "TensorError", "OutputError", "Cancelled"]


class RbgError(Exception):
    """Base class of the errors a user can act on."""


class InputError(RbgError, ValueError):
    """An input file or argument is missing, unreadable or unsuitable."""


class ModelError(RbgError):
    """A model directory is missing, malformed, or its weights fail their checksum."""


class TensorError(RbgError, ValueError):
    """A network was handed tensors of the wrong shape, dtype or device (one line, no traceback:
    a caller of the library sees what arrived and what was expected)."""


class OutputError(RbgError):
    """An output location cannot be written."""


class Cancelled(RbgError):
    """The run was cancelled by the caller; nothing was written."""

"""Exceptions with one-line messages that name the file and the problem.

The CLI prints ``rbg: error: <message>`` for any :class:`RbgError` and exits with the
class's :attr:`~RbgError.exit_code`, one per kind of problem, so scripts and cluster jobs
can tell a bad input from a full disk without parsing text (the table is in
``docs/user-guide.md``). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "RbgError",
    "InputError",
    "MissingInputError",
    "UnreadableInputError",
    "InvalidImageError",
    "InputMismatchError",
    "ModelError",
    "TensorError",
    "OutputError",
    "Cancelled",
    "EXIT_CODES",
]


class RbgError(Exception):
    """Base class of the errors a user can act on."""

    exit_code = 1


class InputError(RbgError, ValueError):
    """An input file or argument is missing, unreadable or unsuitable (an invalid option
    value or configuration when no subclass says more)."""

    exit_code = 3


class MissingInputError(InputError):
    """An input file or folder does not exist."""

    exit_code = 4


class UnreadableInputError(InputError):
    """An input exists but cannot be read as an image: truncated, corrupt, not an image, a
    folder without (or without the asked) DICOM series."""

    exit_code = 5


class InvalidImageError(InputError):
    """An image was read but cannot be processed: not 3-D, several components per voxel,
    a single slice, bad or extreme spacing, non-finite or constant values, too large for
    the memory available."""

    exit_code = 6


class InputMismatchError(InputError):
    """Readable images that are not what their role needs: a label map as the input, an MR
    as the reference CT or a CT as the MR, one file given twice, volumes that do not overlap."""

    exit_code = 7


class ModelError(RbgError):
    """A model directory is missing, malformed, or its weights fail their checksum."""

    exit_code = 8


class TensorError(RbgError, ValueError):
    """A network was handed tensors of the wrong shape, dtype or device (one line, no traceback:
    a caller of the library sees what arrived and what was expected)."""

    exit_code = 3


class OutputError(RbgError):
    """An output location cannot be written (not a folder, no permission, disk full)."""

    exit_code = 9


class Cancelled(RbgError):
    """The run was cancelled by the caller; nothing was written."""

    exit_code = 130


#: Exit status of ``rbg`` -> what it means; usage errors (argparse) exit with 2, SIGINT
#: with 130 and SIGTERM with 143 (128 + the signal), nothing written in either case.
EXIT_CODES = {
    0: "success",
    1: "other error a user can act on, or a batch in which some cases failed (summary.csv says which)",
    2: "usage error (unknown option, missing argument)",
    InputError.exit_code: "invalid argument, option value or configuration",
    MissingInputError.exit_code: "an input file or folder does not exist",
    UnreadableInputError.exit_code: "an input cannot be read as an image (truncated, corrupt, not an image, DICOM series missing)",
    InvalidImageError.exit_code: "an image cannot be processed (not 3-D, colour, single slice, bad or extreme spacing, NaN/Inf, constant, too large for the RAM)",
    InputMismatchError.exit_code: "inputs unsuitable for their role (label map, MR as CT or CT as MR, one file twice, no overlap)",
    ModelError.exit_code: "model missing, malformed or failing its checksum",
    OutputError.exit_code: "output cannot be written (not a folder, no permission, disk full)",
    130: "cancelled or interrupted (SIGINT); nothing was written",
    143: "terminated (SIGTERM); nothing was written",
}

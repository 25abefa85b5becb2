"""Geometry-safe reading, validation and atomic writing of 3D images.

SimpleITK owns physical geometry (size, spacing, origin, direction, in LPS); nothing
here drops it. Readers accept any SimpleITK-readable file or a DICOM series folder and
validate what they read, so later stages can assume a finite, non-constant 3D scalar
volume with positive spacing. Writers go through a temporary name in the target folder
and rename, so a crash or a cancel never leaves a half-written file under the final name.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path  # re-exported: io is where callers look for file writing
from .errors import InvalidImageError, MissingInputError, OutputError, UnreadableInputError

__all__ = [
    "WRITABLE_SUFFIXES",
    "MAX_ANISOTROPY",
    "read_image",
    "validate_image",
    "write_image",
    "atomic_path",
    "check_writable_dir",
    "missing_folders",
    "remove_empty_folders",
    "same_geometry",
]

logger = logging.getLogger(__name__)

WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha", ".mhd")

#: Largest ratio of the coarsest to the finest voxel spacing accepted. Clinical volumes
#: reach about 10 (0.5 mm pixels, 5 mm slices); beyond 20 a "volume" is a stack of
#: scouts or a header with a lost spacing, and slice-by-slice synthesis is meaningless.
MAX_ANISOTROPY = 20.0


def read_image(path: str | os.PathLike, *, validate: bool = True, series: str | None = None) -> sitk.Image:
    """Read a 3D scalar image from a file or from a folder holding one DICOM series.

    Args:
        path: an image file (.nii, .nii.gz, .nrrd, .mha, .mhd, ...) or a DICOM folder.
            When a folder holds several series and ``series`` is None, the one with the
            most files is read and a warning names it and the others.
        validate: check the image with :func:`validate_image` (default).
        series: the DICOM Series Instance UID to read from a folder.

    Returns:
        The image with its geometry, pixel type unchanged.

    Raises:
        MissingInputError: the path does not exist.
        UnreadableInputError: it cannot be read as an image, or ``series`` is not in the
            folder (or ``series`` was given for a file).
        InvalidImageError: it fails validation.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: file not found")
    if series is not None and not path.is_dir():
        raise UnreadableInputError(f"{path}: a DICOM series ({series}) was asked for, but this is a file, not a DICOM folder")
    try:
        if path.name.endswith(".gz"):
            _check_gzip_complete(path)
        image = _read_dicom_folder(path, series) if path.is_dir() else sitk.ReadImage(str(path))
    except (RuntimeError, OSError, EOFError) as error:
        reason = _first_line(str(error))
        raise UnreadableInputError(f"{path}: cannot be read as an image ({reason})") from error
    if validate:
        validate_image(image, path)
    return image


def _check_gzip_complete(path: Path) -> None:
    """Raise EOFError or OSError unless ``path`` is a complete gzip stream.

    ITK's NIfTI reader fills a truncated ``.nii.gz`` (a copy cut short) with zeros and
    reports no error; decompressing to the end (about as long as reading) catches it.
    """
    with gzip.open(path, "rb") as stream:
        while stream.read(1 << 24):
            pass


def _read_dicom_folder(folder: Path, series: str | None) -> sitk.Image:
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise UnreadableInputError(f"{folder}: folder holds no DICOM series")
    if series is not None and series not in series_ids:
        raise UnreadableInputError(f"{folder}: holds no DICOM series {series}; it holds {', '.join(series_ids)}")
    files_per_series = {
        sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids
    }
    chosen = series or max(files_per_series, key=lambda sid: len(files_per_series[sid]))
    if len(series_ids) > 1 and series is None:
        others = ", ".join(sid for sid in series_ids if sid != chosen)
        logger.warning("%s: reading DICOM series %s (most files); also present: %s; choose another with --input-series or --reference-series", folder, chosen, others)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files_per_series[chosen])
    return reader.Execute()


def validate_image(image: sitk.Image, path: str | os.PathLike = "<image>") -> None:
    """Raise :class:`InvalidImageError` unless ``image`` is a usable 3D scalar volume.

    Checked: three dimensions with at least two voxels along each; one component per
    voxel; positive spacing, at most :data:`MAX_ANISOTROPY` times coarser along one axis
    than another; finite voxel values; not constant (an all-equal volume is empty for
    our purposes).
    """
    if image.GetDimension() != 3:
        raise InvalidImageError(f"{path}: image is {image.GetDimension()}D, a 3D volume is required")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidImageError(
            f"{path}: image has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(colour or vector image); a scalar volume is required"
        )
    size = image.GetSize()
    if min(size) < 2:
        raise InvalidImageError(f"{path}: image size {size} has a single slice along an axis; a 3D volume is required")
    spacing = image.GetSpacing()
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InvalidImageError(f"{path}: voxel spacing {spacing} must be positive")
    if max(spacing) > MAX_ANISOTROPY * min(spacing):
        raise InvalidImageError(
            f"{path}: voxel spacing {tuple(round(s, 4) for s in spacing)} is more than {MAX_ANISOTROPY:g} times coarser "
            "along one axis than another; resample it or check the header"
        )
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        bad = np.count_nonzero(~np.isfinite(array))
        if bad:
            raise InvalidImageError(f"{path}: image has {bad} non-finite (NaN or Inf) voxels")
    if array.min() == array.max():
        raise InvalidImageError(f"{path}: image is empty (every voxel equals {array.flat[0]})")


def check_writable_dir(folder: str | os.PathLike, *, create: bool = True) -> Path:
    """Create ``folder`` if needed and check that files can be created in it.

    ``create=False`` creates nothing: it checks the folder, or where it does not exist
    yet its nearest existing parent, so a command can refuse an unwritable output before
    its work and still leave no empty folder behind when its inputs fail later.

    Raises:
        OutputError: the folder cannot be created or written.
    """
    folder = Path(folder)
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder
        else:
            probe = next(p for p in (folder, *folder.absolute().parents) if p.exists())
            if not probe.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(probe))
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise OutputError(f"{folder}: output folder is not writable ({error.strerror or error})") from error
    return folder


def missing_folders(folder: str | os.PathLike) -> list[Path]:
    """``folder`` and those of its parents that do not exist, deepest first: what
    ``check_writable_dir`` would create, and what a failed command removes again."""
    folder = Path(folder).absolute()
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is still empty."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            return  # not empty (or gone): its parents are not empty either


def write_image(image: sitk.Image, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write ``image`` atomically to ``path`` (.nii.gz, .nii, .nrrd, .mha).

    Raises:
        OutputError: unsupported suffix, or the file cannot be written.
    """
    path = Path(path)
    if not path.name.endswith(WRITABLE_SUFFIXES):
        raise OutputError(f"{path}: unsupported output format; use one of {', '.join(WRITABLE_SUFFIXES)}")
    if path.name.endswith(".mhd"):
        # .mhd writes a second (.raw/.zraw) file that a rename would leave behind.
        raise OutputError(f"{path}: .mhd writes two files; use .mha for a single-file MetaImage")
    if not path.parent.is_dir():
        raise OutputError(f"{path}: output folder {path.parent} does not exist")
    try:
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), compress)
    except (RuntimeError, OSError) as error:
        raise OutputError(f"{path}: cannot be written ({_first_line(str(error))})") from error
    return path


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-6) -> bool:
    """True when ``a`` and ``b`` share size, and spacing, origin, direction within ``tolerance``."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=tolerance)
    )


def _first_line(message: str) -> str:
    """ITK errors are multi-line with file/line noise; keep the most telling line.

    The first line that is not a source location, without ITK's prefixes; when it only
    introduces details (ends with ":"), the last, most specific line instead.
    """
    lines = []
    for line in message.strip().splitlines():
        line = _ITK_PREFIX.sub("", line.strip()).strip()
        if line and not _SOURCE_LOCATION.search(line):
            lines.append(line)
    if not lines:
        return "unknown error"
    return lines[-1] if lines[0].endswith(":") else lines[0]


#: "Exception thrown in SimpleITK X: ", "sitk::ERROR: ", "ITK ERROR: NrrdImageIO(0x55...): ".
_ITK_PREFIX = re.compile(r"^(Exception thrown in SimpleITK \w+: |(sitk|itk)::ERROR: |ITK ERROR: |\w+\(0x[0-9a-fA-F]+\): )+")
#: A C++ source location such as "/tmp/ITK/.../itkImageBase.hxx:77:".
_SOURCE_LOCATION = re.compile(r"\.(cxx|hxx|cpp|h|txx):\d+:?$")

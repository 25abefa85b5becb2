"""Checks that catch swapped or unsuitable inputs before minutes of work.

An input of a few integer values is a label map (a segmentation picked by mistake in
a file dialog). A reference "CT" without air at about -1000 HU is not in Hounsfield units (an MR given
as the reference, or a CT exported with a rescale slope lost); an "MR" input with large
regions at about -1000 is a CT given as the input. Both would run and produce nonsense,
so they stop with an error that says what was seen. A CBCT input is expected in HU-like
units and is not checked for this. The memory estimate stops a run that would exhaust
the machine's RAM, instead of letting the operating system kill it half-way.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .errors import InputMismatchError, InvalidImageError

__all__ = ["check_modalities", "estimate_peak_bytes", "check_memory"]

#: Fraction of voxels at or below -900 above which an image is taken to be in HU with air.
_AIR_FRACTION = 0.02

#: An integer image with at most this many distinct values is a label map, not a scan
#: (scanners write hundreds to thousands of grey values; TotalSegmentator's full label
#: set is 117).
_MAX_LABELS = 128


def _air_fraction(image: sitk.Image) -> float:
    array = sitk.GetArrayViewFromImage(image)
    return float(np.count_nonzero(array <= -900)) / array.size


def check_modalities(input_image: sitk.Image, reference_ct: sitk.Image, modality: str, *, input_name: str = "input", reference_name: str = "reference") -> None:
    """Raise :class:`InputMismatchError` when the input is a label map, the reference is
    not a CT in HU, or an MR input looks like a CT.

    Args:
        modality: ``"mr"`` or ``"cbct"``, the declared kind of ``input_image``.
    """
    if modality not in ("mr", "cbct"):
        raise ValueError(f"modality must be 'mr' or 'cbct', got {modality!r}")
    values = _distinct_integer_values(input_image)
    if values is not None and values <= _MAX_LABELS:
        raise InputMismatchError(
            f"{input_name}: looks like a label map ({values} distinct integer values), not an {modality.upper()} scan; "
            "was a segmentation picked as the input?"
        )
    reference = sitk.GetArrayViewFromImage(reference_ct)
    if float(reference.min()) > -500 or _air_fraction(reference_ct) < _AIR_FRACTION:
        raise InputMismatchError(
            f"{reference_name}: does not look like a CT in Hounsfield units (values {float(reference.min()):.0f} to "
            f"{float(reference.max()):.0f}, {100 * _air_fraction(reference_ct):.1f} % of voxels at air level <= -900); "
            "is an MR given as the reference, or were the inputs swapped?"
        )
    if modality == "mr" and _air_fraction(input_image) >= _AIR_FRACTION and float(sitk.GetArrayViewFromImage(input_image).min()) < -500:
        raise InputMismatchError(
            f"{input_name}: declared MR but looks like a CT ({100 * _air_fraction(input_image):.1f} % of voxels at about "
            "-1000 HU); were the inputs swapped? For a CBCT input use --modality cbct"
        )


def _distinct_integer_values(image: sitk.Image) -> int | None:
    """How many distinct values an integer-typed image holds (None for floating point)."""
    array = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        return None
    return int(np.unique(array).size)


def estimate_peak_bytes(input_image: sitk.Image, canvas_shape: tuple[int, int, int], stage1: dict | None = None, batch: int = 0) -> int:
    """Rough upper bound of the pipeline's peak RAM for one case, in bytes.

    Counts float32 copies: about 8 of the input grid (input, resampled reference, mask,
    N4 and normalisation temporaries, outputs) and 10 of the canvas (x, y, four model
    outputs and resampling temporaries), plus, with ``stage1`` (the model's Stage 1
    config as in ``model.json``) and ``batch`` slices per forward pass on the CPU, Stage 1's
    activations at full resolution: for PAdaIN the γ/β hidden layer, ``style_hidden``
    channels, and γ and β themselves (about 2 GB per tensor for the published 512 hidden
    channels at batch 4 and 512²), for other kinds about 16 maps of ``channels``.
    """
    input_voxels = int(np.prod(input_image.GetSize(), dtype=np.int64))
    canvas_voxels = int(np.prod(canvas_shape, dtype=np.int64))
    total = 4 * (8 * input_voxels + 10 * canvas_voxels)
    if stage1 is not None and batch > 0:
        pixels = batch * int(canvas_shape[1]) * int(canvas_shape[2])
        channels = int(stage1.get("channels", 0))
        maps = 3 * int(stage1.get("style_hidden", 0)) + 4 * channels if stage1.get("kind") == "padain" else 16 * channels
        total += 4 * pixels * maps
    return total


def check_memory(needed_bytes: int, available_bytes: int | None = None, *, name: str = "input") -> None:
    """Raise :class:`InvalidImageError` when ``needed_bytes`` exceed the RAM available now."""
    if available_bytes is None:
        import psutil

        available_bytes = psutil.virtual_memory().available
    if needed_bytes > available_bytes:
        raise InvalidImageError(
            f"{name}: volume too large for this machine: the run needs about {needed_bytes / 2**30:.1f} GiB of RAM, "
            f"{available_bytes / 2**30:.1f} GiB are available; crop the volume to the region of interest or use a larger machine"
        )

"""Body masks: threshold, largest connected component, hole filling, small closing.

The mask marks the patient (air outside the body and the couch excluded; gas in the
bowel, rectum and lungs included), for masked intensity statistics, metrics inside the
body and the mutual-information sampling of the pre-alignment.

CT and CBCT are thresholded at -500 HU (halfway between air and soft tissue); MR at
Otsu's threshold, which separates the dark background from tissue.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = ["MODALITIES", "CT_BODY_THRESHOLD_HU", "body_mask", "coarse_body_mask", "axial_axis"]

#: Modalities a body mask can be computed for.
MODALITIES = ("ct", "cbct", "mr")

#: CT/CBCT voxels above this value (HU) are body candidates.
CT_BODY_THRESHOLD_HU = -500.0

#: Radius of the opening (detaching the couch) and closing (smoothing the outline), mm.
_MORPHOLOGY_RADIUS_MM = 3.0


def body_mask(image: sitk.Image, *, modality: str) -> sitk.Image:
    """The patient's body in ``image`` as a uint8 mask (1 inside) on the same grid.

    Steps: threshold (CT/CBCT > -500 HU, MR > Otsu); the largest 3D connected component
    after a ~3 mm opening, grown back inside the threshold; a ~3 mm closing; holes filled
    in 3D and in every axial slice (gas that touches the top or bottom of the field of
    view is still inside).

    Args:
        image: 3D volume in any orientation.
        modality: ``"ct"``, ``"cbct"`` or ``"mr"``.

    Raises:
        ValueError: unknown ``modality`` or a non-3D image.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"image must be 3D, got {image.GetDimension()}D")
    foreground = _threshold(sitk.Cast(image, sitk.sitkFloat32), modality)
    radius = _radius_voxels(image, _MORPHOLOGY_RADIUS_MM)
    box = _foreground_box(sitk.GetArrayViewFromImage(foreground), margin_xyz=[2 * r + 2 for r in radius])
    result = np.zeros(image.GetSize()[::-1], dtype=np.uint8)
    if box is not None:
        # The morphology runs on the foreground's bounding box only (a quarter to a half
        # of a typical grid is air around the patient): the same mask as on the whole
        # grid (tested), since the box's margin, more than twice the radius, holds
        # whatever the closing's dilation adds, and its border is air as the grid's is.
        start, size = box
        region = _body_in(sitk.RegionOfInterest(foreground, size, start), radius, axial_axis(image))
        result[tuple(slice(a, a + n) for a, n in zip(start[::-1], size[::-1]))] = region
    mask = sitk.GetImageFromArray(result)
    mask.CopyInformation(image)
    return mask


def coarse_body_mask(image: sitk.Image, *, modality: str, spacing_mm: float = 5.0) -> sitk.Image:
    """:func:`body_mask` computed on a copy shrunk to voxels of about ``spacing_mm`` and
    brought back to ``image``'s grid by nearest neighbour: for sampling and intensity
    windows, which need no exact outline, at a small fraction of the cost."""
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    coarse = body_mask(sitk.Shrink(image, factors), modality=modality)
    return sitk.Resample(coarse, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _body_in(foreground: sitk.Image, radius: list[int], axis: int) -> np.ndarray:
    """The body steps of :func:`body_mask` on a foreground mask, as a uint8 array."""
    # Opening first detaches thin things touching the body (couch pads, sheets); the
    # component is then grown back within the threshold to restore the body's outline.
    opened = sitk.BinaryMorphologicalOpening(foreground, radius, sitk.sitkBall)
    body = _largest_component(opened if _any(opened) else foreground)
    mask = _largest_component(sitk.And(sitk.BinaryDilate(body, radius, sitk.sitkBall), foreground))
    mask = sitk.BinaryMorphologicalClosing(mask, radius, sitk.sitkBall)
    return _fill_holes(sitk.GetArrayFromImage(mask).astype(bool), axis).astype(np.uint8)


def _foreground_box(foreground: np.ndarray, margin_xyz: list[int]) -> tuple[list[int], list[int]] | None:
    """``(start, size)`` (x, y, z) of the nonzero voxels' bounding box grown by
    ``margin_xyz`` and clipped to the grid; None when nothing is nonzero."""
    start, size = [], []
    for array_axis, margin in zip((2, 1, 0), margin_xyz):
        others = tuple(a for a in range(3) if a != array_axis)
        present = np.flatnonzero(foreground.any(axis=others))
        if present.size == 0:
            return None
        low = max(0, int(present[0]) - margin)
        high = min(foreground.shape[array_axis], int(present[-1]) + 1 + margin)
        start.append(low)
        size.append(high - low)
    return start, size


def _threshold(image: sitk.Image, modality: str) -> sitk.Image:
    if modality in ("ct", "cbct"):
        return sitk.BinaryThreshold(image, CT_BODY_THRESHOLD_HU, float("inf"), 1, 0)
    elif modality == "mr":
        # OtsuThreshold labels voxels at or below the threshold with insideValue.
        return sitk.OtsuThreshold(image, 0, 1, 256)
    else:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")


def _largest_component(mask: sitk.Image) -> sitk.Image:
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    return sitk.Cast(labels == 1, sitk.sitkUInt8)


def _any(mask: sitk.Image) -> bool:
    return bool(sitk.GetArrayViewFromImage(mask).any())


def _radius_voxels(image: sitk.Image, radius_mm: float) -> list[int]:
    """Structuring-element radius per axis (x, y, z), at least 1 voxel in-plane."""
    return [max(1, int(round(radius_mm / s))) if s < radius_mm * 2 else 0 for s in image.GetSpacing()]


def axial_axis(image: sitk.Image) -> int:
    """NumPy axis ([z, y, x] order) of the image axis closest to superior-inferior."""
    direction = np.reshape(image.GetDirection(), (3, 3))
    image_axis = int(np.argmax(np.abs(direction[2, :])))
    return 2 - image_axis


def _fill_holes(mask: np.ndarray, axis: int) -> np.ndarray:
    # scipy fills 2D slices directly; SimpleITK would need a slice-extract/paste loop.
    filled = ndimage.binary_fill_holes(mask)
    moved = np.moveaxis(filled, axis, 0)
    for index in range(moved.shape[0]):
        moved[index] = ndimage.binary_fill_holes(moved[index])
    return np.moveaxis(moved, 0, axis)

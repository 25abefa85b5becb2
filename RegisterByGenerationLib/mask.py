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

__all__ = ["MODALITIES", "CT_BODY_THRESHOLD_HU", "body_mask", "axial_axis"]

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
    # Opening first detaches thin things touching the body (couch pads, sheets); the
    # component is then grown back within the threshold to restore the body's outline.
    opened = sitk.BinaryMorphologicalOpening(foreground, radius, sitk.sitkBall)
    body = _largest_component(opened if _any(opened) else foreground)
    mask = _largest_component(sitk.And(sitk.BinaryDilate(body, radius, sitk.sitkBall), foreground))
    mask = sitk.BinaryMorphologicalClosing(mask, radius, sitk.sitkBall)
    filled = _fill_holes(sitk.GetArrayFromImage(mask).astype(bool), axial_axis(image))
    result = sitk.GetImageFromArray(filled.astype(np.uint8))
    result.CopyInformation(image)
    return result


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

"""Overlap of segmentations (bones): Dice, 95th-percentile Hausdorff distance in mm.

Arrays are ``[z, y, x]`` as returned by ``SimpleITK.GetArrayFromImage``; the prediction
comes first (MONAI's ``(y_pred, y)`` order). Spacing is given in the same array order,
``(z, y, x)`` in mm, i.e. ``image.GetSpacing()[::-1]``.

Empty segmentations follow one documented rule everywhere: when both are empty the score
is undefined and returned as ``nan`` (skip it with ``numpy.nanmean``, like MONAI's
``ignore_empty``); when only one is empty Dice is 0 and HD95 is ``inf``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ._common import as_mask, check_same_shape, check_spacing

__all__ = ["BONE_THRESHOLD_HU", "dice", "hd95", "bone_dice_by_threshold", "bone_mask"]

#: HU above which a voxel counts as bone when no bone labels exist.
BONE_THRESHOLD_HU = 200.0


def dice(pred_labels: np.ndarray, truth_labels: np.ndarray, label: int | None = None) -> float:
    """Dice coefficient :math:`2|P \\cap T| / (|P| + |T|)` of two segmentations.

    Args:
        pred_labels: predicted label map or binary mask, shape ``[z, y, x]``.
        truth_labels: ground-truth label map or binary mask, same shape.
        label: compare the voxels equal to this label; ``None`` compares the binary masks
            ``!= 0`` (any label against any label).

    Returns:
        Dice in [0, 1]; ``nan`` when both segmentations are empty, 0 when only one is.

    Raises:
        ValueError: shapes differ or are not 3D.
    """
    check_same_shape(pred_labels=pred_labels, truth_labels=truth_labels)
    if label is None:
        p, t = np.asarray(pred_labels) != 0, np.asarray(truth_labels) != 0
    else:
        p, t = np.asarray(pred_labels) == label, np.asarray(truth_labels) == label
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
    if total == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(p & t)) / total


def hd95(pred_mask: np.ndarray, truth_mask: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    """Symmetric 95th-percentile Hausdorff distance between two mask surfaces, in mm.

    The surface of a mask is its voxels with a face neighbour (6-connectivity) outside the
    mask or outside the array. For every surface voxel of one mask the Euclidean distance
    (in mm, anisotropic spacing respected) to the nearest surface voxel of the other mask
    comes from :func:`scipy.ndimage.distance_transform_edt`; HD95 is the larger of the two
    directed 95th percentiles (linear interpolation), the convention of
    ``monai.metrics.compute_hausdorff_distance(percentile=95)``. Identical masks give 0.

    Hand-written on scipy rather than calling MONAI so that metrics need no torch; the
    tests check it against MONAI. Distances are computed in the bounding box of both
    masks (plus one voxel), which gives the same result as the whole volume.

    Args:
        pred_mask: predicted mask, voxels ``> 0`` inside, shape ``[z, y, x]``.
        truth_mask: ground-truth mask, same shape.
        spacing: voxel size along ``(z, y, x)`` in mm (``image.GetSpacing()[::-1]``).

    Returns:
        HD95 in mm; ``nan`` when both masks are empty, ``inf`` when only one is.

    Raises:
        ValueError: shapes differ or are not 3D, or ``spacing`` is not 3 positive values.
    """
    check_same_shape(pred_mask=pred_mask, truth_mask=truth_mask)
    sampling = check_spacing(spacing)
    p, t = np.asarray(pred_mask) > 0, np.asarray(truth_mask) > 0
    p_any, t_any = bool(p.any()), bool(t.any())
    if not (p_any or t_any):
        return math.nan
    if not (p_any and t_any):
        return math.inf
    box = _bounding_box(p | t, margin=1)
    p, t = p[box], t[box]
    surface_p, surface_t = _surface(p), _surface(t)
    # Distance from every voxel to the nearest surface voxel of the other mask.
    to_t = ndimage.distance_transform_edt(~surface_t, sampling=sampling)
    to_p = ndimage.distance_transform_edt(~surface_p, sampling=sampling)
    return float(max(np.percentile(to_t[surface_p], 95), np.percentile(to_p[surface_t], 95)))


def bone_dice_by_threshold(
    pred_hu: np.ndarray,
    truth_hu: np.ndarray,
    mask: np.ndarray | None = None,
    threshold: float = BONE_THRESHOLD_HU,
) -> float:
    """Dice of the bone masks ``HU > threshold`` inside the body mask.

    For data without bone labels: bone is every voxel above ``threshold`` HU (200 HU by
    default, above soft tissue and contrast-free blood) inside ``mask``.

    Args:
        pred_hu: predicted (pseudo-)CT in HU, shape ``[z, y, x]``.
        truth_hu: ground-truth CT in HU, same shape.
        mask: body mask, voxels ``> 0`` inside; ``None`` for all voxels.
        threshold: bone threshold in HU.

    Returns:
        Dice in [0, 1] (``nan`` when neither image has bone inside the mask).

    Raises:
        ValueError: shapes differ or are not 3D, or the mask is empty.
    """
    shape = check_same_shape(pred_hu=pred_hu, truth_hu=truth_hu, mask=mask)
    inside = as_mask(mask, shape)
    return dice(bone_mask(pred_hu, inside, threshold), bone_mask(truth_hu, inside, threshold))


def bone_mask(image_hu: np.ndarray, mask: np.ndarray | None = None, threshold: float = BONE_THRESHOLD_HU) -> np.ndarray:
    """Boolean ``[z, y, x]`` array: ``image_hu > threshold`` and inside ``mask`` (if given)."""
    bone = np.asarray(image_hu) > threshold
    return bone if mask is None else bone & (np.asarray(mask) > 0)


def _surface(mask: np.ndarray) -> np.ndarray:
    face_neighbours = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=face_neighbours, border_value=0)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``'s True voxels, grown by ``margin``."""
    box = []
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other_axes))
        box.append(slice(max(int(present[0]) - margin, 0), int(present[-1]) + margin + 1))
    return tuple(box)

"""Image-quality metrics of a pseudo-CT, defined once for the whole project (DESIGN §6).

Pure functions on NumPy arrays ``[z, y, x]`` (as from ``SimpleITK.GetArrayFromImage``),
prediction first, spacing in array order ``(z, y, x)`` mm where physical units matter:

- with an aligned ground-truth CT (SynthRAD2023 definitions): :func:`mae`, :func:`psnr`,
  :func:`ssim`;
- bone overlap: :func:`dice`, :func:`hd95`, :func:`bone_dice_by_threshold`;
- of a displacement field: :func:`jacobian_determinant`, :func:`deformation_statistics`
  (the fraction of folded voxels);
- without ground truth: :func:`gradient_correlation`, :func:`normalized_mutual_information`,
  :func:`sharpness`, :func:`tv_z`;

and :func:`evaluate_images`, which takes SimpleITK images on one grid and returns every
metric they allow (``rbg evaluate``).

Example:
    >>> import numpy as np
    >>> from RegisterByGenerationLib.metrics import mae, psnr
    >>> truth = np.zeros((8, 8, 8)); pred = truth + 10.0
    >>> mae(pred, truth), round(psnr(pred, truth), 2)
    (10.0, 52.09)
"""

from __future__ import annotations

from .aggregate import UNITS, check_same_grid, evaluate_images, unit_of
from .deformation import deformation_statistics, jacobian_determinant
from .image_similarity import HU_RANGE, SSIM_WINDOW, mae, psnr, ssim
from .no_reference import (
    canny_edges,
    gradient_correlation,
    normalized_mutual_information,
    robust_unit_scale,
    sharpness,
    tv_z,
)
from .segmentation import BONE_THRESHOLD_HU, bone_dice_by_threshold, bone_mask, dice, hd95

__all__ = [
    "deformation_statistics",
    "jacobian_determinant",
    "HU_RANGE",
    "SSIM_WINDOW",
    "BONE_THRESHOLD_HU",
    "UNITS",
    "mae",
    "psnr",
    "ssim",
    "dice",
    "hd95",
    "bone_dice_by_threshold",
    "bone_mask",
    "gradient_correlation",
    "canny_edges",
    "robust_unit_scale",
    "normalized_mutual_information",
    "sharpness",
    "tv_z",
    "evaluate_images",
    "check_same_grid",
    "unit_of",
]

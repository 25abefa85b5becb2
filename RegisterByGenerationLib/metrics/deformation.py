"""Deformation-field metrics: the Jacobian determinant of ``p ↦ p + u(p)`` and its folds.

A registration's field is plausible where the map it defines keeps orientation: the
Jacobian determinant ``det(I + ∂u/∂p)`` is positive. Where it is ≤ 0 the warp folds
(tissue passes through itself); the fraction of such voxels is the usual measure
(e.g. Learn2Reg). SimpleITK's ``DisplacementFieldJacobianDeterminant`` computes the
determinant with the field's spacing (central differences) but ignores its direction;
the vectors are therefore first expressed along the grid's axes (``v = Dᵀu``), which
leaves the determinant unchanged: ``det(I + ∂v/∂q) = det(Dᵀ(I + ∂u/∂p)D)``.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

__all__ = ["jacobian_determinant", "deformation_statistics"]


def jacobian_determinant(field: sitk.Image) -> sitk.Image:
    """``det(I + ∂u/∂p)`` of a displacement field (vector image in mm, physical axes).

    Raises:
        InputError: not a vector image with one component per spatial axis.
    """
    if field.GetNumberOfComponentsPerPixel() != field.GetDimension():
        raise InputError(f"a displacement field needs {field.GetDimension()} components per voxel, got {field.GetNumberOfComponentsPerPixel()}")
    dimension = field.GetDimension()
    direction = np.asarray(field.GetDirection(), dtype=float).reshape(dimension, dimension)
    vectors = sitk.GetArrayFromImage(field).astype(np.float64) @ direction  # each row u -> Dᵀu
    on_axes = sitk.GetImageFromArray(vectors, isVector=True)
    on_axes.SetSpacing(field.GetSpacing())
    on_axes.SetOrigin(field.GetOrigin())  # direction: identity, the grid's own axes
    determinant = sitk.DisplacementFieldJacobianDeterminant(on_axes, True)
    determinant.CopyInformation(field)
    return determinant


def deformation_statistics(field: sitk.Image, mask: sitk.Image | None = None) -> dict[str, float]:
    """``fold_fraction`` (share of voxels with a Jacobian determinant ≤ 0), and the
    determinant's minimum, 1st percentile and standard deviation, inside ``mask``."""
    det = sitk.GetArrayFromImage(jacobian_determinant(field))
    inside = det[sitk.GetArrayViewFromImage(mask) > 0] if mask is not None else det.ravel()
    if inside.size == 0:
        raise InputError("the mask holds no voxel of the displacement field")
    return {
        "fold_fraction": float(np.mean(inside <= 0)),
        "jacobian_min": float(inside.min()),
        "jacobian_p01": float(np.percentile(inside, 1)),
        "jacobian_std": float(inside.std()),
    }

"""Register by generation, literally: the reference CT registered onto the generated CT.

Once Stage 1 has turned the MR or CBCT into a CT-like image ŷ, aligning the reference CT
with the input is a *mono-modal* problem (CT onto CT), which classical deformable
registration solves far more reliably than the multi-modal MR↔CT or CBCT↔CT problem.
:func:`register_onto_generated` runs SimpleITK's symmetric-forces demons (intensity
differences in HU drive it; mono-modal by design) from coarse to fine on the generated
image and warps the reference with the result, composed with the pre-alignment so the
reference is interpolated once. The output keeps the reference's own HU and texture
everywhere, with ŷ deciding only where things are.

It is a run option (``rbg run --refine demons``); ``docs/benchmarks.md`` compares it
with the generated image itself.
"""

from __future__ import annotations

import SimpleITK as sitk

from .geometry import warp_once

__all__ = ["REFINEMENTS", "DemonsSettings", "register_onto_generated", "demons_field"]

#: ``--refine`` choices: ``none`` keeps the network's pseudo-CT.
REFINEMENTS = ("none", "demons")


class DemonsSettings:
    """Multi-resolution symmetric-forces demons (mm and HU where they have units).

    Attributes:
        shrink_factors: image pyramid, coarse to fine.
        iterations: demons iterations at each level.
        smoothing_mm: Gaussian regularisation of the displacement field (standard deviation).
        clip_hu: both images are clipped to this window first, so metal, dense bone and
            air pockets do not dominate the forces (HU for CTs; another modality's images
            are registered in a range of their own).
    """

    def __init__(self, shrink_factors=(4, 2, 1), iterations=(60, 40, 20), smoothing_mm: float = 2.0, clip_hu=(-200.0, 1200.0)):
        if len(shrink_factors) != len(iterations) or min(shrink_factors) < 1 or min(iterations) < 0:
            raise ValueError(f"shrink_factors and iterations must pair positive values, got {shrink_factors}, {iterations}")
        self.shrink_factors = tuple(int(f) for f in shrink_factors)
        self.iterations = tuple(int(i) for i in iterations)
        self.smoothing_mm = float(smoothing_mm)
        self.clip_hu = (float(clip_hu[0]), float(clip_hu[1]))


def register_onto_generated(
    generated: sitk.Image, reference_on_input: sitk.Image, reference_ct: sitk.Image, prealign: sitk.Transform,
    settings: DemonsSettings | None = None,
) -> tuple[sitk.Image, sitk.Image]:  # fmt: skip
    """Deformably register the pre-aligned reference onto the generated CT (both HU, one
    grid), then warp the reference CT as given through ``prealign`` (input points →
    reference points, the transform that made ``reference_on_input``) and the field, so it
    is interpolated once.

    Returns:
        ``(warped reference in HU on the input grid, displacement field in mm)``; the
        field maps input-grid points into the pre-aligned reference (ITK's convention).

    Raises:
        ValueError: the images are not on one grid.
    """
    field = demons_field(generated, reference_on_input, settings)
    return warp_once(reference_ct, generated, prealign, field, default_value=-1024.0), field


def demons_field(fixed: sitk.Image, moving: sitk.Image, settings: DemonsSettings | None = None) -> sitk.Image:
    """The demons field (float64 vectors in mm on ``fixed``'s grid) that maps ``fixed``'s
    points into ``moving`` (``moving(p + u(p)) ≈ fixed(p)``); both images of one modality,
    on one grid, with intensities in the range ``settings.clip_hu`` is meant for.

    Raises:
        ValueError: the images are not on one grid.
    """
    settings = settings or DemonsSettings()
    if fixed.GetSize() != moving.GetSize() or fixed.GetSpacing() != moving.GetSpacing():
        raise ValueError("the fixed and the moving image must share one grid")
    low, high = settings.clip_hu
    fixed = sitk.Clamp(sitk.Cast(fixed, sitk.sitkFloat32), sitk.sitkFloat32, low, high)
    moving = sitk.Clamp(sitk.Cast(moving, sitk.sitkFloat32), sitk.sitkFloat32, low, high)
    field = None
    for shrink, iterations in zip(settings.shrink_factors, settings.iterations, strict=True):
        level_fixed = _shrink(fixed, shrink)
        level_moving = sitk.Resample(moving, level_fixed, sitk.Transform(), sitk.sitkLinear, low)
        demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        demons.SetNumberOfIterations(iterations)
        demons.SetSmoothDisplacementField(True)
        # Standard deviation in voxels of this level, at least one voxel.
        demons.SetStandardDeviations(max(settings.smoothing_mm / min(level_fixed.GetSpacing()), 1.0))
        initial = (
            sitk.Resample(field, level_fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
            if field is not None
            else sitk.Image(level_fixed.GetSize(), sitk.sitkVectorFloat64, 3)
        )
        initial.CopyInformation(level_fixed)
        field = demons.Execute(level_fixed, level_moving, initial) if iterations else initial
    return sitk.Resample(field, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)


def _shrink(image: sitk.Image, factor: int) -> sitk.Image:
    """``image`` smoothed and subsampled by ``factor`` in-plane and along z (at least 8 voxels)."""
    if factor == 1:
        return image
    factors = [max(1, min(factor, size // 8)) for size in image.GetSize()]
    smoothed = sitk.SmoothingRecursiveGaussian(image, [0.5 * f * s for f, s in zip(factors, image.GetSpacing(), strict=True)])
    return sitk.Shrink(smoothed, factors)

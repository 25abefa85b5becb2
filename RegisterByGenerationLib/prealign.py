"""Physical-overlap check and rigid mutual-information pre-alignment (DESIGN §3 steps 2-3).

The published models were trained on rigidly registered pairs; real users' reference
CTs are not aligned with their MR/CBCT. :func:`rigid_prealign` fixes the gross rigid
misalignment (rotation, translation) so the networks only see residual deformation.

Example:
    >>> transform = rigid_prealign(mr, ct, fixed_modality="mr", seed=0)
    >>> ct_on_mr = resample_onto(ct, mr, transform, default_value=-1024.0)
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .mask import MODALITIES, body_mask

__all__ = ["physical_overlap", "check_overlap", "rigid_prealign"]

logger = logging.getLogger(__name__)

_HISTOGRAM_BINS = 50
_SHRINK_FACTORS = (4, 2, 1)
_SMOOTHING_SIGMAS_MM = (2.0, 1.0, 0.0)
_MASK_SPACING_MM = 5.0
_MIN_STEP_MM = 0.01


def physical_overlap(fixed: sitk.Image, moving: sitk.Image) -> float:
    """Fraction (0-1) of ``fixed``'s physical bounding box covered by ``moving``'s.

    Bounding boxes are axis-aligned in physical space (LPS, mm) and enclose the corners
    of each image's extent (voxel centres ± half a voxel), so oblique images are covered.
    """
    fixed_low, fixed_high = _bounding_box(fixed)
    moving_low, moving_high = _bounding_box(moving)
    sides = np.clip(np.minimum(fixed_high, moving_high) - np.maximum(fixed_low, moving_low), 0.0, None)
    return float(np.prod(sides) / np.prod(fixed_high - fixed_low))


def check_overlap(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    fixed_name: str = "input",
    moving_name: str = "reference",
    minimum: float = 0.05,
) -> float:
    """Return :func:`physical_overlap`, raising when it is below ``minimum`` (fraction).

    Raises:
        InputError: the images do not overlap enough to be of the same patient and frame.
    """
    overlap = physical_overlap(fixed, moving)
    if overlap < minimum:
        raise InputError(
            f"{moving_name} and {fixed_name} do not overlap in physical space (overlap {100 * overlap:.1f} %); "
            "check that both are of the same patient and in the same coordinate system"
        )
    return overlap


def rigid_prealign(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    fixed_modality: str = "mr",
    seed: int = 0,
    sampling: float = 0.1,
    max_iterations: int = 200,
    threads: int | None = None,
    fixed_mask: sitk.Image | None = None,
    progress=None,
) -> sitk.Euler3DTransform:
    """Rigidly register ``moving`` (the reference CT) to ``fixed`` (the input).

    Mattes mutual information (50 bins) on random samples inside the fixed body mask;
    three levels (shrink 4, 2, 1; smoothing 2, 1, 0 mm); regular step gradient descent
    with physical-shift scales, started from the better (by the metric) of the identity
    and a geometry-centred initialisation.

    Args:
        fixed: the input volume (MR, CBCT or CT).
        moving: the reference CT.
        fixed_modality: ``"mr"``, ``"cbct"`` or ``"ct"``: how the fixed body mask is found.
        seed: seed of the metric's random sampling; the same seed gives the same result.
        sampling: fraction (0-1] of the fixed voxels sampled at random per level; the
            samples outside the body mask are dropped.
        max_iterations: optimiser iterations per level.
        threads: threads for the registration. None runs on one thread, which gives
            the same bytes on every run; ITK's multi-threaded metric sums in a varying
            order (results then differ by ~1e-9 mm between runs).
        fixed_mask: where to sample the metric (nonzero voxels, on ``fixed``'s grid);
            None computes a body mask of ``fixed`` (at ~5 mm, enough for sampling).
        progress: called as ``progress(fraction, message)`` at every optimiser iteration,
            the fraction counting levels and iterations within them (an upper bound:
            a level may stop early).

    Returns:
        The transform mapping fixed physical points (mm) to moving points; use it with
        ``resample_onto(moving, fixed, transform)``.

    Raises:
        InputError: the images do not overlap in physical space.
        ValueError: an invalid argument.
    """
    if fixed_modality not in MODALITIES:
        raise ValueError(f"fixed_modality must be one of {', '.join(MODALITIES)}, got {fixed_modality!r}")
    if not 0.0 < sampling <= 1.0:
        raise ValueError(f"sampling must be in (0, 1], got {sampling!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32 - 1:
        raise ValueError(f"seed must be an integer in [0, 2**32 - 2], got {seed!r}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be positive, got {max_iterations!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be positive or None, got {threads!r}")
    if fixed_mask is not None and fixed_mask.GetSize() != fixed.GetSize():
        raise ValueError(f"fixed_mask must be on fixed's grid {fixed.GetSize()}, got size {fixed_mask.GetSize()}")
    check_overlap(fixed, moving)
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    if fixed_mask is None:
        fixed_mask = _sampling_mask(fixed, fixed_modality)
    fixed_mask = sitk.Cast(fixed_mask != 0, sitk.sitkUInt8)
    fixed_mask.CopyInformation(fixed)
    registration = _registration_method(fixed_mask, seed, sampling, max_iterations)
    registration.SetNumberOfThreads(threads or 1)
    if progress is not None:
        levels = len(_SHRINK_FACTORS)

        def iteration() -> None:
            level = registration.GetCurrentLevel()
            done = min(registration.GetOptimizerIteration() / max_iterations, 1.0)
            progress((level + done) / levels, f"level {level + 1} of {levels}, iteration {registration.GetOptimizerIteration()}")

        registration.AddCommand(sitk.sitkIterationEvent, iteration)
    with _global_itk_threads(threads or 1):
        initial = _initial_transform(registration, fixed, moving)
        registration.SetInitialTransform(initial, inPlace=True)
        registration.Execute(fixed, moving)
    logger.info(
        "rigid pre-alignment: %s after %d iterations (metric %.4f)",
        registration.GetOptimizerStopConditionDescription(),
        registration.GetOptimizerIteration(),
        registration.GetMetricValue(),
    )
    return sitk.Euler3DTransform(initial)


def _registration_method(fixed_mask: sitk.Image, seed: int, sampling: float, max_iterations: int) -> sitk.ImageRegistrationMethod:
    registration = sitk.ImageRegistrationMethod()
    registration.SetMetricAsMattesMutualInformation(numberOfHistogramBins=_HISTOGRAM_BINS)
    registration.SetMetricSamplingStrategy(registration.RANDOM)
    # SimpleITK reads seed 0 as "seed from the wall clock" (sitkWallClock); shift by one.
    registration.SetMetricSamplingPercentage(sampling, int(seed) + 1)
    registration.SetMetricFixedMask(fixed_mask)
    # Gradients at the sampled points only; a gradient image per level costs more.
    registration.SetMetricUseFixedImageGradientFilter(False)
    registration.SetMetricUseMovingImageGradientFilter(False)
    registration.SetInterpolator(sitk.sitkLinear)
    registration.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=_MIN_STEP_MM,
        numberOfIterations=int(max_iterations),
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    registration.SetOptimizerScalesFromPhysicalShift()
    registration.SetShrinkFactorsPerLevel(list(_SHRINK_FACTORS))
    registration.SetSmoothingSigmasPerLevel(list(_SMOOTHING_SIGMAS_MM))
    registration.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return registration


@contextmanager
def _global_itk_threads(threads: int) -> Iterator[None]:
    """Set ITK's global default thread count (the metric's threader reads it) for a block."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _sampling_mask(fixed: sitk.Image, modality: str) -> sitk.Image:
    """Body mask of ``fixed`` computed at about 5 mm voxels (fast; sampling needs no more) and
    brought back to ``fixed``'s grid by nearest neighbour."""
    factors = [max(1, int(round(_MASK_SPACING_MM / s))) for s in fixed.GetSpacing()]
    coarse = body_mask(sitk.Shrink(fixed, factors), modality=modality)
    return sitk.Resample(coarse, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _initial_transform(registration: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image) -> sitk.Euler3DTransform:
    """Identity or geometry-centred start, whichever has the lower metric value.

    Geometry centring recovers large offsets between scanners' frames but is wrong when
    the fields of view differ (a long CT around a short MR in the same frame).
    """
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
    identity = sitk.Euler3DTransform()
    identity.SetCenter(centre)
    centred = sitk.Euler3DTransform(
        sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
    )
    best, best_value = identity, np.inf
    for candidate in (identity, centred):
        registration.SetInitialTransform(candidate, inPlace=False)
        try:
            value = registration.MetricEvaluate(fixed, moving)
        except RuntimeError:  # too few samples inside the moving image
            continue
        if value < best_value:
            best, best_value = candidate, value
    return sitk.Euler3DTransform(best)


def _bounding_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Physical (mm) axis-aligned bounds of the image's extent."""
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([c - 0.5 for c in corner])
        for corner in itertools.product(*((0, n) for n in image.GetSize()))
    ]
    corners = np.asarray(corners)
    return corners.min(axis=0), corners.max(axis=0)

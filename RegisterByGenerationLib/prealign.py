"""Physical-overlap check and rigid mutual-information pre-alignment (DESIGN §3 steps 2-3).

The published models were trained on rigidly registered pairs; real users' reference
CTs are not aligned with their MR/CBCT. :func:`rigid_prealign` fixes the gross rigid
misalignment (rotation, translation) so the networks only see residual deformation.

Scanners' frames can disagree by a half turn (a patient position declared feet-first
but scanned head-first, prone against supine): mutual information started from the
identity then lands in a wrong optimum. The registration is therefore started from
the identity and from a half turn about each patient axis, each refined briefly on a
~4 mm copy, and the best is kept; the identity wins unless another start is clearly
better (:data:`START_MARGIN`).

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

from .errors import InputMismatchError
from .mask import MODALITIES, coarse_body_mask

__all__ = ["START_MARGIN", "STARTS", "physical_overlap", "check_overlap", "rigid_prealign", "orientation_change"]

logger = logging.getLogger(__name__)

_HISTOGRAM_BINS = 50
_SHRINK_FACTORS = (4, 2, 1)
_SMOOTHING_SIGMAS_MM = (2.0, 1.0, 0.0)
_MIN_STEP_MM = 0.01
#: Start rotations (Euler angles about x, y, z in LPS, radians): the identity and a half
#: turn about the left-right, anterior-posterior and inferior-superior axes.
STARTS = {
    "none": (0.0, 0.0, 0.0),
    "180° about the left-right axis": (np.pi, 0.0, 0.0),
    "180° about the anterior-posterior axis": (0.0, np.pi, 0.0),
    "180° about the inferior-superior axis": (0.0, 0.0, np.pi),
}
#: Another start replaces the identity only when its coarse metric is lower by this
#: fraction of the identity's (Mattes MI is negative; symmetric anatomy must not flip).
START_MARGIN = 0.15
_COARSE_SPACING_MM = 4.0
_COARSE_ITERATIONS = 40
#: Metric samples per level at most: Mattes MI with 50 bins is well estimated from far
#: fewer, and a fixed fraction of a 512x512x100 volume would cost minutes per level.
MAX_SAMPLES = 200_000


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
        InputMismatchError: the images do not overlap enough to be of the same patient and frame.
    """
    overlap = physical_overlap(fixed, moving)
    if overlap < minimum:
        raise InputMismatchError(
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
    multistart: bool = True,
) -> sitk.Euler3DTransform:
    """Rigidly register ``moving`` (the reference CT) to ``fixed`` (the input).

    Mattes mutual information (50 bins) on random samples inside the fixed body mask;
    three levels (shrink 4, 2, 1; smoothing 2, 1, 0 mm); regular step gradient descent
    with physical-shift scales. ``multistart`` first refines every start of
    :data:`STARTS` (each with the better of no translation and a geometry-centred one)
    on ~4 mm copies and keeps the best; without it, only the identity rotation.

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
        multistart: try the half-turn starts too (four short registrations on ~4 mm
            copies); :func:`orientation_change` names the one kept.

    Returns:
        The transform mapping fixed physical points (mm) to moving points; use it with
        ``resample_onto(moving, fixed, transform)``.

    Raises:
        InputMismatchError: the images do not overlap in physical space.
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
        fixed_mask = coarse_body_mask(fixed, modality=fixed_modality)  # sampling needs no finer mask
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
        # A half turn starts from its coarse refinement (the raw half turn is too far for
        # the full run's capture range); the identity starts from itself, as without
        # multistart: its coarse refinement can slide into a distant MI optimum (T1 MR).
        start = _best_start(fixed, moving, fixed_mask, seed, sampling) if multistart else None
        initial = start or _initial_transform(registration, fixed, moving, STARTS["none"])
        registration.SetInitialTransform(initial, inPlace=True)
        registration.Execute(fixed, moving)
    logger.info(
        "rigid pre-alignment: %s after %d iterations (metric %.4f)",
        registration.GetOptimizerStopConditionDescription(),
        registration.GetOptimizerIteration(),
        registration.GetMetricValue(),
    )
    return sitk.Euler3DTransform(initial)


def orientation_change(transform: sitk.Transform) -> str:
    """The start of :data:`STARTS` nearest to ``transform``'s rotation: ``"none"`` or the
    half turn by which the reference's declared frame differs from the input's."""
    matrix = np.asarray(transform.GetMatrix(), dtype=float).reshape(3, 3) if hasattr(transform, "GetMatrix") else np.eye(3)

    def angle_to(angles) -> float:
        start = sitk.Euler3DTransform()
        start.SetRotation(*angles)
        relative = matrix @ np.asarray(start.GetMatrix()).reshape(3, 3).T
        return float(np.arccos(np.clip((np.trace(relative) - 1) / 2, -1.0, 1.0)))

    return min(STARTS, key=lambda name: angle_to(STARTS[name]))


def _best_start(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image, seed: int, sampling: float) -> sitk.Euler3DTransform | None:
    """Each start of :data:`STARTS` refined for a few iterations on ~4 mm copies; None
    (keep the identity) unless another's metric is lower by :data:`START_MARGIN` of the
    identity's, else that start's coarse refinement."""
    coarse_fixed, coarse_moving = _coarse(fixed), _coarse(moving)
    coarse_mask = sitk.Shrink(fixed_mask, _coarse_factors(fixed))  # subsampled like the image
    registration = _registration_method(coarse_mask, seed, min(1.0, 4 * sampling), _COARSE_ITERATIONS, levels=((1, 0.0),))
    values: dict[str, float] = {}
    results: dict[str, sitk.Euler3DTransform] = {}
    for name, angles in STARTS.items():
        start = _initial_transform(registration, coarse_fixed, coarse_moving, angles)
        registration.SetInitialTransform(start, inPlace=True)
        try:
            registration.Execute(coarse_fixed, coarse_moving)
        except RuntimeError:  # the start leaves too few samples inside the reference
            continue
        values[name], results[name] = registration.GetMetricValue(), sitk.Euler3DTransform(start)
    if not values:
        raise InputMismatchError("reference and input: no start of the rigid pre-alignment overlaps enough to compare them")
    best = min(values, key=values.get)
    if "none" in values and values[best] > values["none"] + START_MARGIN * values["none"]:
        best = "none"
    logger.info("rigid pre-alignment start: %s (coarse metric: %s)", best, ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    return None if best == "none" else results[best]


def _coarse_factors(image: sitk.Image) -> list[int]:
    return [max(1, int(round(_COARSE_SPACING_MM / s))) for s in image.GetSpacing()]


def _coarse(image: sitk.Image) -> sitk.Image:
    """``image`` smoothed and shrunk to voxels of about 4 mm."""
    return sitk.Shrink(sitk.SmoothingRecursiveGaussian(image, _COARSE_SPACING_MM / 2), _coarse_factors(image))


def _registration_method(fixed_mask: sitk.Image, seed: int, sampling: float, max_iterations: int,
                         levels: tuple[tuple[int, float], ...] | None = None) -> sitk.ImageRegistrationMethod:  # fmt: skip
    """Mattes MI sampled at random in ``fixed_mask`` (``sampling`` of its voxels per
    level, at most :data:`MAX_SAMPLES`), regular step gradient descent; ``levels``
    (shrink factor, smoothing mm) default to the three of the full run."""
    registration = sitk.ImageRegistrationMethod()
    registration.SetMetricAsMattesMutualInformation(numberOfHistogramBins=_HISTOGRAM_BINS)
    registration.SetMetricSamplingStrategy(registration.RANDOM)
    levels = levels or tuple(zip(_SHRINK_FACTORS, _SMOOTHING_SIGMAS_MM))
    # Random samples are drawn over the whole fixed grid, then those outside the mask
    # dropped: a level keeps about percentage x (mask voxels / shrink³) of them.
    inside = max(1.0, float(np.count_nonzero(sitk.GetArrayViewFromImage(fixed_mask))))
    percentages = [min(sampling, MAX_SAMPLES * shrink**3 / inside) for shrink, _ in levels]
    # SimpleITK reads seed 0 as "seed from the wall clock" (sitkWallClock); shift by one.
    registration.SetMetricSamplingPercentagePerLevel(percentages, int(seed) + 1)
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
    registration.SetShrinkFactorsPerLevel([shrink for shrink, _ in levels])
    registration.SetSmoothingSigmasPerLevel([sigma for _, sigma in levels])
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


def _initial_transform(registration: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image, angles) -> sitk.Euler3DTransform:
    """The rotation ``angles`` about the fixed image's centre, with no translation or
    with the one that maps the fixed image's centre onto the moving image's, whichever
    has the lower metric value.

    Geometry centring recovers large offsets between scanners' frames but is wrong when
    the fields of view differ (a long CT around a short MR in the same frame).
    """
    centre = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    moving_centre = np.asarray(moving.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in moving.GetSize()]))
    candidates = []
    for translation in (np.zeros(3), moving_centre - centre):
        candidate = sitk.Euler3DTransform()
        candidate.SetCenter(centre.tolist())
        candidate.SetRotation(*angles)
        candidate.SetTranslation(translation.tolist())
        candidates.append(candidate)
    best, best_value = candidates[0], np.inf
    for candidate in candidates:
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
